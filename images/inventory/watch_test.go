package inventory

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a log destination safe to read while a Watcher writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) count(substr string) int { return strings.Count(s.String(), substr) }

const machine2 = "- name: node-2\n  group: workers\n  macs: [\"52:54:00:00:00:02\"]\n"

// writeFile replaces path atomically, as an editor or config management would.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newTestWatcher(t *testing.T, content string) (*Watcher, string, *syncBuffer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "inv.yaml")
	writeFile(t, path, content)
	logs := &syncBuffer{}
	w, err := NewWatcher(t.Context(), path, nil, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatalf("NewWatcher: %v", err)
	}
	return w, path, logs
}

// eventually waits up to 10 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func run(t *testing.T, w *Watcher) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { w.Run(ctx, 5*time.Millisecond); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestWatcherReloadsOnChange(t *testing.T) {
	w, path, logs := newTestWatcher(t, head+okMachine)
	first := w.Current()
	if len(first.Machines) != 1 {
		t.Fatalf("Current() has %d machines", len(first.Machines))
	}
	run(t, w)
	writeFile(t, path, head+okMachine+machine2)
	eventually(t, "the second machine", func() bool { return len(w.Current().Machines) == 2 })
	if _, ok := w.Current().Machine("node-2"); !ok {
		t.Error("node-2 missing after reload")
	}
	if len(first.Machines) != 1 {
		t.Error("the old inventory changed: readers holding it must keep a consistent view")
	}
	eventually(t, "the reload log line", func() bool { return logs.count("inventory reloaded") == 1 })

	// Same content, new mtime and inode: hashed, not reloaded, not logged.
	cur := w.Current()
	writeFile(t, path, head+okMachine+machine2)
	time.Sleep(100 * time.Millisecond)
	if w.Current() != cur || logs.count("inventory reloaded") != 1 {
		t.Errorf("an unchanged file was reloaded (logs:\n%s)", logs)
	}
}

func TestWatcherBadFileKeepsOld(t *testing.T) {
	w, path, logs := newTestWatcher(t, head+okMachine)
	good := w.Current()
	run(t, w)
	writeFile(t, path, head+"- name: a\n  group: workers\n  macs: [\"52:54:zz:12:34:56\"]\n")
	eventually(t, "the problem logged", func() bool { return logs.count("inventory not loaded") > 0 })
	time.Sleep(100 * time.Millisecond) // many polls
	if n := logs.count("inventory not loaded"); n != 1 {
		t.Errorf("a bad file was logged %d times, want once per change:\n%s", n, logs)
	}
	if w.Current() != good {
		t.Error("a bad file replaced the inventory")
	}
	for _, want := range []string{"file=" + path, "line=16", "field=machines[0].macs[0]", `is not a MAC address`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	// Another bad version is a change: logged again.
	writeFile(t, path, head+"- name: a\n  group: nope\n  macs: [\"52:54:00:12:34:56\"]\n")
	eventually(t, "the second problem logged", func() bool { return logs.count("inventory not loaded") == 2 })
	// The file disappears: logged once, the inventory stays.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the missing file logged", func() bool { return logs.count("inventory not loaded") == 3 })
	time.Sleep(50 * time.Millisecond)
	if n := logs.count("inventory not loaded"); n != 3 || w.Current() != good {
		t.Errorf("after removal: %d log lines, current changed %v", n, w.Current() != good)
	}
	// Fixed: loaded.
	writeFile(t, path, head+okMachine+machine2)
	eventually(t, "the fixed file", func() bool { return len(w.Current().Machines) == 2 })
}

func TestWatcherSecretFileChange(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "inv.yaml")
	secret := filepath.Join(dir, "s.yaml")
	writeFile(t, secret, "bootstrapToken: "+token+"\ncaCertHashes: [\""+zeroHash+"\"]\n")
	writeFile(t, path, strings.Replace(head, "  secret: {bootstrapToken: "+token+", caCertHashes: [\""+zeroHash+"\"]}\n", "  secretFile: s.yaml\n", 1)+okMachine)
	w, err := NewWatcher(t.Context(), path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	run(t, w)
	const newToken = "zyxwvu.9876543210zyxwvu"
	writeFile(t, secret, "bootstrapToken: "+newToken+"\ncaCertHashes: [\""+zeroHash+"\"]\n")
	eventually(t, "the new secret", func() bool {
		m, _ := w.Current().Machine("node-1")
		return m.Secret.BootstrapToken == newToken
	})
}

func TestWatcherCheckAndReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.yaml")
	writeFile(t, path, head+okMachine)
	known := []string{"nightly"}
	var mu sync.Mutex
	check := func(inv *Inventory) error {
		mu.Lock()
		defer mu.Unlock()
		return inv.CheckChannels(known)
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	if _, err := NewWatcher(t.Context(), path, check, logger); err == nil || !strings.Contains(err.Error(), `inv.yaml:6: groups[0].channel: unknown channel "prod"`) {
		t.Fatalf("NewWatcher with an unknown channel = %v", err)
	}
	known = []string{"prod"}
	w, err := NewWatcher(t.Context(), path, check, logger)
	if err != nil {
		t.Fatal(err)
	}
	good := w.Current()
	writeFile(t, path, strings.Replace(head, "channel: prod", "channel: staging", 1)+okMachine)
	err = w.Reload(t.Context())
	if err == nil || !strings.Contains(err.Error(), `unknown channel "staging"`) || w.Current() != good {
		t.Errorf("Reload with an unknown channel = %v (inventory replaced: %v)", err, w.Current() != good)
	}
	if !strings.Contains(logs.String(), `problem="unknown channel \"staging\" (expected one of prod)"`) {
		t.Errorf("logs:\n%s", logs)
	}
	// SIGHUP after the store learned the channel: same file, now accepted.
	mu.Lock()
	known = []string{"prod", "staging"}
	mu.Unlock()
	if err := w.Reload(t.Context()); err != nil || w.Current().Machines[0].Channel != "staging" {
		t.Errorf("Reload = %v, channel %q", err, w.Current().Machines[0].Channel)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := w.Reload(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Reload(canceled) = %v", err)
	}
	if _, err := NewWatcher(t.Context(), filepath.Join(t.TempDir(), "nope.yaml"), nil, nil); err == nil {
		t.Error("NewWatcher(missing file) succeeded")
	}
}

// TestWatcherConcurrentCurrent: readers never block and never see a half inventory while
// reloads swap it (run with -race).
func TestWatcherConcurrentCurrent(t *testing.T) {
	w, path, _ := newTestWatcher(t, head+okMachine)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				inv := w.Current()
				if inv == nil {
					t.Error("Current() = nil")
					return
				}
				n := len(inv.Machines)
				if n != 1 && n != 2 || len(inv.byName) != n || len(inv.byMAC) != n {
					t.Errorf("inconsistent inventory: %d machines, %d names, %d MACs", n, len(inv.byName), len(inv.byMAC))
					return
				}
				if _, ok := inv.Lookup(Identity{MAC: "52:54:00:12:34:56"}); !ok {
					t.Error("node-1 missing")
					return
				}
			}
		}()
	}
	run(t, w)
	for i := range 100 {
		content := head + okMachine
		if i%2 == 0 {
			content += machine2
		}
		if i%10 == 5 {
			content = "not: [valid\n"
		}
		writeFile(t, path, content)
		if err := w.Reload(t.Context()); (err != nil) != (i%10 == 5) {
			t.Errorf("Reload %d = %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
}

func TestWatcherRunStopsOnCancel(t *testing.T) {
	w, _, _ := newTestWatcher(t, head+okMachine)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { w.Run(ctx, time.Hour); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}
