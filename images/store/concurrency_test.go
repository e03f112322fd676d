package store

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Child processes: the test binary re-executes itself with childEnv set to a mode, so that
// several real processes share one store.
const childEnv = "IMGCTL_STORE_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		if err := runChild(mode, os.Getenv("STORE_DIR"), os.Getenv("STORE_PREFIX"), os.Getenv("STORE_COUNT")); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runChild(mode, dir, prefix, count string) error {
	ctx := context.Background()
	s, err := Open(ctx, dir, nil)
	if err != nil {
		return err
	}
	switch mode {
	case "put": // put count images, then exit
		n, _ := strconv.Atoi(count)
		for i := range n {
			putChildImage(s, fmt.Sprintf("%s-%d", prefix, i))
		}
		return nil
	case "putloop": // put images until killed
		for i := 0; ; i++ {
			putChildImage(s, fmt.Sprintf("%s-%d", prefix, i))
		}
	case "bigblob": // write a large blob until killed, never committing
		w, err := s.NewBlobWriter(ctx)
		if err != nil {
			return err
		}
		chunk := make([]byte, 1<<20)
		for i := 0; ; i++ {
			chunk[0] = byte(i)
			if _, err := w.Write(chunk); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// putChildImage is putTestImage for a child, which has no testing.T: it panics on error.
func putChildImage(s *Store, version string) {
	putTestImage(panicTB{}, s, version, 1)
}

type panicTB struct{ testing.TB }

func (panicTB) Helper()                   {}
func (panicTB) Fatal(args ...any)         { panic(fmt.Sprint(args...)) }
func (panicTB) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }

func startChild(t *testing.T, mode, dir, prefix string, count int) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "STORE_DIR="+dir, "STORE_PREFIX="+prefix,
		"STORE_COUNT="+strconv.Itoa(count))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}

// checkIndex asserts index.json is valid JSON and holds exactly the versions in want.
func checkIndex(t *testing.T, s *Store, want map[string]bool) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(s.Dir(), "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		t.Fatalf("index.json is not valid JSON: %v\n%s", err, data)
	}
	got := map[string]bool{}
	for _, m := range idx.Manifests {
		v := m.Annotations[ocispec.AnnotationRefName]
		if got[v] {
			t.Errorf("version %s listed twice", v)
		}
		got[v] = true
	}
	if want != nil {
		for v := range want {
			if !got[v] {
				t.Errorf("version %s missing from index", v)
			}
		}
		if len(got) != len(want) {
			t.Errorf("index has %d entries, want %d", len(got), len(want))
		}
	}
	imgs, err := s.List(t.Context())
	if err != nil || len(imgs) != len(got) {
		t.Errorf("List = %d images, %v; index has %d", len(imgs), err, len(got))
	}
	mustVerifyClean(t, s)
}

func TestConcurrentGoroutines(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	shared, err := Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 8, 5
	want := map[string]bool{}
	var wg sync.WaitGroup
	for w := range workers {
		for i := range each {
			want[fmt.Sprintf("g%d-%d", w, i)] = true
		}
		wg.Go(func() {
			s := shared
			if w%2 == 1 { // half share one Store, half open their own: both must be safe
				var err error
				if s, err = Open(context.Background(), dir, nil); err != nil {
					t.Error(err)
					return
				}
			}
			for i := range each {
				putTestImage(t, s, fmt.Sprintf("g%d-%d", w, i), int64(w))
				// The same image again from another worker's point of view: idempotent.
				putTestImage(t, s, fmt.Sprintf("g%d-%d", w, i), int64(w))
			}
		})
	}
	wg.Wait()
	checkIndex(t, shared, want)
}

func TestConcurrentProcesses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store") // not created yet: the processes race to create it
	const each = 15
	want := map[string]bool{}
	var cmds []*exec.Cmd
	for p := range 2 {
		prefix := fmt.Sprintf("p%d", p)
		for i := range each {
			want[fmt.Sprintf("%s-%d", prefix, i)] = true
		}
		cmds = append(cmds, startChild(t, "put", dir, prefix, each))
	}
	s, err := Open(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range each {
		v := fmt.Sprintf("parent-%d", i)
		want[v] = true
		putTestImage(t, s, v, 1)
	}
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
	}
	checkIndex(t, s, want)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func kill(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
}

func TestCrashDuringBlobWrite(t *testing.T) {
	s := newStore(t)
	putTestImage(t, s, "before", 1)
	before, _ := os.ReadDir(filepath.Join(s.Dir(), "blobs", "sha256"))

	cmd := startChild(t, "bigblob", s.Dir(), "", 0)
	var temp string
	waitFor(t, "a large partial blob", func() bool {
		for _, name := range ingestEntries(t, s) {
			if fi, err := os.Stat(filepath.Join(s.Dir(), ingestDir, name)); err == nil && fi.Size() > 32<<20 {
				temp = filepath.Join(s.Dir(), ingestDir, name)
				return true
			}
		}
		return false
	})
	kill(t, cmd)

	after, _ := os.ReadDir(filepath.Join(s.Dir(), "blobs", "sha256"))
	if len(after) != len(before) {
		t.Errorf("blobs went from %d to %d: a partial blob is visible", len(before), len(after))
	}
	checkIndex(t, s, map[string]bool{"before": true})

	// A recent temp may belong to a live writer: Open keeps it. An old one is removed.
	if _, err := Open(t.Context(), s.Dir(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(temp); err != nil {
		t.Fatalf("recent temp removed: %v", err)
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(temp, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.Context(), s.Dir(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(temp); !os.IsNotExist(err) {
		t.Errorf("stale temp survived Open: %v", err)
	}
}

func TestCrashDuringPutImage(t *testing.T) {
	s := newStore(t)
	for round := range 6 {
		cmd := startChild(t, "putloop", s.Dir(), fmt.Sprintf("r%d", round), 0)
		// Let it get going, then kill it at a varying point of its put loop.
		index := filepath.Join(s.Dir(), "index.json")
		start, _ := os.Stat(index)
		waitFor(t, "the child to put an image", func() bool {
			fi, err := os.Stat(index)
			return err == nil && !fi.ModTime().Equal(start.ModTime())
		})
		time.Sleep(time.Duration(round*7) * time.Millisecond)
		kill(t, cmd)
		checkIndex(t, s, nil)
	}
	// Verify also cleans stale temps that killed writers left behind.
	for _, name := range ingestEntries(t, s) {
		old := time.Now().Add(-2 * time.Hour)
		_ = os.Chtimes(filepath.Join(s.Dir(), ingestDir, name), old, old)
	}
	mustVerifyClean(t, s)
	if names := ingestEntries(t, s); len(names) != 0 {
		t.Errorf("Verify left stale temps: %v", names)
	}
}
