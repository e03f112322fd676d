package kmod

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/imgctl/imgctl/layers/testenv"
)

// The oracle tests compare Generate with depmod on Debian's current cloud
// kernel. Set KMOD_TEST_DEB to a linux-image .deb to skip the download.

type oracle struct {
	deb   string
	kver  string
	ref   string // root of a dpkg-deb -x tree on which depmod ran
	files []File // Generate's output on the .deb's data.tar
	ixs   []*Index
	err   error
}

var (
	oracleOnce sync.Once
	oracleData oracle
)

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	testenv.Tools(t, tools...)
}

func run(dir string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), &cmdError{name + " " + strings.Join(args, " "), err, stderr.String()}
	}
	return string(out), nil
}

type cmdError struct {
	cmd    string
	err    error
	stderr string
}

func (e *cmdError) Error() string { return e.cmd + ": " + e.err.Error() + ": " + e.stderr }

func setupOracle(t *testing.T) *oracle {
	t.Helper()
	if testing.Short() {
		t.Skip("oracle test downloads a kernel package")
	}
	needTools(t, "dpkg-deb", "depmod", "modprobe", "apt-get", "apt-cache")
	oracleOnce.Do(func() {
		o := &oracleData
		o.err = buildOracle(o)
	})
	if oracleData.err != nil {
		t.Fatal(oracleData.err)
	}
	return &oracleData
}

var oracleTmp string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kmod-oracle-")
	if err != nil {
		panic(err)
	}
	oracleTmp = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildOracle(o *oracle) error {
	o.deb = os.Getenv("KMOD_TEST_DEB")
	if o.deb == "" {
		out, err := run("", "apt-cache", "depends", "linux-image-cloud-amd64")
		if err != nil {
			return err
		}
		m := regexp.MustCompile(`Depends: (linux-image-\S+-cloud-amd64)`).FindStringSubmatch(out)
		if m == nil {
			return &cmdError{"apt-cache depends", os.ErrNotExist, out}
		}
		dl := filepath.Join(oracleTmp, "dl")
		if err := os.MkdirAll(dl, 0o755); err != nil {
			return err
		}
		if _, err := run(dl, "apt-get", "download", m[1]); err != nil {
			return err
		}
		debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
		if len(debs) != 1 {
			return &cmdError{"apt-get download", os.ErrNotExist, strings.Join(debs, " ")}
		}
		o.deb = debs[0]
	}
	o.ref = filepath.Join(oracleTmp, "ref")
	if _, err := run("", "dpkg-deb", "-x", o.deb, o.ref); err != nil {
		return err
	}
	kvers, _ := filepath.Glob(filepath.Join(o.ref, "lib/modules/*"))
	if len(kvers) != 1 {
		return &cmdError{"find kernel version", os.ErrNotExist, strings.Join(kvers, " ")}
	}
	o.kver = filepath.Base(kvers[0])
	if _, err := run("", "depmod", "-b", o.ref, o.kver); err != nil {
		return err
	}

	fsys := func() ([]byte, error) {
		return exec.Command("dpkg-deb", "--fsys-tarfile", o.deb).Output()
	}
	// Stream the data.tar through a pipe, as a layer would be.
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", o.deb)
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	o.files, o.err = Generate(context.Background(), pipe)
	if werr := cmd.Wait(); werr != nil && o.err == nil {
		o.err = werr
	}
	if o.err != nil {
		return o.err
	}
	data, err := fsys()
	if err != nil {
		return err
	}
	o.ixs, err = Scan(context.Background(), bytes.NewReader(data))
	return err
}

func TestOracleFilesMatchDepmod(t *testing.T) {
	o := setupOracle(t)
	want := []string{"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin",
		"modules.softdep", "modules.symbols", "modules.symbols.bin", "modules.builtin.bin",
		"modules.builtin.alias.bin", "modules.devname"}
	if len(o.files) != len(want) {
		t.Fatalf("Generate returned %d files, want %d", len(o.files), len(want))
	}
	for i, f := range o.files {
		wantPath := "lib/modules/" + o.kver + "/" + want[i]
		if f.Path != wantPath {
			t.Errorf("file %d: path %s, want %s", i, f.Path, wantPath)
			continue
		}
		ref, err := os.ReadFile(filepath.Join(o.ref, f.Path))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(f.Data, ref) {
			t.Errorf("%s differs from depmod's (%d bytes, depmod %d bytes)", want[i], len(f.Data), len(ref))
			continue
		}
		t.Logf("%s: byte-identical to depmod (%d bytes)", want[i], len(ref))
	}
}

