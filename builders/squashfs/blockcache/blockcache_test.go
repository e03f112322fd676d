package blockcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func key(s string) [32]byte { return sha256.Sum256([]byte(s)) }

func value(s string, n int) []byte {
	return bytes.Repeat([]byte(s), n)[:n]
}

func open(t testing.TB, dir string, opts Options) *Cache {
	t.Helper()
	c, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustClose(t testing.TB, c *Cache) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func packs(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "packs", "*.pack"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range m {
		m[i] = filepath.Base(m[i])
	}
	return m
}

func wantGet(t testing.TB, c *Cache, k string, want []byte) {
	t.Helper()
	got, ok := c.Get(key(k), []byte("prefix"))
	if !ok || !bytes.Equal(got, append([]byte("prefix"), want...)) {
		t.Fatalf("Get(%s) = %d bytes, %v; want %d bytes", k, len(got), ok, len(want)+6)
	}
}

func wantMiss(t testing.TB, c *Cache, k string) {
	t.Helper()
	if got, ok := c.Get(key(k), nil); ok {
		t.Fatalf("Get(%s) hit %d bytes, want a miss", k, len(got))
	}
}

func TestPutGet(t *testing.T) {
	dir := t.TempDir()
	vals := map[string][]byte{"a": value("a", 100), "b": value("bc", 70000), "empty": {}, "max": value("m", MaxValue)}
	c := open(t, dir, Options{})
	wantMiss(t, c, "a")
	for k, v := range vals {
		c.Put(key(k), v)
	}
	c.Put(key("huge"), value("h", MaxValue+1))
	c.Put(key("a"), value("other", 10)) // has a value: ignored
	for k, v := range vals {
		wantGet(t, c, k, v) // from this build's pack
	}
	wantMiss(t, c, "huge")
	if st := c.Stats(); st.Puts != 4 || st.Hits != 4 || st.Misses != 2 {
		t.Errorf("stats %+v", st)
	}
	mustClose(t, c)
	if n := len(packs(t, dir)); n != 1 {
		t.Fatalf("%d packs, want 1", n)
	}

	c = open(t, dir, Options{})
	for k, v := range vals {
		wantGet(t, c, k, v)
	}
	wantMiss(t, c, "huge")
	if st := c.Stats(); st.Packs != 1 || st.Values != 4 {
		t.Errorf("stats %+v", st)
	}
	mustClose(t, c) // nothing new: no pack
	if n := len(packs(t, dir)); n != 1 {
		t.Fatalf("%d packs, want 1", n)
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Errorf("temp files left: %v", tmp)
	}
}

func TestDiscard(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	c.Put(key("a"), value("a", 10))
	c.Discard()
	c.Discard()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if p := packs(t, dir); len(p) != 0 {
		t.Fatalf("packs after Discard: %v", p)
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Errorf("temp files left: %v", tmp)
	}
}

// logBuffer collects warnings.
func logBuffer() (*slog.Logger, *bytes.Buffer) {
	var b bytes.Buffer
	return slog.New(slog.NewTextHandler(&b, nil)), &b
}

func TestCorruptValue(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{KeepBuilds: 2})
	c.Put(key("a"), value("a", 1000))
	c.Put(key("b"), value("b", 1000))
	mustClose(t, c)
	old := packs(t, dir)[0]
	p := filepath.Join(dir, "packs", old)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, value("a", 1000))
	b[i+500] ^= 1
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}

	log, logged := logBuffer()
	c = open(t, dir, Options{KeepBuilds: 2, Logger: log})
	wantMiss(t, c, "a")
	wantMiss(t, c, "a") // dropped from the index: not read again
	wantGet(t, c, "b", value("b", 1000))
	if st := c.Stats(); st.Corrupt != 1 || st.Hits != 1 {
		t.Errorf("stats %+v", st)
	}
	if !strings.Contains(logged.String(), "corrupt value") {
		t.Errorf("no warning logged: %q", logged)
	}
	c.Put(key("a"), value("a", 1000)) // the writer compressed it again
	c.Put(key("c"), value("c", 1000))
	mustClose(t, c)
	if st := c.Stats(); st.Copied != 1 {
		t.Errorf("the good value used from the damaged pack was not copied: %+v", st)
	}

	// The new pack is newer: both values are read from it. The damaged pack was not counted
	// as used and goes.
	c = open(t, dir, Options{KeepBuilds: 2})
	wantGet(t, c, "a", value("a", 1000))
	wantGet(t, c, "b", value("b", 1000))
	if st := c.Stats(); st.Corrupt != 0 {
		t.Errorf("stats %+v", st)
	}
	mustClose(t, c)
	if slicesContains(packs(t, dir), old) {
		t.Errorf("the corrupt pack survived %d builds without use: %v", 2, packs(t, dir))
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestCorruptPack(t *testing.T) {
	for name, damage := range map[string]func([]byte) []byte{
		"truncated":   func(b []byte) []byte { return b[:len(b)-1] },
		"empty":       func([]byte) []byte { return nil },
		"index":       func(b []byte) []byte { b[len(b)-trailerSize-5] ^= 1; return b },
		"trailer":     func(b []byte) []byte { b[len(b)-trailerSize] ^= 1; return b },
		"magic":       func(b []byte) []byte { b[0] = 'X'; return b },
		"garbage":     func([]byte) []byte { return value("garbage", 4096) },
		"appended":    func(b []byte) []byte { return append(b, 0) },
		"short magic": func([]byte) []byte { return []byte(magic) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			c := open(t, dir, Options{})
			c.Put(key("a"), value("a", 1000))
			mustClose(t, c)
			p := filepath.Join(dir, "packs", packs(t, dir)[0])
			b, _ := os.ReadFile(p)
			_ = os.Chmod(p, 0o644)
			if err := os.WriteFile(p, damage(b), 0o644); err != nil {
				t.Fatal(err)
			}
			log, logged := logBuffer()
			c = open(t, dir, Options{Logger: log})
			wantMiss(t, c, "a")
			if !strings.Contains(logged.String(), "unreadable pack") {
				t.Errorf("no warning: %q", logged)
			}
			mustClose(t, c)
			if p := packs(t, dir); len(p) != 0 {
				t.Errorf("corrupt pack not removed: %v", p)
			}
		})
	}
}

