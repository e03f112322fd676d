package builder

import (
	"log/slog"
	"strings"
	"sync"

	"github.com/hashicorp/packer-plugin-sdk/packer"
)

// uiWriter turns each line written into a Packer UI message.
type uiWriter struct {
	mu sync.Mutex
	ui packer.Ui
}

func (w *uiWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.ui.Say(line)
	}
	return len(p), nil
}

// newUIHandler is the slog handler the libraries log through: one UI message per record,
// without the time (Packer adds its own).
func newUIHandler(ui packer.Ui, level slog.Level) slog.Handler {
	return slog.NewTextHandler(&uiWriter{ui: ui}, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})
}
