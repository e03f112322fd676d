package builder

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/imgctl/imgctl/layers/progress"
)

// lockedUI serializes what the build's goroutines (logs, progress) say to Packer's UI.
type lockedUI struct {
	mu sync.Mutex
	ui packer.Ui
}

func (u *lockedUI) say(msg string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ui.Say(msg)
}

func (u *lockedUI) error(msg string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ui.Error(msg)
}

// Write turns each line written into a UI line: the slog handler's output.
func (u *lockedUI) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		u.say(line)
	}
	return len(p), nil
}

// newUIHandler is the slog handler the libraries log through: one UI line per record,
// without the time (Packer adds its own).
func newUIHandler(ui *lockedUI, level slog.Level) slog.Handler {
	return slog.NewTextHandler(ui, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})
}

// progressEvery is how often a long step (a download, compressing the root, an upload) says
// how far it got.
const progressEvery = 15 * time.Second

// progressSink says when a library step (layers/progress) finishes, and how far a long one
// got every progressEvery.
func progressSink(ui *lockedUI) progress.Sink {
	var mu sync.Mutex
	last := map[uint64]time.Duration{} // step ID → elapsed when last said
	return func(ev progress.Event) {
		switch ev.Kind {
		case progress.Updated:
			mu.Lock()
			due := ev.Elapsed-last[ev.ID] >= progressEvery
			if due {
				last[ev.ID] = ev.Elapsed
			}
			mu.Unlock()
			if due {
				ui.say(fmt.Sprintf("%s: %s so far (%s)", ev.Step, amount(ev), ev.Elapsed.Round(time.Second)))
			}
		case progress.Finished:
			mu.Lock()
			delete(last, ev.ID)
			mu.Unlock()
			if ev.Err != nil {
				return // the step's error is the build's
			}
			ui.say(fmt.Sprintf("%s: done in %s (%s)", ev.Step, ev.Elapsed.Round(10*time.Millisecond), amount(ev)))
		}
	}
}

// amount is an event's bytes (of the total, when known) and entries.
func amount(ev progress.Event) string {
	s := mib(ev.Bytes)
	if ev.Total > 0 {
		s += " of " + mib(ev.Total)
	}
	if ev.Entries > 0 {
		s += fmt.Sprintf(", %d entries", ev.Entries)
	}
	return s
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