// build runs one build that uses the given keys (Get) and adds the others (Put).
func build(t testing.TB, dir string, opts Options, get []string, put map[string][]byte) Stats {
	t.Helper()
	c := open(t, dir, opts)
	for _, k := range get {
		if _, ok := c.Get(key(k), nil); !ok {
			t.Fatalf("miss on %s", k)
		}
	}
	for k, v := range put {
		c.Put(key(k), v)
	}
	mustClose(t, c)
	return c.Stats()
}

func TestGCKeepBuilds(t *testing.T) {
	dir := t.TempDir()
	o := Options{KeepBuilds: 3}
	build(t, dir, o, nil, map[string][]byte{"a": value("a", 100)}) // build 1: pack A
	pa := packs(t, dir)
	build(t, dir, o, nil, map[string][]byte{"b": value("b", 100)}) // 2: pack B
	build(t, dir, o, []string{"a"}, nil)                           // 3: uses A
	build(t, dir, o, nil, nil)                                     // 4
	build(t, dir, o, nil, nil)                                     // 5: B (last used by 2) goes
	got := packs(t, dir)
	if len(got) != 1 || got[0] != pa[0] {
		t.Fatalf("packs %v, want only A %v", got, pa)
	}
	st := build(t, dir, o, nil, nil) // 6: A (last used by 3) goes
	if p := packs(t, dir); len(p) != 0 || st.Removed != 1 {
		t.Fatalf("packs %v, removed %d", p, st.Removed)
	}
}

func TestGCMaxBytes(t *testing.T) {
	dir := t.TempDir()
	o := Options{MaxBytes: 25000}
	build(t, dir, o, nil, map[string][]byte{"a": value("a", 10000)})
	build(t, dir, o, nil, map[string][]byte{"b": value("b", 10000)})
	build(t, dir, o, []string{"a"}, nil) // a is more recent than b now
	st := build(t, dir, o, nil, map[string][]byte{"c": value("c", 10000)})
	if st.Removed != 1 {
		t.Fatalf("removed %d packs, want 1", st.Removed)
	}
	c := open(t, dir, o)
	defer c.Discard()
	wantGet(t, c, "a", value("a", 10000))
	wantGet(t, c, "c", value("c", 10000))
	wantMiss(t, c, "b")

	// A single pack larger than the bound is kept (until the next build's pack).
	build(t, t.TempDir(), Options{MaxBytes: 100}, nil, map[string][]byte{"big": value("x", 1000)})
}

func TestCompaction(t *testing.T) {
	dir := t.TempDir()
	o := Options{KeepBuilds: 2}
	put := map[string][]byte{}
	for i := range 8 {
		put[fmt.Sprint(i)] = value(fmt.Sprint(i), 1000)
	}
	build(t, dir, o, nil, put)
	old := packs(t, dir)[0]
	// Using 1/8 of the pack: the value is copied, the old pack is not counted as used.
	st := build(t, dir, o, []string{"3"}, nil)
	if st.Copied != 1 || st.Puts != 0 {
		t.Fatalf("stats %+v", st)
	}
	build(t, dir, o, []string{"3"}, nil) // now from the new pack
	p := packs(t, dir)
	if len(p) != 1 || p[0] == old {
		t.Fatalf("packs %v (old %s)", p, old)
	}
	c := open(t, dir, o)
	defer c.Discard()
	wantGet(t, c, "3", value("3", 1000))
	wantMiss(t, c, "4")

	// Using half of a pack keeps it.
	dir = t.TempDir()
	build(t, dir, o, nil, put)
	st = build(t, dir, o, []string{"0", "1", "2", "3"}, nil)
	if st.Copied != 0 || len(packs(t, dir)) != 1 {
		t.Fatalf("stats %+v, packs %v", st, packs(t, dir))
	}
}

