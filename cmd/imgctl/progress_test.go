package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/imgctl/imgctl/layers/fetch"
	"github.com/imgctl/imgctl/layers/progress"
	"github.com/imgctl/imgctl/layers/tarentry/tartest"
)

// fakeClock is a settable clock for the renderer.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// screen interprets what the live renderer writes (text, \n, \r, ESC[nA, ESC[J) the way a
// terminal would, so a test sees the lines on screen rather than escape sequences.
func screen(t *testing.T, out string) []string {
	t.Helper()
	lines := []string{""}
	row := 0
	esc := regexp.MustCompile(`^\x1b\[(\d*)([AJ])`)
	for i := 0; i < len(out); {
		switch c := out[i]; {
		case c == '\n':
			row++
			if row == len(lines) {
				lines = append(lines, "")
			}
			i++
		case c == '\r':
			i++ // the renderer only clears whole lines after \r
		case c == 0x1b:
			m := esc.FindStringSubmatch(out[i:])
			if m == nil {
				t.Fatalf("unexpected escape sequence %q", out[i:min(len(out), i+8)])
			}
			switch m[2] {
			case "A":
				n, _ := strconv.Atoi(m[1])
				if row -= n; row < 0 {
					t.Fatalf("cursor moved above the output: %q", out)
				}
			case "J":
				lines = append(lines[:row], "")
			}
			i += len(m[0])
		default:
			r, n := utf8.DecodeRuneInString(out[i:])
			lines[row] += string(r)
			i += n
		}
	}
	return lines[:len(lines)-1+min(1, len(lines[len(lines)-1]))]
}

