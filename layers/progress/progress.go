// Package progress reports the steps of long-running work (resolving, fetching, composing,
// compressing, writing a disk) to whoever renders them: the CLI draws a live line per running
// step, a server or a Packer plugin logs them, tests count them. Libraries find the Reporter in
// their context; without one every call is a no-op, so reporting never changes behaviour.
package progress

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Kind says what happened to a step.
type Kind int

// Event kinds.
const (
	Started Kind = iota
	Updated
	Finished
)

// Event is one report about one step. Bytes, Total and Entries are cumulative; Total is 0 when
// unknown.
type Event struct {
	Kind    Kind
	ID      uint64 // distinguishes concurrent steps of the same name
	Step    string // e.g. "mmdebstrap bookworm", "compress root squashfs"
	Elapsed time.Duration
	Bytes   int64
	Total   int64
	Entries int64
	Err     error // set on Finished when the step failed
}

// Sink receives events; it is called from many goroutines at once and must not block for long.
type Sink func(Event)

// Reporter hands out steps and passes their events to its sink.
type Reporter struct {
	sink   Sink
	nextID atomic.Uint64
	// Every limits Updated events per step (0: every update is passed on).
	every time.Duration
}

// New returns a Reporter that passes at most one Updated event per step every 100 ms to sink.
func New(sink Sink) *Reporter { return &Reporter{sink: sink, every: 100 * time.Millisecond} }

type ctxKey struct{}

// With returns a context carrying r.
func With(ctx context.Context, r *Reporter) context.Context {
	return context.WithValue(ctx, ctxKey{}, r)
}

// From returns the Reporter in ctx, or nil (whose steps discard everything).
func From(ctx context.Context) *Reporter {
	r, _ := ctx.Value(ctxKey{}).(*Reporter)
	return r
}

// Start begins a step named name, reported to ctx's Reporter (if any). Call Done exactly once.
func Start(ctx context.Context, name string) *Step { return From(ctx).Start(name) }

// Start begins a step. A nil Reporter returns a Step that discards everything.
func (r *Reporter) Start(name string) *Step {
	if r == nil || r.sink == nil {
		return nil
	}
	s := &Step{r: r, id: r.nextID.Add(1), name: name, start: time.Now()}
	r.sink(Event{Kind: Started, ID: s.id, Step: name})
	return s
}

// Step is one running step. Its methods are safe for concurrent use and on a nil *Step.
type Step struct {
	r     *Reporter
	id    uint64
	name  string
	start time.Time

	mu                    sync.Mutex
	bytes, total, entries int64
	last                  time.Time
	done                  bool
}

// Add counts n more bytes and e more entries.
func (s *Step) Add(n, e int64) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.bytes += n
	s.entries += e
	s.update()
}

// Set replaces the byte and entry counts.
func (s *Step) Set(n, e int64) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.bytes, s.entries = n, e
	s.update()
}

// SetTotal records the expected number of bytes.
func (s *Step) SetTotal(n int64) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.total = n
	s.update()
}

// update unlocks s.mu, then passes an Updated event on if the last one is old enough.
func (s *Step) update() {
	now := time.Now()
	if s.done || now.Sub(s.last) < s.r.every {
		s.mu.Unlock()
		return
	}
	s.last = now
	ev := s.event(Updated, now)
	s.mu.Unlock()
	s.r.sink(ev)
}

func (s *Step) event(k Kind, now time.Time) Event {
	return Event{Kind: k, ID: s.id, Step: s.name, Elapsed: now.Sub(s.start), Bytes: s.bytes, Total: s.total, Entries: s.entries}
}

// Done finishes the step (err nil: success). Later calls are ignored.
func (s *Step) Done(err error) {
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return
	}
	s.done = true
	ev := s.event(Finished, time.Now())
	ev.Err = err
	s.mu.Unlock()
	s.r.sink(ev)
}

// Writer returns an io.Writer-compatible counter: each Write adds len(p) bytes to s. Use it
// with io.MultiWriter or io.TeeReader to report a stream's progress.
func (s *Step) Writer() CountingWriter { return CountingWriter{s} }

// CountingWriter adds what is written to it to a Step's bytes.
type CountingWriter struct{ s *Step }

func (w CountingWriter) Write(p []byte) (int, error) {
	w.s.Add(int64(len(p)), 0)
	return len(p), nil
}
