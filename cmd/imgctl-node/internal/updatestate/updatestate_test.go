package updatestate

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/nodeconfig"
)

const (
	img1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	img2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	root = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
)

func TestLoadMissingIsEmpty(t *testing.T) {
	s, err := Load(filepath.Join(t.TempDir(), "no", "state.json"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, State{}) {
		t.Fatalf("got %+v", s)
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "update", "state.json") // Save creates the directory
	now := time.Date(2026, 12, 5, 9, 30, 0, 0, time.UTC)
	var s State
	s.AddFailed(Failed{Image: img1, Root: root, Version: "v3", Reason: "configure failed 3 times", Time: now})
	s.AddFailed(Failed{Image: img1, Root: root, Version: "v3", Reason: "again", Time: now.Add(time.Hour)}) // recorded once
	s.Staged = &Staged{Slot: "b", Image: img2, Root: root, Version: "v2", Time: now}
	s.LastCheck = now
	if err := Save(p, s); err != nil {
		t.Fatal(err)
	}
	got, err := Load(p, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) || len(got.Failed) != 1 {
		t.Fatalf("got %+v\nwant %+v", got, s)
	}
	if !got.HasFailed(img1) || got.HasFailed(img2) {
		t.Fatalf("HasFailed wrong: %+v", got.Failed)
	}
	data, _ := os.ReadFile(p)
	for _, key := range []string{`"failed"`, `"image"`, `"root"`, `"version"`, `"reason"`, `"time"`, `"staged"`, `"lastCheck"`} {
		if !bytes.Contains(data, []byte(key)) {
			t.Errorf("state file lacks %s:\n%s", key, data)
		}
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".tmp-*"))
	if len(left) > 0 {
		t.Fatalf("temp files left: %v", left)
	}
}

func TestLoadCorruptMovesAside(t *testing.T) {
	for name, body := range map[string]string{
		"truncated":     `{"failed":[{"image":"sha256:11`,
		"unknown field": `{"failed":[],"surprise":1}`,
		"bad digest":    `{"failed":[{"image":"latest"}]}`,
		"two values":    `{} {}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "state.json")
			if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			var log bytes.Buffer
			s, err := Load(p, slog.New(slog.NewTextHandler(&log, nil)))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(s, State{}) {
				t.Fatalf("got %+v", s)
			}
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Fatalf("corrupt file still at %s: %v", p, err)
			}
			aside, _ := filepath.Glob(p + ".corrupt-*")
			if len(aside) != 1 {
				t.Fatalf("want one file moved aside, got %v", aside)
			}
			if kept, _ := os.ReadFile(aside[0]); string(kept) != body {
				t.Fatalf("moved-aside file holds %q", kept)
			}
			if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), aside[0]) {
				t.Fatalf("no warning naming %s: %s", aside[0], log.String())
			}
		})
	}
}

func TestConfigRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "imgctl", "update.json")
	if _, ok, err := ReadConfig(p); err != nil || ok {
		t.Fatalf("absent config: ok=%v err=%v", ok, err)
	}
	yes := true
	u := nodeconfig.Update{Server: "http://10.0.2.100", Channel: "prod", Interval: "1h0m0s", Window: "02:00-04:00", Enabled: &yes}
	if err := WriteConfig(p, u); err != nil {
		t.Fatal(err)
	}
	got, ok, err := ReadConfig(p)
	if err != nil || !ok || !reflect.DeepEqual(got, u) {
		t.Fatalf("got %+v ok=%v err=%v", got, ok, err)
	}
}

func TestReadConfigStrict(t *testing.T) {
	for name, tt := range map[string]struct{ body, want string }{
		"unknown field": {`{"server":"http://s","channel":"prod","url":"x"}`, `unknown field "url"`},
		"bad window":    {`{"server":"http://s","channel":"prod","window":"2-4"}`, `spec.update.window: "2-4" is not HH:MM-HH:MM`},
		"no channel":    {`{"server":"http://s"}`, "spec.update.channel: required with spec.update.server"},
		"not JSON":      {`server: x`, "invalid character"},
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "update.json")
			if err := os.WriteFile(p, []byte(tt.body), 0o644); err != nil {
				t.Fatal(err)
			}
			_, _, err := ReadConfig(p)
			if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one naming %s and %q", err, p, tt.want)
			}
		})
	}
}
