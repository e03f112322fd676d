package progress

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
)

func TestStepsReportStartUpdatesAndOneFinish(t *testing.T) {
	var mu sync.Mutex
	var evs []Event
	r := New(func(e Event) { mu.Lock(); evs = append(evs, e); mu.Unlock() })
	r.every = 0
	ctx := With(context.Background(), r)
	s := Start(ctx, "compress")
	s.SetTotal(10)
	if _, err := io.Copy(s.Writer(), strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	s.Add(0, 2)
	boom := errors.New("boom")
	s.Done(boom)
	s.Done(nil) // ignored
	s.Add(1, 1) // ignored after Done
	if len(evs) != 5 {
		t.Fatalf("events = %+v, want start, 3 updates, finish", evs)
	}
	last := evs[len(evs)-1]
	if evs[0].Kind != Started || last.Kind != Finished || last.Err != boom || last.Bytes != 5 || last.Entries != 2 || last.Total != 10 || last.Step != "compress" {
		t.Fatalf("events = %+v", evs)
	}
}

func TestWithoutReporterEverythingIsANoOp(t *testing.T) {
	s := Start(context.Background(), "x")
	s.Add(1, 1)
	s.SetTotal(3)
	_, _ = s.Writer().Write([]byte("abc"))
	s.Done(nil)
	if s != nil {
		t.Fatal("a context without a Reporter should give a nil step")
	}
}

func TestUpdatesAreThrottled(t *testing.T) {
	n := 0
	r := New(func(e Event) {
		if e.Kind == Updated {
			n++
		}
	})
	s := r.Start("x")
	for range 1000 {
		s.Add(1, 0)
	}
	s.Done(nil)
	if n > 2 {
		t.Fatalf("%d updates passed within 100 ms, want at most 1 or 2", n)
	}
}
