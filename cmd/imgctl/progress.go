package main

import (
	"fmt"
	"io"
	"path"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/layers/fetch"
	"github.com/imgctl/imgctl/layers/progress"
)

const (
	// redrawEvery bounds how often the live block is redrawn (10 times a second).
	redrawEvery = 100 * time.Millisecond
	// In a log, a step gets a line once it has run startLineAfter, then every repeatLineEvery.
	startLineAfter  = 2 * time.Second
	repeatLineEvery = 30 * time.Second
	// uploadLineEvery is repeatLineEvery for commands that upload (publish ami): a CI log
	// shows the upload moving every few seconds.
	uploadLineEvery = 5 * time.Second
	barWidth        = 20
)

// renderer shows the steps libraries report (package progress) and the fetch client's
// downloads on stderr. On a terminal (live) it keeps a block of one line per running step at
// the bottom, redrawn in place at most 10 times a second, and prints each finished step once
// above it: "✓ name  12.3s  118.0 MiB". Elsewhere (a CI log) it writes plain lines: one when a
// step has run startLineAfter ("… name  2.0s"), one every repeatLineEvery after that
// (uploadLineEvery for commands that upload), and one when it finishes.
type renderer struct {
	w     io.Writer
	live  bool
	width func() int // terminal columns (live only)
	// repeat is how often a running step gets a line in a log (default repeatLineEvery).
	repeat time.Duration
	now    func() time.Time
	rep    *progress.Reporter

	mu       sync.Mutex
	running  []*runningStep // in start order
	finished []string       // finished lines the live block has not printed yet
	drawn    int            // lines of the live block on screen
	lastDraw time.Time

	dmu       sync.Mutex
	downloads map[string]*progress.Step // by URL

	started  bool
	stopOnce sync.Once
	stop     chan struct{}
	stopped  chan struct{}
}

type runningStep struct {
	ev       progress.Event // the latest
	start    time.Time
	lastLine time.Time // log mode: when a line about it was last written (zero: never)
}

func newRenderer(w io.Writer, live bool, width func() int) *renderer {
	r := &renderer{w: w, live: live, width: width, now: time.Now, repeat: repeatLineEvery, downloads: map[string]*progress.Step{},
		stop: make(chan struct{}), stopped: make(chan struct{})}
	r.rep = progress.New(r.event)
	return r
}

// showProgress installs a renderer of a.err for the rest of cmd (not with -q): the
// Reporter goes into cmd's context, fetch progress and log lines go through the renderer
// (see env and logger). The returned function removes the live block; call it before
// printing anything else to stderr. It may be called more than once.
func (a *app) showProgress(cmd *cobra.Command) (stop func()) {
	return a.showProgressEvery(cmd, repeatLineEvery)
}

// showProgressEvery is showProgress writing a running step's line every repeat in a log.
func (a *app) showProgressEvery(cmd *cobra.Command, repeat time.Duration) (stop func()) {
	if a.quiet {
		return func() {}
	}
	r := newRenderer(a.err, a.terminal(), a.termWidth)
	r.repeat = repeat
	a.progress = r
	cmd.SetContext(progress.With(cmd.Context(), r.rep))
	r.start()
	return func() {
		r.close()
		a.progress = nil
	}
}

// start redraws (or, in a log, checks for long-running steps) every redrawEvery until close.
func (r *renderer) start() {
	r.started = true
	go func() {
		defer close(r.stopped)
		t := time.NewTicker(redrawEvery)
		defer t.Stop()
		for {
			select {
			case <-r.stop:
				return
			case <-t.C:
				r.tick()
			}
		}
	}()
}

// close stops the ticker (if started), prints what finished and removes the live block.
func (r *renderer) close() {
	r.stopOnce.Do(func() { close(r.stop) })
	if r.started {
		<-r.stopped
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live {
		r.running = nil
		r.draw()
	}
}

// event is the Reporter's sink.
func (r *renderer) event(e progress.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch e.Kind {
	case progress.Started:
		r.running = append(r.running, &runningStep{ev: e, start: r.now()})
	case progress.Updated:
		for _, s := range r.running {
			if s.ev.ID == e.ID {
				s.ev = e
			}
		}
	case progress.Finished:
		for i, s := range r.running {
			if s.ev.ID == e.ID {
				r.running = append(r.running[:i], r.running[i+1:]...)
				break
			}
		}
		line := finishedLine(e)
		if r.live {
			r.finished = append(r.finished, line)
		} else {
			fmt.Fprintln(r.w, line)
		}
	}
}

// tick redraws the live block, at most once per redrawEvery; in a log it writes a line for
// steps running longer than startLineAfter, and every repeatLineEvery after.
func (r *renderer) tick() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if r.live {
		if now.Sub(r.lastDraw) >= redrawEvery {
			r.draw()
		}
		return
	}
	for _, s := range r.running {
		el := now.Sub(s.start)
		due := s.lastLine.IsZero() && el >= startLineAfter || !s.lastLine.IsZero() && now.Sub(s.lastLine) >= r.repeat
		if due {
			s.lastLine = now
			fmt.Fprintln(r.w, "… "+strings.Join(append([]string{s.ev.Step, elapsed(el)}, counts(s.ev, false)...), "  "))
		}
	}
}

