package nodeapi

import (
	"strings"
	"testing"
)

func TestParseReport(t *testing.T) {
	good := `{"phase":"configure","ok":true,"rootDigest":"sha256:` + strings.Repeat("a", 64) +
		`","role":"node","steps":[{"name":"fetch-config","status":"ok","ms":12}],"time":"2026-12-04T10:00:00Z"}`
	if r, err := ParseReport([]byte(good)); err != nil || r.Phase != PhaseConfigure || len(r.Steps) != 1 {
		t.Fatalf("ParseReport(good) = %+v, %v", r, err)
	}
	for _, c := range []struct{ name, doc, want string }{
		{"unknown field", `{"phase":"init","ok":true,"time":"2026-12-04T10:00:00Z","x":1}`, `unknown field "x"`},
		{"bad phase", `{"phase":"boot","ok":true,"time":"2026-12-04T10:00:00Z"}`, `phase: "boot" is not a phase`},
		{"failed without name", `{"phase":"init","ok":false,"time":"2026-12-04T10:00:00Z"}`, "failed: required when ok is false"},
		{"ok with failed", `{"phase":"init","ok":true,"failed":"dhcp","time":"2026-12-04T10:00:00Z"}`, "failed: set on a report that is ok"},
		{"bad digest", `{"phase":"init","ok":true,"rootDigest":"sha256:zz","time":"2026-12-04T10:00:00Z"}`, "rootDigest"},
		{"bad step", `{"phase":"init","ok":true,"steps":[{"name":"../x","status":"ok"}],"time":"2026-12-04T10:00:00Z"}`, "steps[0].name"},
		{"bad status", `{"phase":"init","ok":true,"steps":[{"name":"x","status":"maybe"}],"time":"2026-12-04T10:00:00Z"}`, "steps[0].status"},
		{"control chars", `{"phase":"init","ok":false,"failed":"x","steps":[{"name":"x","status":"fail","error":"a\u001b[2Jb"}],"time":"2026-12-04T10:00:00Z"}`, "steps[0].error"},
		{"no time", `{"phase":"init","ok":true}`, "time: required"},
		{"two values", `{"phase":"init","ok":true,"time":"2026-12-04T10:00:00Z"} {}`, "more than one JSON value"},
		{"too big", `{"phase":"init","ok":true,"pad":"` + strings.Repeat("x", MaxReportBytes) + `"}`, "bytes (expected at most"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseReport([]byte(c.doc))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("ParseReport = %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestCredentialFromHeader(t *testing.T) {
	for in, want := range map[string]string{
		"Bearer abc": "abc", "bearer abc": "abc", "Basic abc": "", "": "", "Bearer": "", Bearer("t.1"): "t.1",
	} {
		if got := CredentialFromHeader(in); got != want {
			t.Errorf("CredentialFromHeader(%q) = %q, want %q", in, got, want)
		}
	}
}
