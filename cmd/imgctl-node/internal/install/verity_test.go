package install

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/rootmark"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
)

// verityMarker writes the init's marker for a verity root mounted at /run/imgctl/lower of the
// fixture (the temporary directory's device stands in for the dm device); dev edits it.
func (f *fixture) verityMarker(edit func(*rootmark.Marker)) {
	f.t.Helper()
	f.write("/run/imgctl/lower/.keep", "", 0o644)
	f.write("/run/imgctl/rw/upper/.keep", "", 0o644)
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(f.root, "/run/imgctl/lower"), &st); err != nil {
		f.t.Fatal(err)
	}
	m := rootmark.Marker{RootHash: strings.Repeat("ab", 32), Blocks: 100, Name: "imgctl-root",
		Major: unix.Major(st.Dev), Minor: unix.Minor(st.Dev), Lower: "/run/imgctl/lower",
		Uppers: []rootmark.Upper{{At: "/", Dir: "/run/imgctl/rw/upper"}, {At: "/var", Dir: "/run/imgctl/state/var/upper"}}}
	if edit != nil {
		edit(&m)
	}
	if err := rootmark.Write(f.root, m); err != nil {
		f.t.Fatal(err)
	}
}

func verifyLine(t *testing.T, lines []stepLine) stepLine {
	t.Helper()
	for _, l := range lines {
		if l.step == StepVerifyBinaries {
			return l
		}
	}
	t.Fatalf("no %s line in %+v", StepVerifyBinaries, lines)
	return stepLine{}
}

// On a verity root, the binaries in it are not hashed again: verity verifies every block the
// kernel reads. The proof that nothing is hashed: a binary whose bytes differ from the
// manifest passes (on a real node verity would fail its read instead).
func TestVerifyBinariesSkippedOnVerityRoot(t *testing.T) {
	f := newFixture(t)
	f.write("/usr/bin/kubelet", "different bytes, never hashed", 0o755)
	f.verityMarker(nil)
	lines, err := f.run(nil)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, f.out.String())
	}
	l := verifyLine(t, lines)
	if l.status != steplog.Skip || l.kv["reason"] != "verity" || l.kv["files"] != "3" || l.kv["roothash"] != strings.Repeat("ab", 6) {
		t.Errorf("step line %v, want status=skip reason=verity files=3 roothash=abab…", l.kv)
	}
}

// A binary an overlay's upper layer holds (tmpfs, or /var on STATE) is outside what verity
// checks: it is still hashed, the others are not.
func TestVerifyBinariesOutsideTheVerityRoot(t *testing.T) {
	f := newFixture(t)
	f.bins["/var/lib/tool"] = "tool on STATE"
	f.write("/var/lib/tool", "tool on STATE", 0o755)
	f.writeManifest(f.manifest())
	f.write("/run/imgctl/state/var/upper/lib/tool", "tool on STATE", 0o755)
	f.verityMarker(nil)
	lines, err := f.run(nil)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, f.out.String())
	}
	if l := verifyLine(t, lines); l.status != steplog.OK || l.kv["files"] != "1" || l.kv["verity"] != "3" {
		t.Errorf("step line %v, want status=ok files=1 verity=3", l.kv)
	}

	// The same file changed: the failure names it.
	f.write("/var/lib/tool", "evil tool", 0o755)
	lines, err = f.run(nil)
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "/var/lib/tool: sha256 mismatch") {
		t.Fatalf("Run: %v, want the mismatch of /var/lib/tool", err)
	}
	if l := verifyLine(t, lines); l.status != steplog.Fail {
		t.Errorf("step line %v, want fail", l.kv)
	}

	// A kubelet in the root's (tmpfs) upper layer is hashed too.
	f.write("/var/lib/tool", "tool on STATE", 0o755)
	f.write("/usr/bin/kubelet", "replaced kubelet", 0o755)
	f.write("/run/imgctl/rw/upper/usr/bin/kubelet", "replaced kubelet", 0o755)
	if _, err := f.run(nil); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "/usr/bin/kubelet: sha256 mismatch") {
		t.Fatalf("Run: %v, want the mismatch of the kubelet in the upper layer", err)
	}
}

// A marker whose device is not what is mounted as the root's lower layer proves nothing:
// every binary is hashed, and the step line says why.
func TestVerifyBinariesMarkerForAnotherDevice(t *testing.T) {
	f := newFixture(t)
	f.verityMarker(func(m *rootmark.Marker) { m.Minor += 7 })
	lines, err := f.run(nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if l := verifyLine(t, lines); l.status != steplog.OK || l.kv["files"] != "3" || !strings.Contains(l.kv["verity"], "not the verity device") {
		t.Errorf("step line %v, want status=ok files=3 and why verity is not trusted", l.kv)
	}
	f.write("/usr/bin/kubelet", "evil", 0o755)
	if _, err := f.run(nil); !errors.Is(err, ErrMismatch) {
		t.Errorf("Run with a tampered kubelet: %v, want ErrMismatch", err)
	}
}
