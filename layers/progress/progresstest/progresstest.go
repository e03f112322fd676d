// Package progresstest records the progress events of a context, for tests of code that
// reports steps.
package progresstest

import (
	"context"
	"slices"
	"sync"

	"github.com/imgctl/imgctl/layers/progress"
)

// Recorder keeps every event of the Reporter it installs. It is safe for concurrent use.
type Recorder struct {
	mu     sync.Mutex
	events []progress.Event
}

// Context returns ctx carrying a Reporter that records into a new Recorder. Updates are
// throttled as in production, so a test sees Started and Finished of every step.
func Context(ctx context.Context) (context.Context, *Recorder) {
	r := &Recorder{}
	return progress.With(ctx, progress.New(r.add)), r
}

func (r *Recorder) add(e progress.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

// Events returns a copy of the events so far, in order.
func (r *Recorder) Events() []progress.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// Finished returns the Finished events so far, in order.
func (r *Recorder) Finished() []progress.Event {
	var out []progress.Event
	for _, e := range r.Events() {
		if e.Kind == progress.Finished {
			out = append(out, e)
		}
	}
	return out
}

// Step returns the last Finished event of the step named name.
func (r *Recorder) Step(name string) (progress.Event, bool) {
	f := r.Finished()
	for i := len(f) - 1; i >= 0; i-- {
		if f[i].Step == name {
			return f[i], true
		}
	}
	return progress.Event{}, false
}

// Names returns the names of the steps started so far, in order.
func (r *Recorder) Names() []string {
	var out []string
	for _, e := range r.Events() {
		if e.Kind == progress.Started {
			out = append(out, e.Step)
		}
	}
	return out
}
