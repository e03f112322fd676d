package rootmark

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func mkfile(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestWriteReadCheckMounted(t *testing.T) {
	root := t.TempDir()
	if _, err := Read(root); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Read without a marker: %v, want ErrNotExist", err)
	}
	if err := os.MkdirAll(filepath.Join(root, "run/imgctl/lower"), 0o755); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		t.Fatal(err)
	}
	m := Marker{RootHash: strings.Repeat("ab", 32), Blocks: 9, Name: "imgctl-root",
		Major: unix.Major(st.Dev), Minor: unix.Minor(st.Dev), Lower: "/run/imgctl/lower",
		Uppers: []Upper{{At: "/", Dir: "/run/imgctl/rw/upper"}}}
	if err := Write(root, m); err != nil {
		t.Fatal(err)
	}
	got, err := Read(root)
	if err != nil {
		t.Fatal(err)
	}
	if got.RootHash != m.RootHash || got.Blocks != 9 || len(got.Uppers) != 1 || got.Uppers[0] != m.Uppers[0] {
		t.Errorf("Read: %+v, want %+v", got, m)
	}
	if err := got.CheckMounted(root); err != nil {
		t.Errorf("CheckMounted: %v", err)
	}
	got.Minor++
	if err := got.CheckMounted(root); err == nil || !strings.Contains(err.Error(), "not the verity device imgctl-root") {
		t.Errorf("CheckMounted on another device: %v", err)
	}
	mkfile(t, filepath.Join(root, Path))
	if _, err := Read(root); err == nil || !strings.Contains(err.Error(), Path) {
		t.Errorf("Read of a corrupt marker: %v, want an error naming %s", err, Path)
	}
}

func TestFromLower(t *testing.T) {
	root := t.TempDir()
	m := Marker{Uppers: []Upper{{At: "/", Dir: "/up"}, {At: "/var", Dir: "/state/var/upper"}}}
	mkfile(t, filepath.Join(root, "up/usr/bin/changed"))
	mkfile(t, filepath.Join(root, "up/opt/x"))                 // /opt replaced by a file below
	mkfile(t, filepath.Join(root, "state/var/upper/lib/tool")) // persistent upper
	if err := os.MkdirAll(filepath.Join(root, "up/etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/tmp", filepath.Join(root, "up/srv")); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{
		"/usr/bin/kubelet": true,  // the upper has /usr/bin but not the file
		"/usr/bin/changed": false, // the upper has the file
		"/etc/kubernetes":  true,
		"/srv/bin/x":       false, // /srv is a symlink in the upper
		"/opt/x/y":         false, // /opt/x is a file in the upper
		"/var/lib/tool":    false, // on STATE
		"/var/lib/other":   true,
	} {
		if got := m.FromLower(root, p); got != want {
			t.Errorf("FromLower(%s) = %v, want %v", p, got, want)
		}
	}
}
