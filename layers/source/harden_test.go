package source

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/fetch"
)

// Values that would reach a program as arguments are checked where the URI is parsed: a value
// read as an option (a leading "-"), a path where a name belongs, or anything outside what
// Debian allows for the field is refused, and the error names the field and what it expects.
func TestParseRefusesArgumentValues(t *testing.T) {
	for _, tc := range []struct{ raw, err string }{
		{"mmdebstrap://bookworm?mirror=--setup-hook=touch%20/tmp/PWNED", `mirror "--setup-hook=touch /tmp/PWNED": expected an http://, https:// or file:/// URL`},
		{"mmdebstrap://bookworm?mirror=-v", `mirror "-v": expected`},
		{"mmdebstrap://bookworm?mirror=ftp://h/debian", `mirror "ftp://h/debian": expected an http://, https:// or file:/// URL`},
		{"mmdebstrap://bookworm?mirror=http:///debian", `mirror "http:///debian": expected`},
		{"mmdebstrap://bookworm?mirror=http://h/debian%20bookworm%20main", `mirror "http://h/debian bookworm main": expected`},
		{"mmdebstrap://bookworm?mirror=file:debian", `mirror "file:debian": expected`},
		{"mmdebstrap://bookworm?mirror=/srv/debian", `mirror "/srv/debian": expected`},
		{"mmdebstrap://bookworm?mirror=https://h/debian&packages=--hook-dir=/tmp", `package "--hook-dir=/tmp": expected a Debian package name`},
		{"mmdebstrap://bookworm?mirror=https://h/debian&packages=udev,/tmp/evil.deb", `package "/tmp/evil.deb": expected a Debian package name`},
		{"mmdebstrap://bookworm?mirror=https://h/debian&packages=Udev", `package "Udev": expected a Debian package name`},
		{"mmdebstrap://bookworm?mirror=https://h/debian&packages=a", `package "a": expected a Debian package name`},
		{"mmdebstrap://bookworm?mirror=https://h/debian&packages=?essential", `package "?essential": expected a Debian package name`},
		{"mmdebstrap://bookworm?mirror=https://h/debian&variant=--setup-hook=id", `variant "--setup-hook=id": expected one of`},
		{"mmdebstrap://-bookworm?mirror=https://h/debian", `suite "-bookworm": expected a Debian suite or codename`},
		{"mmdebstrap://book%20worm?mirror=https://h/debian", "source \"mmdebstrap://book%20worm?mirror=https://h/debian\": "},
		{"deb://h/debian?suite=../../etc&package=runc", `suite "../../etc": expected a Debian suite or codename`},
		{"deb://h/debian?suite=bookworm&package=-runc", `package "-runc": expected a Debian package name`},
		{"deb://h/debian?suite=bookworm&package=runc=-1", `version "-1": expected a Debian version`},
		{"deb://h/debian?suite=bookworm&package=runc&component=../x", `component "../x": expected a Debian archive component`},
		{"deb://h/debian?suite=bookworm&package=runc&arch=amd64/../x", `arch "amd64/../x": expected a Debian architecture`},
		{"deb://h/debian?suite=bookworm&package=linux-image-cloud-amd64&follow=-x", `follow "-x": expected the start of a Debian package name`},
	} {
		_, err := Parse(tc.raw)
		if err == nil {
			t.Errorf("Parse(%q) accepted it, want an error containing %q", tc.raw, tc.err)
			continue
		}
		if !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "source "+strconvQuote(tc.raw)+": ") {
			t.Errorf("Parse(%q) = %v, want the URI and %q", tc.raw, err, tc.err)
		}
	}
	for _, ok := range []string{
		"mmdebstrap://bookworm?mirror=https://deb.debian.org/debian&variant=minbase&packages=systemd-sysv,udev,dbus,kmod,iproute2,ca-certificates,libstdc++6,g++-12",
		"mmdebstrap://bookworm-backports?mirror=http://127.0.0.1:8080/debian",
		"mmdebstrap://stable?mirror=file:///srv/mirror/debian&variant=apt",
		"mmdebstrap://bookworm?mirror=https://snapshot.debian.org/archive/debian/20240101T000000Z",
		"deb://deb.debian.org/debian?suite=bookworm&package=containerd=1.6.20~ds1-1+b1",
		"deb://deb.debian.org/debian?suite=bookworm&package=linux-image-cloud-amd64&follow=linux-image-",
		"deb://deb.debian.org/debian?suite=bookworm&package=x11-common=1:7.7+23&component=non-free-firmware",
		"deb://security.debian.org/debian-security?suite=bookworm-security&package=openssl&component=updates/main",
	} {
		if _, err := Parse(ok); err != nil {
			t.Errorf("Parse(%q): %v", ok, err)
		}
	}
}