// draw replaces the live block on screen: finished lines first (printed once, they scroll
// away), then one line per running step, each shorter than the terminal so none wraps.
func (r *renderer) draw() {
	var b strings.Builder
	if r.drawn > 0 {
		fmt.Fprintf(&b, "\r\x1b[%dA\x1b[J", r.drawn)
	}
	for _, l := range r.finished {
		b.WriteString(l + "\n")
	}
	r.finished = nil
	width := 80
	if r.width != nil {
		width = r.width()
	}
	now := r.now()
	for _, s := range r.running {
		b.WriteString(runningLine(s.ev.Step, now.Sub(s.start), s.ev, width) + "\n")
	}
	r.drawn = len(r.running)
	r.lastDraw = now
	if b.Len() > 0 {
		io.WriteString(r.w, b.String())
	}
}

// logWriter is where log lines go while the renderer runs: on a terminal the live block is
// removed first (the next tick draws it again below the line).
func (r *renderer) logWriter() io.Writer { return logWriter{r} }

type logWriter struct{ r *renderer }

func (l logWriter) Write(p []byte) (int, error) {
	r := l.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live && r.drawn > 0 {
		fmt.Fprintf(r.w, "\r\x1b[%dA\x1b[J", r.drawn)
		r.drawn = 0
		r.lastDraw = time.Time{} // redraw at the next tick
	}
	return r.w.Write(p)
}

// download feeds the fetch client's progress: each download is a step.
func (r *renderer) download(p fetch.Progress) {
	r.dmu.Lock()
	s, ok := r.downloads[p.URL]
	if !ok {
		s = r.rep.Start("download " + path.Base(p.URL))
		r.downloads[p.URL] = s
	}
	if p.Done {
		delete(r.downloads, p.URL)
	}
	r.dmu.Unlock()
	if p.Total > 0 {
		s.SetTotal(p.Total)
	}
	s.Set(p.Complete, 0)
	if p.Done {
		s.Done(p.Err)
	}
}

// runningLine is a live line: "  name  1.5s  50.0 MiB / 200.0 MiB  [#####     ]  25%  1200 entries",
// the name shortened so that the line has fewer than width runes.
func runningLine(name string, el time.Duration, e progress.Event, width int) string {
	rest := strings.Join(append([]string{elapsed(el)}, counts(e, true)...), "  ")
	room := width - 1 - 2 - 2 - utf8.RuneCountInString(rest)
	if n := utf8.RuneCountInString(name); n > room {
		if room < 1 {
			room = 1
		}
		name = string([]rune(name)[:room-1]) + "…"
	}
	line := "  " + name + "  " + rest
	if utf8.RuneCountInString(line) >= width { // a very narrow terminal: cut the tail
		line = string([]rune(line)[:max(width-1, 1)])
	}
	return line
}

// finishedLine is "✓ name  12.3s  118.0 MiB  4000 entries", or "✗ name  3.0s  ERROR" with the
// error's first line.
func finishedLine(e progress.Event) string {
	if e.Err != nil {
		msg, _, _ := strings.Cut(e.Err.Error(), "\n")
		return "✗ " + e.Step + "  " + elapsed(e.Elapsed) + "  " + msg
	}
	return "✓ " + strings.Join(append([]string{e.Step, elapsed(e.Elapsed)}, counts(finalCounts(e), false)...), "  ")
}

// finalCounts drops the total of a finished step: its bytes say it all.
func finalCounts(e progress.Event) progress.Event {
	e.Total = 0
	return e
}

// counts renders bytes (of total, with a bar on a terminal, a percentage in a log) and entries.
func counts(e progress.Event, bar bool) []string {
	var out []string
	switch {
	case e.Total > 0:
		out = append(out, human(e.Bytes)+" / "+human(e.Total))
		frac := min(max(float64(e.Bytes)/float64(e.Total), 0), 1)
		if bar {
			n := int(frac * barWidth)
			out = append(out, "["+strings.Repeat("#", n)+strings.Repeat(" ", barWidth-n)+"]")
		}
		out = append(out, fmt.Sprintf("%d%%", int(frac*100)))
	case e.Bytes > 0:
		out = append(out, human(e.Bytes))
	}
	switch {
	case e.Entries == 1:
		out = append(out, "1 entry")
	case e.Entries > 1:
		out = append(out, fmt.Sprintf("%d entries", e.Entries))
	}
	return out
}

// elapsed is "1.5s" under a minute, "1m15s" from then on.
func elapsed(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	d = d.Round(time.Second)
	return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
}