// installOurs writes Generate's files into a copy of the module tree
// without depmod's outputs and returns its root.
func installOurs(t *testing.T, o *oracle) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := run("", "dpkg-deb", "-x", o.deb, dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range o.files {
		if err := os.WriteFile(filepath.Join(dir, f.Path), f.Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestOracleModprobe(t *testing.T) {
	o := setupOracle(t)
	ours := installOurs(t, o)
	queries := [][]string{
		{"-a", "--show-depends", "virtio_blk", "squashfs", "overlay", "ena", "nvme"},
		{"-R", "pci:v00001AF4d00001001sv*sd*bc*sc*i*"},
		{"-R", "fs-overlay"},
		{"-R", "symbol:virtio_check_driver_offered_feature"},
		{"--show-depends", "fs-squashfs"},
	}
	for _, q := range queries {
		args := func(root string) []string {
			return append([]string{"-d", root, "-S", o.kver}, q...)
		}
		ref, err := run("", "modprobe", args(o.ref)...)
		if err != nil {
			t.Fatal(err)
		}
		got, err := run("", "modprobe", args(ours)...)
		if err != nil {
			t.Fatal(err)
		}
		ref = strings.ReplaceAll(ref, o.ref, "ROOT")
		got = strings.ReplaceAll(got, ours, "ROOT")
		if got != ref || got == "" {
			t.Errorf("modprobe %v:\n got %q\nwant %q", q, got, ref)
		}
	}
}

func TestOracleClosure(t *testing.T) {
	o := setupOracle(t)
	if len(o.ixs) != 1 {
		t.Fatalf("Scan found %d kernels", len(o.ixs))
	}
	ix := o.ixs[0]
	for _, names := range [][]string{
		{"virtio_blk", "squashfs", "overlay", "nvme", "ena"},
		// DESIGN.md section 5's module list, plus a deep one.
		{"virtio_pci", "virtio_net", "loop", "erofs", "vfat", "ext4", "btrfs"},
	} {
		checkClosure(t, o, ix, names)
	}
	if _, err := ix.Closure("virtio_blk", "no_such_module"); err == nil || !strings.Contains(err.Error(), "no_such_module") {
		t.Errorf("unknown module: err = %v", err)
	}

	// depmod derives dependencies from symbols; they agree with modpost's
	// depends= in .modinfo for every module of this kernel.
	for _, m := range ix.st.mods {
		var dep []string
		for _, kv := range m.meta.info {
			if kv.key == "depends" && kv.value != "" {
				dep = strings.Split(strings.ReplaceAll(kv.value, "-", "_"), ",")
			}
		}
		got := append([]string(nil), ix.Modules[m.name].Depends...)
		sort.Strings(got)
		sort.Strings(dep)
		if strings.Join(got, ",") != strings.Join(dep, ",") {
			t.Errorf("%s: Depends %v, depends= %v", m.name, got, dep)
		}
	}
}

func checkClosure(t *testing.T, o *oracle, ix *Index, names []string) {
	t.Helper()
	mods, err := ix.Closure(names...)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range mods {
		got = append(got, "insmod ROOT/lib/modules/"+o.kver+"/"+m.Path)
	}
	// modprobe prints "builtin NAME" for built-in modules, which Closure skips.
	out, err := run("", "modprobe", append([]string{"-d", o.ref, "-S", o.kver, "-a", "--show-depends"}, names...)...)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(strings.ReplaceAll(out, o.ref, "ROOT")), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "insmod ") && !seen[l] {
			seen[l] = true
			want = append(want, l)
		}
	}
	// modprobe also loads soft dependencies (resolved through aliases),
	// which Closure leaves to the caller: Closure must be modprobe's list
	// in the same order, minus modules only a softdep brings in.
	hasSoftdep := false
	for _, m := range mods {
		hasSoftdep = hasSoftdep || len(m.SoftdepPre)+len(m.SoftdepPost) > 0
	}
	i := 0
	var extra []string
	for _, w := range want {
		if i < len(got) && got[i] == w {
			i++
			continue
		}
		extra = append(extra, w)
	}
	if i != len(got) || (len(extra) > 0 && !hasSoftdep) {
		t.Errorf("closure:\n%s\nmodprobe:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(extra) > 0 {
		t.Logf("modprobe also loads softdeps: %v", extra)
	}
	t.Logf("closure of %v: %d modules", names, len(mods))
}