func wantScreen(t *testing.T, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("screen:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestRendererTerminal(t *testing.T) {
	var out bytes.Buffer
	clock := &fakeClock{t: time.Unix(1000, 0)}
	r := newRenderer(&out, true, func() int { return 100 })
	r.now = clock.now

	r.event(progress.Event{Kind: progress.Started, ID: 1, Step: "mmdebstrap bookworm (minbase)"})
	clock.advance(1500 * time.Millisecond)
	r.tick()
	wantScreen(t, screen(t, out.String()), "  mmdebstrap bookworm (minbase)  1.5s")

	r.event(progress.Event{Kind: progress.Started, ID: 2, Step: "compress squashfs (zstd)"})
	r.event(progress.Event{Kind: progress.Updated, ID: 2, Step: "compress squashfs (zstd)", Bytes: 50 << 20, Total: 200 << 20, Entries: 1200})
	clock.advance(50 * time.Millisecond)
	before := out.Len()
	r.tick() // 50 ms after the last draw: at most ~10 redraws a second
	if out.Len() != before {
		t.Fatalf("redrawn 50 ms after the last draw: %q", out.String()[before:])
	}
	clock.advance(50 * time.Millisecond)
	r.tick()
	wantScreen(t, screen(t, out.String()),
		"  mmdebstrap bookworm (minbase)  1.6s",
		"  compress squashfs (zstd)  0.1s  50.0 MiB / 200.0 MiB  [#####               ]  25%  1200 entries")

	r.event(progress.Event{Kind: progress.Finished, ID: 1, Step: "mmdebstrap bookworm (minbase)", Elapsed: 12300 * time.Millisecond, Bytes: 118 << 20})
	long := "resolve " + strings.TrimSpace(strings.Repeat("very long name ", 10))
	r.event(progress.Event{Kind: progress.Started, ID: 3, Step: long})
	clock.advance(time.Second)
	r.tick()
	got := screen(t, out.String())
	wantScreen(t, got,
		"✓ mmdebstrap bookworm (minbase)  12.3s  118.0 MiB",
		"  compress squashfs (zstd)  1.1s  50.0 MiB / 200.0 MiB  [#####               ]  25%  1200 entries",
		"  resolve very long name very long name very long name very long name very long name very lo…  1.0s")
	for _, l := range got[1:] { // the live block
		if n := utf8.RuneCountInString(l); n >= 100 {
			t.Errorf("line of %d runes on a 100-column terminal (it would wrap): %q", n, l)
		}
	}

	r.event(progress.Event{Kind: progress.Finished, ID: 3, Step: long, Elapsed: 3 * time.Second, Err: errors.New("resolving deb://x: boom\nsecond line")})
	r.event(progress.Event{Kind: progress.Finished, ID: 2, Step: "compress squashfs (zstd)", Elapsed: 75 * time.Second, Bytes: 200 << 20, Total: 200 << 20, Entries: 4000})
	r.close()
	wantScreen(t, screen(t, out.String()),
		"✓ mmdebstrap bookworm (minbase)  12.3s  118.0 MiB",
		"✗ "+long+"  3.0s  resolving deb://x: boom", // finished lines are never redrawn: they may wrap
		"✓ compress squashfs (zstd)  1m15s  200.0 MiB  4000 entries")
}

func TestRendererLog(t *testing.T) {
	// Not a terminal: no escape codes, a line when a step has run 2 s and every 30 s after,
	// and one when it finishes.
	var out bytes.Buffer
	clock := &fakeClock{t: time.Unix(1000, 0)}
	r := newRenderer(&out, false, nil)
	r.now = clock.now
	r.event(progress.Event{Kind: progress.Started, ID: 1, Step: "mmdebstrap bookworm (minbase)"})
	r.event(progress.Event{Kind: progress.Started, ID: 2, Step: "convert kubelet"})
	r.event(progress.Event{Kind: progress.Finished, ID: 2, Step: "convert kubelet", Elapsed: 300 * time.Millisecond, Bytes: 3 << 20, Entries: 2})
	for range 20 { // 2 s in ticks
		clock.advance(100 * time.Millisecond)
		r.tick()
	}
	r.event(progress.Event{Kind: progress.Updated, ID: 1, Step: "mmdebstrap bookworm (minbase)", Bytes: 10 << 20})
	for range 300 {
		clock.advance(100 * time.Millisecond)
		r.tick()
	}
	r.event(progress.Event{Kind: progress.Finished, ID: 1, Step: "mmdebstrap bookworm (minbase)", Elapsed: 33 * time.Second, Bytes: 118 << 20})
	r.close()
	want := "✓ convert kubelet  0.3s  3.0 MiB  2 entries\n" +
		"… mmdebstrap bookworm (minbase)  2.0s\n" +
		"… mmdebstrap bookworm (minbase)  32.0s  10.0 MiB\n" +
		"✓ mmdebstrap bookworm (minbase)  33.0s  118.0 MiB\n"
	if out.String() != want {
		t.Fatalf("log:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestRendererDownloads(t *testing.T) {
	// Each download of the fetch client is a step; a failed one is marked so.
	var out bytes.Buffer
	r := newRenderer(&out, false, nil)
	r.download(fetch.Progress{URL: "https://dl.k8s.io/v1.21.13/bin/linux/amd64/kubelet", Complete: 1 << 20, Total: 120 << 20})
	r.download(fetch.Progress{URL: "https://h/debian/pool/runc.deb", Complete: 10, Total: -1})
	r.download(fetch.Progress{URL: "https://dl.k8s.io/v1.21.13/bin/linux/amd64/kubelet", Complete: 100 << 20, Total: 120 << 20, Done: true})
	r.download(fetch.Progress{URL: "https://h/debian/pool/runc.deb", Complete: 20, Total: -1, Done: true, Err: errors.New("digest mismatch")})
	r.close()
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "✓ download kubelet  ") || !strings.HasSuffix(lines[0], "s  100.0 MiB") ||
		!strings.HasPrefix(lines[1], "✗ download runc.deb  ") || !strings.HasSuffix(lines[1], "s  digest mismatch") {
		t.Fatalf("log:\n%s", out.String())
	}
}

// A log line written while the live block is on screen goes above it, not through it.
func TestRendererLogLinesAboveLiveBlock(t *testing.T) {
	var out bytes.Buffer
	clock := &fakeClock{t: time.Unix(1000, 0)}
	r := newRenderer(&out, true, func() int { return 80 })
	r.now = clock.now
	r.event(progress.Event{Kind: progress.Started, ID: 1, Step: "compose rootfs"})
	clock.advance(time.Second)
	r.tick()
	fmt.Fprintln(r.logWriter(), "level=WARN msg=surprise")
	clock.advance(time.Second)
	r.tick()
	wantScreen(t, screen(t, out.String()), "level=WARN msg=surprise", "  compose rootfs  2.0s")
	r.close()
	wantScreen(t, screen(t, out.String()), "level=WARN msg=surprise")
}

// build and layers inspect with stderr not a terminal (a CI log) print a line per finished
// phase, without escape codes; -q prints none.
func TestPhaseLinesInLogs(t *testing.T) {
	dir := t.TempDir()
	tarPath := filepath.Join(dir, "extras.tar")
	if err := os.WriteFile(tarPath, tartest.Tar(t, "etc/", "etc/motd"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := run(t, dir, "layers", "inspect", "file://"+tarPath)
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, stderr)
	}
	if !regexp.MustCompile(`(?m)^✓ convert extras\.tar  [0-9.]+s  [0-9.]+ KiB  2 entries$`).MatchString(stderr) {
		t.Errorf("inspect stderr lacks the convert phase line:\n%s", stderr)
	}

	specPath := writeSpec(t, dir, "file://"+tarPath)
	_, stderr, err = run(t, dir, "build", "-f", specPath, "--lock", filepath.Join(dir, "imgctl.lock"), "--target", "rootfs")
	if err != nil {
		t.Fatalf("build: %v\n%s", err, stderr)
	}
	for _, l := range []string{"✓ resolve 1 source  ", "✓ fetch and convert 1 source  ", "✓ compose layer extra  ", "✓ compose rootfs  "} {
		if !strings.Contains(stderr, "\n"+l) && !strings.HasPrefix(stderr, l) {
			t.Errorf("build stderr lacks %q:\n%s", l, stderr)
		}
	}
	if strings.Contains(stderr, "\x1b") {
		t.Errorf("escape codes in a log:\n%q", stderr)
	}
	_, stderr, err = run(t, dir, "-q", "build", "-f", specPath, "--lock", filepath.Join(dir, "imgctl.lock"), "--target", "rootfs", "--update-lock")
	if err != nil || strings.Contains(stderr, "✓") {
		t.Errorf("-q build (%v) printed phases:\n%s", err, stderr)
	}
}

// TestRendererLogEvery: a command that uploads (publish ami) asks for a line every few seconds
// in a log, so CI shows an upload moving.
func TestRendererLogEvery(t *testing.T) {
	var out bytes.Buffer
	clock := &fakeClock{t: time.Unix(1000, 0)}
	r := newRenderer(&out, false, nil)
	r.repeat = uploadLineEvery
	r.now = clock.now
	r.event(progress.Event{Kind: progress.Started, ID: 1, Step: "upload snapshot us-east-1", Total: 120 << 20})
	for i := range 120 { // 12 s in ticks
		clock.advance(100 * time.Millisecond)
		r.event(progress.Event{Kind: progress.Updated, ID: 1, Step: "upload snapshot us-east-1", Total: 120 << 20, Bytes: int64(i+1) << 20})
		r.tick()
	}
	r.close()
	want := "… upload snapshot us-east-1  2.0s  20.0 MiB / 120.0 MiB  16%\n" +
		"… upload snapshot us-east-1  7.0s  70.0 MiB / 120.0 MiB  58%\n" +
		"… upload snapshot us-east-1  12.0s  120.0 MiB / 120.0 MiB  100%\n"
	if out.String() != want {
		t.Fatalf("log:\n%s\nwant:\n%s", out.String(), want)
	}
}
