package steplog

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestLine(t *testing.T) {
	tests := []struct {
		name, status string
		lat          time.Duration
		err          error
		kv           []any
		want         string
	}{
		{"mount-root", OK, 12 * time.Millisecond, nil, []any{"device", "/dev/vda2", "label", "ROOT-A"},
			"imgctl-node step=mount-root status=ok latency=12ms device=/dev/vda2 label=ROOT-A"},
		{"find-root", Fail, 3 * time.Second, errors.New(`no partition "NOPE"`), []any{"want", "PARTLABEL=NOPE"},
			`imgctl-node step=find-root status=fail latency=3000ms want="PARTLABEL=NOPE" err="no partition \"NOPE\""`},
		{"modules", OK, 0, nil, []any{"count", 3, "waited", 1500 * time.Millisecond, "empty", ""},
			`imgctl-node step=modules status=ok latency=0ms count=3 waited=1500ms empty=""`},
	}
	for _, tc := range tests {
		if got := Line(tc.name, tc.status, tc.lat, tc.err, tc.kv...); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}

func TestLogger(t *testing.T) {
	var b strings.Builder
	l := New(&b)
	now := time.Unix(0, 0)
	l.now = func() time.Time { return now }
	s := l.Start("x")
	now = now.Add(5 * time.Millisecond)
	s.Done("k", "v")
	if err := l.Start("y").Fail(errors.New("boom")); err == nil || err.Error() != "boom" {
		t.Errorf("Fail returned %v", err)
	}
	want := "imgctl-node step=x status=ok latency=5ms k=v\nimgctl-node step=y status=fail latency=0ms err=\"boom\"\n"
	if b.String() != want {
		t.Errorf("got %q\nwant %q", b.String(), want)
	}
}

// TestSteps: the logger keeps every step's result, in order, for the boot report; at most
// MaxRecords, the newest.
func TestSteps(t *testing.T) {
	var out strings.Builder
	l := New(&out)
	now := time.Unix(0, 0)
	l.now = func() time.Time { now = now.Add(5 * time.Millisecond); return now }
	l.Start("cmdline").Done("root", "x")
	l.Start("modules").Skip()
	_ = l.Start("fetch-root").Fail(errors.New("digest mismatch"))
	want := []Record{
		{Name: "cmdline", Status: OK, Latency: 5 * time.Millisecond},
		{Name: "modules", Status: Skip, Latency: 5 * time.Millisecond},
		{Name: "fetch-root", Status: Fail, Latency: 5 * time.Millisecond, Err: "digest mismatch"},
	}
	got := l.Steps()
	if len(got) != len(want) {
		t.Fatalf("Steps() = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("Steps()[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	got[0].Name = "changed"
	if l.Steps()[0].Name != "cmdline" {
		t.Error("Steps() returns the logger's own slice")
	}
	for i := 0; i < MaxRecords+10; i++ {
		l.Start("module").Done()
	}
	if s := l.Steps(); len(s) != MaxRecords || s[0].Name != "module" {
		t.Errorf("after %d more steps: %d records, first %q; want %d, all module", MaxRecords+10, len(s), s[0].Name, MaxRecords)
	}
}

func TestProgress(t *testing.T) {
	var b strings.Builder
	l := New(&b)
	now := time.Unix(0, 0)
	l.now = func() time.Time { return now }
	s := l.Start("update-write")
	now = now.Add(2 * time.Second)
	s.Progress("written", int64(10), "total", int64(100))
	s.Done()
	want := "imgctl-node step=update-write status=progress latency=2000ms written=10 total=100\n" +
		"imgctl-node step=update-write status=ok latency=2000ms\n"
	if b.String() != want {
		t.Errorf("got\n%swant\n%s", b.String(), want)
	}
	if st := l.Steps(); len(st) != 1 || st[0].Status != OK {
		t.Errorf("Steps() = %+v: want only the result", st)
	}
}