func strconvQuote(s string) string { return `"` + s + `"` }

// fakeMmdebstrap puts testdata/mmdebstrap first on PATH. It returns the file its argv is
// recorded in; the tar it produces holds one directory.
func fakeMmdebstrap(t *testing.T) (argv string) {
	t.Helper()
	bin := t.TempDir()
	script, err := os.ReadFile("testdata/mmdebstrap")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "mmdebstrap"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.Close()
	tarPath := filepath.Join(bin, "base.tar")
	if err := os.WriteFile(tarPath, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	argv = filepath.Join(bin, "argv")
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("FAKE_MMDEBSTRAP_ARGV", argv)
	t.Setenv("FAKE_MMDEBSTRAP_TAR", tarPath)
	return argv
}

func testEnv(t *testing.T) *Env {
	t.Helper()
	ca, err := cache.Open(filepath.Join(t.TempDir(), "cache"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Cache: ca, Fetch: &fetch.Client{}, MTime: time.Unix(1700000000, 0)}
}

// The reported injection: a mirror value that mmdebstrap would read as --setup-hook. The URI is
// refused, and a URI value built without Parse is refused before mmdebstrap runs: no hook runs.
func TestMmdebstrapInjectionRunsNoHook(t *testing.T) {
	argv := fakeMmdebstrap(t)
	marker := filepath.Join(t.TempDir(), "PWNED")
	raw := "mmdebstrap://bookworm?mirror=--setup-hook=touch%20" + marker
	_, err := Parse(raw)
	if err == nil || !strings.Contains(err.Error(), `mirror "--setup-hook=touch `+marker+`": expected an http://, https:// or file:/// URL`) {
		t.Errorf("Parse(%q) = %v, want the mirror refused", raw, err)
	}

	env := testEnv(t)
	for _, u := range []URI{
		{Raw: raw, Kind: KindMmdebstrap, Suite: "bookworm", Location: "--setup-hook=touch " + marker, Variant: "minbase"},
		{Raw: raw, Kind: KindMmdebstrap, Suite: "--setup-hook=touch " + marker, Location: "https://h/debian", Variant: "minbase"},
		{Raw: raw, Kind: KindMmdebstrap, Suite: "bookworm", Location: "https://h/debian", Variant: "minbase", Packages: []string{"--setup-hook=touch " + marker}},
	} {
		if _, err := env.Resolve(context.Background(), u, nil); err == nil || !strings.Contains(err.Error(), "expected") {
			t.Errorf("Resolve(%+v) = %v, want a validation error", u, err)
		}
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the hook ran: %s exists (%v)", marker, err)
	}
	if _, err := os.Stat(argv); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mmdebstrap was run although the URI is invalid (%v)", err)
	}
}

// Options end with "--": the suite, the output and the mirror are positionals whatever they hold.
func TestMmdebstrapEndsOptions(t *testing.T) {
	argv := fakeMmdebstrap(t)
	env := testEnv(t)
	u, err := Parse("mmdebstrap://bookworm?mirror=https://h/debian&packages=udev,kmod")
	if err != nil {
		t.Fatal(err)
	}
	pin, err := env.Resolve(context.Background(), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(argv)
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	want := []string{"--variant=minbase", "--format=tar", "--quiet", "--include=udev,kmod", "--", "bookworm", "OUT", "https://h/debian"}
	if len(args) == len(want) {
		args[6] = "OUT" // a temp file
	}
	if strings.Join(args, "\n") != strings.Join(want, "\n") {
		t.Errorf("mmdebstrap argv:\n%q\nwant:\n%q", args, want)
	}
	if _, err := env.Materialize(context.Background(), u, pin); err != nil {
		t.Fatal(err)
	}
}

// Cancelling while mmdebstrap runs ends it and whatever it started: a child holding its
// output open (apt, a hook) neither keeps Resolve waiting nor outlives it.
func TestMmdebstrapCancel(t *testing.T) {
	argv := fakeMmdebstrap(t)
	t.Setenv("FAKE_MMDEBSTRAP_SLEEP", "60")
	env := testEnv(t)
	u, err := Parse("mmdebstrap://bookworm?mirror=https://h/debian")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := env.Resolve(ctx, u, nil); done <- err }()
	child := waitChild(t, argv+".child")
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Resolve after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Resolve still waits for mmdebstrap's child 5s after the context was cancelled")
	}
	if alive(child, 2*time.Second) {
		t.Errorf("mmdebstrap's child %d outlived the cancelled Resolve", child)
	}
}