func TestStaleTemp(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	stale, fresh := filepath.Join(dir, "tmp", "pack-stale"), filepath.Join(dir, "tmp", "pack-fresh")
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	mustClose(t, c)
	if _, err := os.Stat(stale); err == nil {
		t.Error("stale temp pack not removed")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Error("fresh temp pack removed (a build may be writing it)")
	}
}

func TestDamagedState(t *testing.T) {
	dir := t.TempDir()
	build(t, dir, Options{}, nil, map[string][]byte{"a": value("a", 10)})
	if err := os.WriteFile(filepath.Join(dir, "state"), []byte("nonsense\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	build(t, dir, Options{}, []string{"a"}, nil)
	b, _ := os.ReadFile(filepath.Join(dir, "state"))
	if !strings.HasPrefix(string(b), "gen 1\n") {
		t.Errorf("state %q", b)
	}
}

// Workers share one Cache; run with -race.
func TestConcurrentGoroutines(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, Options{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, 4096)
			for i := range 200 {
				k := fmt.Sprint((i * (w + 1)) % 300)
				if v, ok := c.Get(key(k), buf[:0]); ok {
					if !bytes.Equal(v, value(k, 3000)) {
						t.Errorf("value of %s differs", k)
					}
					continue
				}
				c.Put(key(k), value(k, 3000))
			}
		}()
	}
	wg.Wait()
	mustClose(t, c)
	c = open(t, dir, Options{})
	defer c.Discard()
	if st := c.Stats(); st.Values == 0 {
		t.Fatal("nothing kept")
	}
}

// Two builds at once, in one process and in two: each keeps its own pack and both packs'
// values are there afterwards.
func TestConcurrentBuilds(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	for b := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Open(dir, Options{})
			if err != nil {
				t.Error(err)
				return
			}
			for i := range 100 {
				k := fmt.Sprintf("k%d", i+b*50) // 50..99 in both
				c.Put(key(k), value(k, 2000))
			}
			if err := c.Close(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	checkAll(t, dir, 150)
}

func checkAll(t *testing.T, dir string, n int) {
	t.Helper()
	c := open(t, dir, Options{})
	defer c.Discard()
	for i := range n {
		k := fmt.Sprintf("k%d", i)
		wantGet(t, c, k, value(k, 2000))
	}
}

func TestConcurrentProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const procs, rounds = 4, 5
	cmds := make([]*exec.Cmd, procs)
	outs := make([]bytes.Buffer, procs)
	for p := range procs {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), "BLOCKCACHE_HELPER_DIR="+dir, "BLOCKCACHE_HELPER_ID="+strconv.Itoa(p),
			"BLOCKCACHE_HELPER_ROUNDS="+strconv.Itoa(rounds))
		cmd.Stdout, cmd.Stderr = &outs[p], &outs[p]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[p] = cmd
	}
	for p, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper %d: %v\n%s", p, err, outs[p].String())
		}
	}
	checkAll(t, dir, procs*rounds*20)
	if n := len(packs(t, dir)); n != procs*rounds {
		t.Errorf("%d packs, want %d", n, procs*rounds)
	}
}

// TestHelperProcess is a build in another process for TestConcurrentProcesses.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv("BLOCKCACHE_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process")
	}
	id, _ := strconv.Atoi(os.Getenv("BLOCKCACHE_HELPER_ID"))
	rounds, _ := strconv.Atoi(os.Getenv("BLOCKCACHE_HELPER_ROUNDS"))
	for r := range rounds {
		c := open(t, dir, Options{KeepBuilds: 100})
		// Every process reads what the others committed and adds 20 values (10 its own,
		// 10 shared with the next process).
		for i := range 20 {
			k := fmt.Sprintf("k%d", ((id*rounds+r)*20+i+10)%(4*rounds*20))
			if v, ok := c.Get(key(k), nil); ok {
				if !bytes.Equal(v, value(k, 2000)) {
					t.Fatalf("value of %s differs", k)
				}
				continue
			}
			c.Put(key(k), value(k, 2000))
		}
		for i := range 20 {
			k := fmt.Sprintf("k%d", (id*rounds+r)*20+i)
			c.Put(key(k), value(k, 2000))
		}
		mustClose(t, c)
	}
}
