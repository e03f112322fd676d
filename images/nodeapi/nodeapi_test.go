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

// TestParseUpdateReport: the update agent and bless report phase update, with the image
// (manifest digest) and version the update concerns.
func TestParseUpdateReport(t *testing.T) {
	img := "sha256:" + strings.Repeat("b", 64)
	good := `{"phase":"update","ok":false,"failed":"update-rollback","image":"` + img + `","version":"v3",` +
		`"steps":[{"name":"update-rollback","status":"fail","ms":0}],"time":"2026-12-04T10:00:00Z"}`
	r, err := ParseReport([]byte(good))
	if err != nil || r.Phase != PhaseUpdate || r.Image != img || r.Version != "v3" {
		t.Fatalf("ParseReport(update) = %+v, %v", r, err)
	}
	for _, c := range []struct{ name, doc, want string }{
		{"bad image", `{"phase":"update","ok":true,"image":"latest","time":"2026-12-04T10:00:00Z"}`, `report: image: "latest" is not sha256:HEX`},
		{"bad version", `{"phase":"update","ok":true,"version":"v1\u0000","time":"2026-12-04T10:00:00Z"}`, "report: version: longer than 128 bytes or has control characters"},
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