// waitChild waits for the fake mmdebstrap to write its child's pid to file.
func waitChild(t *testing.T, file string) int {
	t.Helper()
	for range 500 {
		if b, err := os.ReadFile(file); err == nil && strings.HasSuffix(string(b), "\n") {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			return pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the fake mmdebstrap did not start its child")
	return 0
}

// alive reports whether pid still runs (not gone, not a zombie) after waiting up to d.
func alive(pid int, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return false
		}
		if _, rest, ok := strings.Cut(string(b), ") "); ok && strings.HasPrefix(rest, "Z") {
			return false
		}
	}
	return true
}

// Only regular files and directories are sources: a FIFO would block in open (and then
// never end), a device such as /dev/zero reads forever. They are refused at once, by type.
func TestLocalSourceRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "x.tar")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.tar")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s.deb")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fifoDir := filepath.Join(dir, "fifodir")
	if err := syscall.Mkfifo(fifoDir, 0o644); err != nil {
		t.Fatal(err)
	}
	pin := Pin{Digest: digest.FromString("")}
	env := testEnv(t)
	for _, tc := range []struct{ raw, err string }{
		{"file://" + fifo, fifo + ": a named pipe (FIFO), expected a regular file"},
		{"file://" + zero, zero + ": a character device, expected a regular file"},
		{"file:///dev/zero#path=/usr/bin/x", "/dev/zero: a character device, expected a regular file"},
		{"file:///dev/null#path=/usr/bin/x", "/dev/null: a character device, expected a regular file"},
		{"file://" + sock, sock + ": a socket, expected a regular file"},
		{"file://" + fifoDir + "/", fifoDir + ": a named pipe (FIFO), expected a directory"},
	} {
		u, err := Parse(tc.raw)
		if err != nil {
			t.Fatal(err)
		}
		for _, step := range []struct {
			name string
			run  func(context.Context) error
		}{
			{"Resolve", func(ctx context.Context) error { _, err := env.Resolve(ctx, u, nil); return err }},
			{"Materialize", func(ctx context.Context) error { _, err := env.Materialize(ctx, u, pin); return err }},
		} {
			done := make(chan error, 1)
			go func() { done <- step.run(context.Background()) }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("%s(%s) = %v, want %q", step.name, tc.raw, err, tc.err)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("%s(%s) still blocks after 5s", step.name, tc.raw)
			}
		}
	}
}

// In a directory source, a FIFO or device is refused by name and type without being opened,
// and a symlink to one is kept as a symlink (never followed).
func TestDirSourceSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/motd"), []byte("hi\n"), 0o644)
	os.Symlink("/dev/zero", filepath.Join(root, "etc/zero"))
	env := testEnv(t)
	u, err := Parse("file://" + root + "/")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := env.Materialize(context.Background(), u, Pin{})
	if err != nil {
		t.Fatal(err)
	}
	if tr.Entries != 3 {
		t.Errorf("entries = %d, want 3 (etc, etc/motd, etc/zero as a symlink)", tr.Entries)
	}
	fifo := filepath.Join(root, "etc/pipe")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := env.Materialize(context.Background(), u, Pin{}); done <- err }()
	select {
	case err := <-done:
		if want := fifo + ": a named pipe (FIFO), expected a regular file, directory or symlink"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Materialize = %v, want %q", err, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Materialize blocks on a FIFO in a directory source")
	}
}

// An OCI layout whose blob or index is a FIFO is refused by type, not read.
func TestOCILayoutRefusesSpecialFiles(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	for _, special := range []string{"blobs/sha256/" + hex, "index.json"} {
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755)
		os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
		os.WriteFile(filepath.Join(dir, "index.json"), []byte(`{"schemaVersion":2,"manifests":[]}`), 0o644)
		p := filepath.Join(dir, special)
		os.Remove(p)
		if err := syscall.Mkfifo(p, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, raw := range []string{"oci-layout://" + dir + "@sha256:" + hex, "oci-layout://" + dir + "@sha256:" + hex + "#image=/x.tar&name=r.io/x:1"} {
			u, err := Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			env := testEnv(t)
			done := make(chan error, 1)
			go func() {
				_, err := env.Materialize(context.Background(), u, Pin{URI: raw, Digest: u.Digest})
				done <- err
			}()
			select {
			case err := <-done:
				if want := p + ": a named pipe (FIFO), expected a regular file"; err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Materialize(%s) = %v, want %q", raw, err, want)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("Materialize(%s) blocks on the FIFO %s", raw, special)
			}
		}
	}
}
