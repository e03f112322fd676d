package cache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Child-process modes for the cross-process tests (the test binary re-executes itself).
const (
	envChild = "IMGCTL_CACHE_TEST_CHILD"
	envDir   = "IMGCTL_CACHE_TEST_DIR"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envChild) {
	case "":
		os.Exit(m.Run())
	case "counter":
		os.Exit(childCounter())
	case "kill":
		os.Exit(childKill())
	default:
		fmt.Fprintln(os.Stderr, "unknown child mode")
		os.Exit(2)
	}
}

func newCache(t *testing.T) *Cache {
	t.Helper()
	c, err := Open(filepath.Join(t.TempDir(), "cache"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func put(t *testing.T, c *Cache, data string) digest.Digest {
	t.Helper()
	w, err := c.NewWriter(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	d, n, err := w.Commit(digest.FromString(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(data)) || d != digest.FromString(data) {
		t.Fatalf("commit = %s %d", d, n)
	}
	return d
}

// entries lists the names in dir (no subdirectories).
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestOpenLayout(t *testing.T) {
	c := newCache(t)
	for _, sub := range []string{"blobs/sha256", "refs", "tmp", "tmp/partial", "locks"} {
		fi, err := os.Stat(filepath.Join(c.Dir(), sub))
		if err != nil || !fi.IsDir() {
			t.Errorf("%s: %v", sub, err)
		} else if fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: mode %v", sub, fi.Mode().Perm())
		}
	}
	if !filepath.IsAbs(c.Dir()) {
		t.Errorf("Dir %q not absolute", c.Dir())
	}
	t.Setenv("XDG_CACHE_HOME", "/somewhere")
	if d, err := DefaultDir(); err != nil || d != "/somewhere/imgctl" {
		t.Errorf("DefaultDir = %q, %v", d, err)
	}
	if _, err := Open("", nil); err == nil {
		t.Error("Open(\"\") succeeded")
	}
}

func TestCommit(t *testing.T) {
	const data = "hello, layer"
	good := digest.FromString(data)
	other := digest.FromString("something else")
	tests := []struct {
		name     string
		expected digest.Digest
		size     int64
		wantErr  error
	}{
		{"any", "", -1, nil},
		{"digest", good, -1, nil},
		{"digest+size", good, int64(len(data)), nil},
		{"wrong digest", other, -1, ErrDigestMismatch},
		{"wrong size", good, 3, ErrSizeMismatch},
		{"invalid digest", "sha256:xyz", -1, ErrInvalidDigest},
		{"sha512 digest", digest.NewDigestFromEncoded(digest.SHA512, strings.Repeat("ab", 64)), -1, ErrInvalidDigest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t)
			w, err := c.NewWriter(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write([]byte(data)); err != nil {
				t.Fatal(err)
			}
			d, n, err := w.Commit(tt.expected, tt.size)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if tt.wantErr == ErrDigestMismatch && (!strings.Contains(err.Error(), string(other)) || !strings.Contains(err.Error(), string(good))) {
					t.Errorf("error %q does not name expected and actual digests", err)
				}
				if got := entries(t, filepath.Join(c.Dir(), "blobs", "sha256")); len(got) != 0 {
					t.Errorf("blobs after failed commit: %v", got)
				}
				if got := entries(t, filepath.Join(c.Dir(), "tmp")); len(got) != 0 {
					t.Errorf("temp files after failed commit: %v", got)
				}
				if c.Has(good) {
					t.Error("blob visible after failed commit")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d != good || n != int64(len(data)) {
				t.Fatalf("Commit = %s, %d", d, n)
			}
			if !c.Has(good) {
				t.Fatal("Has = false after commit")
			}
			p, err := c.Path(good)
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(p); string(b) != data {
				t.Fatalf("content %q", b)
			}
			if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o444 {
				t.Errorf("blob mode %v", fi.Mode().Perm())
			}
			if got := entries(t, filepath.Join(c.Dir(), "tmp")); len(got) != 0 {
				t.Errorf("temp files after commit: %v", got)
			}
			if err := c.Verify(context.Background(), good); err != nil {
				t.Fatal(err)
			}
			// Writer is finished: further use fails, Abort is a no-op.
			if _, err := w.Write([]byte("x")); err == nil {
				t.Error("Write after Commit succeeded")
			}
			if err := w.Abort(); err != nil {
				t.Error(err)
			}
			if !c.Has(good) {
				t.Error("Abort after Commit removed the blob")
			}
		})
	}
}

func TestCommitIdempotent(t *testing.T) {
	c := newCache(t)
	d1 := put(t, c, "same")
	d2 := put(t, c, "same")
	if d1 != d2 {
		t.Fatal(d1, d2)
	}
	if got := entries(t, filepath.Join(c.Dir(), "tmp")); len(got) != 0 {
		t.Errorf("temp files left: %v", got)
	}
}

func TestNotFound(t *testing.T) {
	c := newCache(t)
	d := digest.FromString("absent")
	if c.Has(d) || c.Has("garbage") {
		t.Error("Has = true")
	}
	if _, err := c.Path(d); !errors.Is(err, ErrNotFound) {
		t.Errorf("Path: %v", err)
	}
	if _, err := c.Open(d); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open: %v", err)
	}
	if err := c.Verify(context.Background(), d); !errors.Is(err, ErrNotFound) {
		t.Errorf("Verify: %v", err)
	}
	if _, err := c.Path("sha256:../../etc/passwd"); !errors.Is(err, ErrInvalidDigest) {
		t.Errorf("Path(traversal): %v", err)
	}
}

func TestOpenBlob(t *testing.T) {
	c := newCache(t)
	d := put(t, c, "readable")
	f, err := c.Open(d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 100)
	n, _ := f.Read(b)
	if string(b[:n]) != "readable" {
		t.Fatalf("read %q", b[:n])
	}
}

func TestVerifyCorrupt(t *testing.T) {
	c := newCache(t)
	d := put(t, c, "original")
	p, _ := c.Path(d)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("bit rot"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := c.Verify(context.Background(), d)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), string(d)) {
		t.Fatalf("Verify = %v", err)
	}
	if c.Has(d) {
		t.Fatal("corrupt blob still present")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d = put(t, c, "x")
	if err := c.Verify(ctx, d); !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify(cancelled) = %v", err)
	}
	if !c.Has(d) {
		t.Fatal("cancelled Verify removed the blob")
	}
}

func TestAbortAndClose(t *testing.T) {
	c := newCache(t)
	w, _ := c.NewWriter(context.Background())
	w.Write([]byte("discard me"))
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	w2, _ := c.NewWriter(context.Background())
	w2.Write([]byte("discard me too"))
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, filepath.Join(c.Dir(), "tmp")); len(got) != 0 {
		t.Errorf("temp files left: %v", got)
	}
	if got := entries(t, filepath.Join(c.Dir(), "blobs", "sha256")); len(got) != 0 {
		t.Errorf("blobs: %v", got)
	}
}

func TestPartial(t *testing.T) {
	c := newCache(t)
	ctx := context.Background()
	const data = "0123456789abcdef"
	d := digest.FromString(data)
	w, err := c.OpenPartial(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if w.Size() != 0 {
		t.Fatal(w.Size())
	}
	w.Write([]byte(data[:6]))
	if err := w.Close(); err != nil { // keeps the data
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(c.PartialPath(d)); string(b) != data[:6] {
		t.Fatalf("partial = %q", b)
	}
	w, err = c.OpenPartial(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if w.Size() != 6 {
		t.Fatalf("resumed size %d", w.Size())
	}
	w.Write([]byte(data[6:]))
	if got, _, err := w.Commit(d, int64(len(data))); err != nil || got != d {
		t.Fatal(got, err)
	}
	if _, err := os.Stat(c.PartialPath(d)); !os.IsNotExist(err) {
		t.Errorf("partial still there: %v", err)
	}

	// Reset starts over; Abort deletes.
	d2 := digest.FromString("xyz")
	w, _ = c.OpenPartial(ctx, d2)
	w.Write([]byte("garbage"))
	if err := w.Reset(); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("xyz"))
	if w.Size() != 3 || w.Digest() != d2 {
		t.Fatalf("after reset: %d %s", w.Size(), w.Digest())
	}
	w.Abort()
	if _, err := os.Stat(c.PartialPath(d2)); !os.IsNotExist(err) {
		t.Errorf("partial after Abort: %v", err)
	}
	if _, err := c.OpenPartial(ctx, "md5:abc"); !errors.Is(err, ErrInvalidDigest) {
		t.Errorf("OpenPartial(bad) = %v", err)
	}
	if got := c.PartialPath(d); got != filepath.Join(c.Dir(), "tmp", "partial", d.Encoded()) {
		t.Errorf("PartialPath = %s", got)
	}
}

func TestRefs(t *testing.T) {
	c := newCache(t)
	d := digest.FromString("blob")
	if _, err := c.Ref("url", "https://x/y"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Ref(missing) = %v", err)
	}
	if err := c.SetRef("url", "https://x/y", d); err != nil {
		t.Fatal(err)
	}
	got, err := c.Ref("url", "https://x/y")
	if err != nil || got != d {
		t.Fatalf("Ref = %s, %v", got, err)
	}
	d2 := digest.FromString("blob2")
	if err := c.SetRef("url", "https://x/y", d2); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Ref("url", "https://x/y"); got != d2 {
		t.Fatalf("Ref after overwrite = %s", got)
	}
	// The file is debuggable: digest, then key.
	b, err := os.ReadFile(filepath.Join(c.Dir(), "refs", "url", keyHash("https://x/y")))
	if err != nil || string(b) != string(d2)+"\nhttps://x/y\n" {
		t.Fatalf("ref file %q %v", b, err)
	}
	if _, err := c.Ref("other", "https://x/y"); !errors.Is(err, ErrNotFound) {
		t.Errorf("kinds are not separate: %v", err)
	}
	for _, kind := range []string{"", "..", "a/b"} {
		if err := c.SetRef(kind, "k", d); err == nil {
			t.Errorf("SetRef(kind %q) succeeded", kind)
		}
	}
	if err := c.SetRef("url", "k", "sha256:nope"); !errors.Is(err, ErrInvalidDigest) {
		t.Errorf("SetRef(bad digest) = %v", err)
	}
	if got := entries(t, filepath.Join(c.Dir(), "tmp")); len(got) != 0 {
		t.Errorf("temp files left: %v", got)
	}
}

func TestClean(t *testing.T) {
	c := newCache(t)
	ctx := context.Background()
	old := time.Now().Add(-2 * time.Hour)
	stale := filepath.Join(c.Dir(), "tmp", "blob-stale")
	stalePartial := c.PartialPath(digest.FromString("p"))
	fresh := filepath.Join(c.Dir(), "tmp", "blob-fresh")
	for _, p := range []string{stale, stalePartial, stalePartial + ".meta", fresh} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{stale, stalePartial, stalePartial + ".meta"} {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	d := put(t, c, "keep me")
	if err := c.Clean(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{stale, stalePartial, stalePartial + ".meta"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s not cleaned", p)
		}
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temp removed: %v", err)
	}
	if !c.Has(d) {
		t.Error("Clean removed a blob")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Clean(cctx, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Clean(cancelled) = %v", err)
	}
}

func TestLockInProcess(t *testing.T) {
	c := newCache(t)
	ctx := context.Background()
	unlock, err := c.Lock(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	// A second lock on the same key waits and honors ctx.
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Lock(tctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Lock = %v", err)
	}
	if time.Since(start) > time.Second {
		t.Fatal("Lock did not honor ctx promptly")
	}
	// Other keys are independent.
	u2, err := c.Lock(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	u2()
	if err := unlock(); err != nil {
		t.Fatal(err)
	}
	if err := unlock(); err != nil { // idempotent
		t.Fatal(err)
	}
	u3, err := c.Lock(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	u3()

	// Goroutines are mutually excluded.
	var mu sync.Mutex
	inside, maxInside := 0, 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				u, err := c.Lock(ctx, "k")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				inside++
				maxInside = max(maxInside, inside)
				mu.Unlock()
				time.Sleep(100 * time.Microsecond)
				mu.Lock()
				inside--
				mu.Unlock()
				u()
			}
		})
	}
	wg.Wait()
	if maxInside != 1 {
		t.Fatalf("%d goroutines held the lock at once", maxInside)
	}
}

const counterIters = 40

// childCounter increments a counter file under the lock, with a read-sleep-write
// window that loses updates unless the lock excludes other processes.
func childCounter() int {
	c, err := Open(os.Getenv(envDir), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := bumpCounter(c, counterIters); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func bumpCounter(c *Cache, n int) error {
	path := filepath.Join(c.Dir(), "counter")
	for range n {
		unlock, err := c.Lock(context.Background(), "counter")
		if err != nil {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		v, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		time.Sleep(200 * time.Microsecond)
		if err := os.WriteFile(path, []byte(strconv.Itoa(v+1)), 0o644); err != nil {
			return err
		}
		if err := unlock(); err != nil {
			return err
		}
	}
	return nil
}

func childCmd(t *testing.T, mode, dir string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+mode, envDir+"="+dir)
	cmd.Stderr = os.Stderr
	return cmd
}

func TestLockCrossProcess(t *testing.T) {
	c := newCache(t)
	// The parent holds the lock: a child must not get it until it is released.
	unlock, err := c.Lock(context.Background(), "counter")
	if err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	for range 2 {
		cmd := childCmd(t, "counter", c.Dir())
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	time.Sleep(150 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(c.Dir(), "counter")); !os.IsNotExist(err) {
		t.Fatal("a child process entered the critical section while the parent held the lock")
	}
	unlock()
	if err := bumpCounter(c, counterIters); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
	}
	b, err := os.ReadFile(filepath.Join(c.Dir(), "counter"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(b)), strconv.Itoa(3*counterIters); got != want {
		t.Fatalf("counter = %s, want %s: updates were lost, the lock did not exclude processes", got, want)
	}
}

// childKill writes half a blob, reports readiness, and waits to be killed.
func childKill() int {
	c, err := Open(os.Getenv(envDir), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	w, err := c.NewWriter(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	w.Write([]byte("half of a blob that never gets committed"))
	fmt.Println("ready")
	time.Sleep(time.Minute)
	return 0
}

func TestKillSafety(t *testing.T) {
	c := newCache(t)
	cmd := childCmd(t, "kill", c.Dir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		t.Fatalf("child: %q %v", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if got := entries(t, filepath.Join(c.Dir(), "blobs", "sha256")); len(got) != 0 {
		t.Fatalf("killed writer left visible blobs: %v", got)
	}
	temps := entries(t, filepath.Join(c.Dir(), "tmp"))
	if len(temps) != 1 {
		t.Fatalf("temp files = %v, want the killed writer's one", temps)
	}
	if err := c.Clean(context.Background(), time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, filepath.Join(c.Dir(), "tmp")); len(got) != 1 {
		t.Fatalf("Clean removed a fresh temp: %v", got)
	}
	if err := c.Clean(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, filepath.Join(c.Dir(), "tmp")); len(got) != 0 {
		t.Fatalf("Clean left %v", got)
	}
}
