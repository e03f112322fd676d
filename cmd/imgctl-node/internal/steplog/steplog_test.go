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
