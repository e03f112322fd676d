package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"

	"github.com/imgctl/imgctl/builders/buildtest"
	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/layers/spec"
	"github.com/imgctl/imgctl/layers/testenv"
)

// The plugin's acceptance test: the real Packer (1.9.4, built from the Go module proxy by
// `make packer`) runs `packer build` on HCL2 templates with packer-plugin-imgctl found in
// PACKER_PLUGIN_PATH (Packer 1.9 has no `packer plugins install --path`: it discovers
// packer-plugin-NAME binaries in its plugin folders and asks each `describe`), no `packer init`.
// The images are small: the build kit's fake kernel and bootloader layers (builders/buildtest),
// so a raw disk builds in seconds without Debian.

// packerBin returns the Packer CLI that `make packer` builds (scripts/build-go-tool.sh packer)
// into .cache/tools/packer/VERSION, VERSION being the one test/tools/packer pins;
// $IMGCTL_PACKER overrides the path. It checks the binary is that version: Debian's Packer
// 1.6.6 cannot load plugins built with packer-plugin-sdk v0.6.
func packerBin(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("tools", "packer", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^require github\.com/hashicorp/packer (v\S+)$`).FindSubmatch(data)
	if m == nil {
		t.Fatal("test/tools/packer/go.mod does not pin github.com/hashicorp/packer")
	}
	version := string(m[1])
	p := os.Getenv("IMGCTL_PACKER")
	if p != "" {
		testenv.Files(t, p)
	} else {
		if p, err = filepath.Abs(filepath.Join("..", ".cache", "tools", "packer", version, "packer")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(p); err != nil {
			testenv.Missing(t, "packer %s is not built (%v): run `make packer` (scripts/build-go-tool.sh packer)", version, err)
		}
	}
	cmd := exec.Command(p, "version")
	cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s version: %v", p, err)
	}
	if got := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0]); got != "Packer "+version {
		t.Fatalf("%s version says %q, want \"Packer %s\" (test/tools/packer's pin)", p, got, version)
	}
	return p
}

// packerPluginBin is cmd/packer-plugin-imgctl (its own Go module).
var packerPluginBin = &goBinary{dir: "../cmd/packer-plugin-imgctl", pkg: ".", out: "packer-plugins/packer-plugin-imgctl"}

// packerPluginPath builds packer-plugin-imgctl once per test binary, in a directory of its own,
// and returns that directory: the PACKER_PLUGIN_PATH of the tests.
func packerPluginPath(t *testing.T) string {
	t.Helper()
	return filepath.Dir(packerPluginBin.build(t))
}

// packerRun is one `packer build` in a directory of its own: Packer's home, config and cache
// directories are there, checkpoint is off, its log goes to packer.log.
type packerRun struct {
	dir, packer, plugins string
}

func newPackerRun(t *testing.T, packer, plugins, template string) *packerRun {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "node.pkr.hcl"), template)
	return &packerRun{dir: dir, packer: packer, plugins: plugins}
}

func (r *packerRun) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, r.packer, append(args, "node.pkr.hcl")...)
	cmd.Dir = r.dir
	cmd.Env = append(os.Environ(),
		"HOME="+filepath.Join(r.dir, "home"),
		"PACKER_CONFIG_DIR="+filepath.Join(r.dir, "config"),
		"PACKER_CACHE_DIR="+filepath.Join(r.dir, "packer_cache"),
		"PACKER_PLUGIN_PATH="+r.plugins,
		// Packer 1.9 reads CHECKPOINT_DISABLE (not PACKER_CHECKPOINT_DISABLE): without it
		// Packer calls checkpoint-api.hashicorp.com.
		"CHECKPOINT_DISABLE=1",
		"PACKER_LOG=1", "PACKER_LOG_PATH="+filepath.Join(r.dir, "packer.log"),
		"PACKER_NO_COLOR=1", "SOURCE_DATE_EPOCH=1764115200")
	// Its own process group: a cancel signals Packer, its wrapped child and the plugin, like
	// Ctrl-C in a terminal; the test's cleanup kills whatever is left.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// build runs `packer build -color=false node.pkr.hcl` and returns its output (stdout and
// stderr) and exit code.
func (r *packerRun) build(ctx context.Context, t *testing.T) (string, int) {
	t.Helper()
	start := time.Now()
	cmd := r.command(ctx, "build", "-color=false")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("packer build: %v\n%s", err, out.String())
	}
	t.Logf("packer build: exit %d in %v", code, time.Since(start).Round(100*time.Millisecond))
	// The tests stay on loopback: Packer must not have called HashiCorp's checkpoint service.
	if log, _ := os.ReadFile(filepath.Join(r.dir, "packer.log")); bytes.Contains(log, []byte("checkpoint-api.hashicorp.com")) {
		t.Errorf("packer called checkpoint-api.hashicorp.com despite CHECKPOINT_DISABLE:\n%s", r.log())
	}
	return out.String(), code
}

// log returns the end of Packer's debug log (plugin output included), for a failure message.
func (r *packerRun) log() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "packer.log"))
	return tail(string(b), 6000)
}

// packerImage is a small node image's spec file for the plugin: the build kit's fixture (a
// base tar, a kubelet over HTTP, extras from a directory and a loopback registry) with its fake
// kernel and bootloader, so the raw target builds without Debian. extra is written into the
// image (/etc/imgctl/packer-e2e) so each call gives another image.
type packerImage struct {
	spec, agent string
	extra       string // the file extra is written to (a source of role extra)
}

func newPackerImage(t *testing.T, extra string) packerImage {
	t.Helper()
	f := buildtest.NewFixture(t)
	agent := f.WithBoot(t, buildtest.BootOptions{})
	content := filepath.Join(f.Dir, "packer-extra")
	if err := os.MkdirAll(filepath.Join(content, "etc", "imgctl"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(content, "etc", "imgctl", "packer-e2e"), extra+"\n")
	f.Sources[spec.RoleExtra] = append(f.Sources[spec.RoleExtra], "file://"+content+"/")
	y := f.SpecYAML("packer-e2e", 1700000000)
	p := filepath.Join(f.Dir, "node.yaml")
	writeFile(t, p, string(y))
	if _, err := spec.Parse(p, y); err != nil {
		t.Fatal(err)
	}
	return packerImage{spec: p, agent: agent, extra: filepath.Join(content, "etc", "imgctl", "packer-e2e")}
}

// hcl quotes s as an HCL string (no template sequences in the test's paths).
func hcl(s string) string {
	if strings.Contains(s, "${") || strings.Contains(s, "%{") {
		panic("hcl: template sequence in " + s)
	}
	return fmt.Sprintf("%q", s)
}

func hclList(ss ...string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = hcl(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// sourceBlock is the template's source "imgctl" "node": the image's spec, the store and cache
// under dir, then the given attribute lines.
func sourceBlock(img packerImage, dir string, attrs ...string) string {
	var b strings.Builder
	b.WriteString("source \"imgctl\" \"node\" {\n")
	for _, a := range append([]string{
		"spec_file = " + hcl(img.spec),
		"node_agent = " + hcl(img.agent),
		"store = " + hcl(filepath.Join(dir, "store")),
		"cache_dir = " + hcl(filepath.Join(dir, "cache")),
		"lock_file = " + hcl(filepath.Join(dir, "imgctl.lock")),
	}, attrs...) {
		b.WriteString("  " + a + "\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// buildBlock builds source.imgctl.node and runs the manifest post-processor (manifest.json,
// with the builder's generated variables as custom data) and the checksum post-processor
// (sha256 of the artifact's files in node.sha256).
const buildBlock = `build {
  sources = ["source.imgctl.node"]

  post-processor "manifest" {
    output     = "manifest.json"
    strip_time = true
    custom_data = {
      digest  = "${build.ImageDigest}"
      version = "${build.ImageVersion}"
      amis    = "${build.AMIs}"
    }
  }
  post-processor "checksum" {
    checksum_types = ["sha256"]
    output         = "node.sha256"
  }
}
`

// packerManifest is the manifest post-processor's file.
type packerManifest struct {
	Builds []struct {
		Name        string `json:"name"`
		BuilderType string `json:"builder_type"`
		ArtifactID  string `json:"artifact_id"`
		Files       []struct {
			Name string `json:"name"`
			Size int64  `json:"size"`
		} `json:"files"`
		CustomData map[string]string `json:"custom_data"`
	} `json:"builds"`
	LastRunUUID string `json:"last_run_uuid"`
}

// readManifest reads dir/manifest.json and checks it lists one build of source.imgctl.node
// by the imgctl builder whose generated variables are the store's image (digest, version)
// and the AMIs; it returns the build's artifact ID and files.
func readManifest(t *testing.T, dir string, img storedImage, amis string) (string, map[string]int64) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m packerManifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("manifest.json: %v\n%s", err, data)
	}
	if len(m.Builds) != 1 {
		t.Fatalf("manifest.json lists %d builds, want 1:\n%s", len(m.Builds), data)
	}
	b := m.Builds[0]
	if b.Name != "node" || b.BuilderType != "imgctl" {
		t.Errorf("manifest.json: build %q by builder %q, want node by imgctl", b.Name, b.BuilderType)
	}
	want := map[string]string{"digest": img.Digest, "version": img.Version, "amis": amis}
	for k, v := range want {
		if b.CustomData[k] != v {
			t.Errorf("manifest.json custom_data %s (the builder's generated variable) = %q, want %q", k, b.CustomData[k], v)
		}
	}
	files := map[string]int64{}
	for _, f := range b.Files {
		files[f.Name] = f.Size
	}
	return b.ArtifactID, files
}

// storedImage is an image in a store as `imgctl images list -o json` shows it.
type storedImage struct {
	Digest, Name, Version string
}

// storeImages lists the images in dir/store with the imgctl CLI.
func storeImages(ctx context.Context, t *testing.T, dir string) []storedImage {
	t.Helper()
	out, err := imgctl(ctx, t, dir, "-o", "json", "images", "list")
	if err != nil {
		t.Fatal(err)
	}
	var imgs []storedImage
	if err := json.Unmarshal([]byte(out), &imgs); err != nil {
		t.Fatalf("images list -o json: %v: %s", err, out)
	}
	return imgs
}

// onlyImage returns the one image in dir/store.
func onlyImage(ctx context.Context, t *testing.T, dir string) storedImage {
	t.Helper()
	imgs := storeImages(ctx, t, dir)
	if len(imgs) != 1 {
		t.Fatalf("%s holds %d images, want the one Packer built: %+v", filepath.Join(dir, "store"), len(imgs), imgs)
	}
	return imgs[0]
}

// checkChecksums checks the checksum post-processor's file (sha256 TAB base name per line)
// names every file of the artifact once, with its real sha256.
func checkChecksums(t *testing.T, sumFile string, files []string) {
	t.Helper()
	data, err := os.ReadFile(sumFile)
	if err != nil {
		t.Fatal(err)
	}
	sums := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		sum, name, ok := strings.Cut(sc.Text(), "\t")
		if !ok {
			t.Fatalf("%s: line %q is not SHA256<TAB>NAME", sumFile, sc.Text())
		}
		if _, dup := sums[name]; dup {
			t.Errorf("%s names %s twice", sumFile, name)
		}
		sums[name] = sum
	}
	if len(sums) != len(files) {
		t.Errorf("%s has %d lines, the artifact %d files:\n%s", sumFile, len(sums), len(files), data)
	}
	for _, f := range files {
		h := sha256.New()
		r, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(h, r)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); sums[filepath.Base(f)] != got {
			t.Errorf("%s: %s has sha256 %q, the file %s", sumFile, filepath.Base(f), sums[filepath.Base(f)], got)
		}
	}
}

// artifactFiles resolves the manifest's file names (absolute, or relative to Packer's working
// directory) and checks each exists with the size the manifest gives and lies in out.
func artifactFiles(t *testing.T, dir, out string, files map[string]int64) []string {
	t.Helper()
	var paths []string
	for name, size := range files {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Errorf("the artifact's file %s: %v", name, err)
			continue
		}
		if fi.Size() != size {
			t.Errorf("the artifact's file %s: %d bytes, the manifest says %d", name, fi.Size(), size)
		}
		if filepath.Dir(p) != out {
			t.Errorf("the artifact's file %s is not in the output directory %s", name, out)
		}
		paths = append(paths, p)
	}
	sort.Strings(paths)
	return paths
}

// TestPackerBuildRaw: `packer build` with the imgctl builder makes a raw disk; the manifest
// post-processor lists the artifact (builder imgctl, the image digest as its ID, disk.raw among
// its files in the default output directory output-node, the builder's generated variables); the checksum
// post-processor's sums verify the files; the image is in the store.
func TestPackerBuildRaw(t *testing.T) {
	testenv.Integration(t, "the real Packer drives packer-plugin-imgctl")
	packer := packerBin(t)
	plugins := packerPluginPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	work := t.TempDir()
	img := newPackerImage(t, "raw")
	// No output_directory: output-<build name> in Packer's working directory, as Packer's own
	// builders do.
	r := newPackerRun(t, packer, plugins, sourceBlock(img, work, `targets = ["raw"]`)+buildBlock)
	out, code := r.build(ctx, t)
	if code != 0 {
		t.Fatalf("packer build: exit %d\n%s\nlog:\n%s", code, out, r.log())
	}
	stored := onlyImage(ctx, t, work)
	id, files := readManifest(t, r.dir, stored, "")
	if id != stored.Digest {
		t.Errorf("manifest.json artifact_id %q, want the image's digest %s", id, stored.Digest)
	}
	if !strings.Contains(out, stored.Digest) || !strings.Contains(out, stored.Version) {
		t.Errorf("packer's output does not show the artifact's version %s and digest %s:\n%s", stored.Version, stored.Digest, out)
	}
	paths := artifactFiles(t, r.dir, filepath.Join(r.dir, "output-node"), files)
	var names []string
	for _, p := range paths {
		names = append(names, filepath.Base(p))
	}
	if !slices.Contains(names, "disk.raw") {
		t.Errorf("the artifact's files %v lack disk.raw", names)
	}
	checkChecksums(t, filepath.Join(r.dir, "node.sha256"), paths)
	// The files are the image's artifacts as the store holds them: each artifact exported
	// under its name (the sparse disk.simg expanded to disk.raw), the others byte for byte.
	insp, err := imgctl(ctx, t, work, "-o", "json", "images", "inspect", stored.Digest)
	if err != nil {
		t.Fatal(err)
	}
	var shown struct {
		Manifest struct {
			Layers []struct {
				Digest, MediaType string
				Annotations       map[string]string
			}
		}
	}
	if err := json.Unmarshal([]byte(insp), &shown); err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, l := range shown.Manifest.Layers {
		name := l.Annotations["org.opencontainers.image.title"]
		if strings.HasSuffix(name, ".simg") {
			want = append(want, strings.TrimSuffix(name, ".simg")+".raw")
			continue
		}
		want = append(want, name)
		if d, _ := fileDigest(t, filepath.Join(r.dir, "output-node", name)); d != l.Digest {
			t.Errorf("output-node/%s is %s, the image's artifact %s", name, d, l.Digest)
		}
	}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("the artifact's files %v, the image's artifacts exported %v", names, want)
	}
	// imgctl build makes the same image from the same inputs: the plugin records imgctl's
	// version as the CLI does, so the digest does not depend on the front end.
	cli := exec.CommandContext(ctx, imgctlBin, "--store", filepath.Join(work, "store"), "--cache", filepath.Join(work, "cache"), "-q",
		"build", "-f", img.spec, "--lock", filepath.Join(work, "imgctl.lock"), "--locked", "--node-agent", img.agent, "--target", "raw")
	cli.Dir = work
	cli.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1764115200") // as packerRun gives Packer
	cliOut, err := cli.Output()
	if err != nil {
		var ee *exec.ExitError
		errors.As(err, &ee)
		t.Fatalf("imgctl build of the same spec: %v\n%s", err, ee.Stderr)
	}
	if d := lastLine(string(cliOut)); d != stored.Digest {
		t.Errorf("imgctl build of the same spec and lock made %s, packer made %s: the image depends on the front end", d, stored.Digest)
	}
	t.Logf("packer built %s (%s): files %v", stored.Version, stored.Digest, names)
}

// TestPackerPluginDescribe: the plugin binary answers `describe` as Packer's discovery expects
// (Packer 1.9 runs it for each packer-plugin-NAME in its plugin folders): one builder under the
// default name (so the builder is named after the binary: imgctl), SDK v0.6.4, plugin API
// x5.0, the version main sets.
func TestPackerPluginDescribe(t *testing.T) {
	testenv.Integration(t, "builds packer-plugin-imgctl")
	bin := filepath.Join(packerPluginPath(t), "packer-plugin-imgctl")
	out, err := exec.Command(bin, "describe").Output()
	if err != nil {
		t.Fatalf("%s describe: %v", bin, err)
	}
	var d struct {
		Version        string   `json:"version"`
		SDKVersion     string   `json:"sdk_version"`
		APIVersion     string   `json:"api_version"`
		Builders       []string `json:"builders"`
		PostProcessors []string `json:"post_processors"`
		Provisioners   []string `json:"provisioners"`
		Datasources    []string `json:"datasources"`
	}
	if err := json.Unmarshal(out, &d); err != nil {
		t.Fatalf("describe: %v: %s", err, out)
	}
	if !slices.Equal(d.Builders, []string{"-packer-default-plugin-name-"}) || len(d.PostProcessors)+len(d.Provisioners)+len(d.Datasources) != 0 {
		t.Errorf("describe: builders %v, post-processors %v, provisioners %v, data sources %v; want the one default builder", d.Builders, d.PostProcessors, d.Provisioners, d.Datasources)
	}
	if d.SDKVersion != "0.6.4" || d.APIVersion != "x5.0" || d.Version == "" {
		t.Errorf("describe: version %q, SDK %q, API %q; want a version, SDK 0.6.4, API x5.0", d.Version, d.SDKVersion, d.APIVersion)
	}
	t.Logf("describe: %s", bytes.TrimSpace(out))
}

// TestPackerBadInput: an unknown attribute is refused by Packer itself (its HCL2 spec comes
// from the plugin), a missing spec file by the builder's Prepare naming the file; both exit 1
// before anything is built.
func TestPackerBadInput(t *testing.T) {
	testenv.Integration(t, "the real Packer drives packer-plugin-imgctl")
	packer := packerBin(t)
	plugins := packerPluginPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img := newPackerImage(t, "bad")
	missing := filepath.Join(t.TempDir(), "no-such-node.yaml")
	for _, c := range []struct {
		name  string
		img   packerImage
		attrs []string
		want  []string
	}{
		{"unknown attribute", img, []string{`targets = ["raw"]`, `disk_sise = "4G"`},
			[]string{"Unsupported argument", `An argument named "disk_sise" is not expected here`}},
		{"missing spec file", packerImage{spec: missing, agent: img.agent}, []string{`targets = ["raw"]`},
			[]string{missing}},
	} {
		t.Run(c.name, func(t *testing.T) {
			work := t.TempDir()
			r := newPackerRun(t, packer, plugins, sourceBlock(c.img, work, append(c.attrs, `output_directory = "out"`)...)+buildBlock)
			out, code := r.build(ctx, t)
			if code != 1 {
				t.Errorf("packer build: exit %d, want 1\n%s", code, out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("packer build's output lacks %q:\n%s", w, out)
				}
			}
			for _, p := range []string{filepath.Join(work, "store"), filepath.Join(r.dir, "out"), filepath.Join(r.dir, "manifest.json")} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("a refused template left %s", p)
				}
			}
			t.Logf("%s: %s", c.name, strings.Join(errorLines(out), " | "))
		})
	}

	// locked = true and a source changed since the lock was written (here by imgctl build):
	// the build fails naming the source, and the lock file stays as it was.
	t.Run("locked with a changed source", func(t *testing.T) {
		work := t.TempDir()
		lockPath := filepath.Join(work, "imgctl.lock")
		if _, err := imgctl(ctx, t, work, "-q", "build", "-f", img.spec, "--target", "rootfs", "--lock", lockPath); err != nil {
			t.Fatal(err)
		}
		before, err := os.ReadFile(lockPath)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, img.extra, "changed after the lock was written\n")
		r := newPackerRun(t, packer, plugins, sourceBlock(img, work, `targets = ["raw"]`, `locked = true`, `output_directory = "out"`)+buildBlock)
		out, code := r.build(ctx, t)
		if code != 1 {
			t.Errorf("packer build: exit %d, want 1\n%s", code, out)
		}
		for _, w := range []string{lockPath, "the lock file is out of date", "extra file://" + filepath.Dir(filepath.Dir(filepath.Dir(img.extra))) + "/"} {
			if !strings.Contains(out, w) {
				t.Errorf("packer build's output lacks %q:\n%s", w, out)
			}
		}
		if after, err := os.ReadFile(lockPath); err != nil || !bytes.Equal(after, before) {
			t.Errorf("a locked build that failed changed the lock file (%v):\n%s\nwas:\n%s", err, after, before)
		}
		if _, err := os.Stat(filepath.Join(r.dir, "out")); err == nil {
			t.Errorf("a locked build that failed left %s", filepath.Join(r.dir, "out"))
		}
		t.Logf("locked: %s", strings.Join(errorLines(out), " | "))
	})
}

// errorLines returns Packer's error lines of out (for the log).
func errorLines(out string) []string {
	var ls []string
	for l := range strings.Lines(out) {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "Error") || strings.Contains(l, "errored") || strings.Contains(l, "An argument") {
			ls = append(ls, l)
		}
	}
	return ls
}

const (
	packerSSMPrefix = "/imgctl/packer"
	packerCopy      = "eu-west-1"
)

// awsSnapshot is what moto holds in the test's regions: the account's AMIs, the snapshots
// and the parameters under packerSSMPrefix, as region/ID (or region/name).
type awsSnapshot struct {
	images, snapshots, params []string
}

func awsHolds(ctx context.Context, t *testing.T, c *awsclient.Clients) awsSnapshot {
	t.Helper()
	var s awsSnapshot
	for _, region := range []string{amiRegion, packerCopy} {
		images := ec2.NewDescribeImagesPaginator(c.EC2(region), &ec2.DescribeImagesInput{Owners: []string{"self"}})
		for images.HasMorePages() {
			page, err := images.NextPage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range page.Images {
				s.images = append(s.images, region+"/"+aws.ToString(i.ImageId))
			}
		}
		snapshots := ec2.NewDescribeSnapshotsPaginator(c.EC2(region), &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}})
		for snapshots.HasMorePages() {
			page, err := snapshots.NextPage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range page.Snapshots {
				// moto gives every AMI it registers a snapshot of its own (RegisterImage
				// ignores the block device mapping); AWS makes none when an AMI is registered
				// from a snapshot, so those in the upload region are not the build's to
				// remove. A copy's snapshot is real on AWS too: it counts.
				if region == amiRegion && strings.HasPrefix(aws.ToString(x.Description), "Auto-created snapshot for AMI ") {
					continue
				}
				s.snapshots = append(s.snapshots, region+"/"+aws.ToString(x.SnapshotId))
			}
		}
		params := ssm.NewGetParametersByPathPaginator(c.SSM(region), &ssm.GetParametersByPathInput{Path: aws.String(packerSSMPrefix), Recursive: aws.Bool(true)})
		for params.HasMorePages() {
			page, err := params.NextPage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range page.Parameters {
				s.params = append(s.params, region+"/"+aws.ToString(x.Name))
			}
		}
	}
	return s
}

// added returns what after holds and before did not.
func (after awsSnapshot) added(before awsSnapshot) awsSnapshot {
	diff := func(a, b []string) []string {
		var out []string
		for _, x := range a {
			if !slices.Contains(b, x) {
				out = append(out, x)
			}
		}
		return out
	}
	return awsSnapshot{diff(after.images, before.images), diff(after.snapshots, before.snapshots), diff(after.params, before.params)}
}

func (s awsSnapshot) empty() bool { return len(s.images)+len(s.snapshots)+len(s.params) == 0 }

func (s awsSnapshot) String() string {
	return fmt.Sprintf("AMIs %v, snapshots %v, parameters %v", s.images, s.snapshots, s.params)
}

// amiTemplate is a template publishing img as AMIs in us-east-1 and eu-west-1 through endpoint
// (also a raw disk in output_directory "out").
func amiTemplate(img packerImage, work, endpoint string) string {
	return sourceBlock(img, work,
		`targets = ["raw", "ami"]`, `output_directory = "out"`,
		"region = "+hcl(amiRegion), "ami_regions = "+hclList(packerCopy),
		"ssm_prefix = "+hcl(packerSSMPrefix), "endpoint_url = "+hcl(endpoint), "no_imds = true") + buildBlock
}

// credentialScope is a SigV4 Authorization header's scope: region, service.
var credentialScope = regexp.MustCompile(`Credential=[^/]+/[0-9]+/([^/]+)/([^/]+)/aws4_request`)

// ssmCall reports whether r is an SSM request of action (X-Amz-Target AmazonSSM.ACTION)
// signed for region.
func ssmCall(r *http.Request, action, region string) bool {
	m := credentialScope.FindStringSubmatch(r.Header.Get("Authorization"))
	return m != nil && m[1] == region && m[2] == "ssm" && r.Header.Get("X-Amz-Target") == "AmazonSSM."+action
}

// TestPackerBuildAMI: against moto_server on loopback, `packer build` publishes the image as an
// AMI in us-east-1 copied to eu-west-1; the artifact's ID lists both like the amazon builders
// (region:ami-…, sorted by region) and the manifest carries it. Then two builds that do not
// finish leave nothing behind on AWS, and no output files: one whose eu-west-1 version
// parameter is refused (after the snapshot, both AMIs and us-east-1's parameter exist), and one
// interrupted (SIGINT, like Ctrl-C) at the same point.
func TestPackerBuildAMI(t *testing.T) {
	testenv.Integration(t, "the real Packer drives packer-plugin-imgctl against moto_server")
	packer := packerBin(t)
	plugins := packerPluginPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	// The front serves one endpoint for the whole test; each case sets the fault it needs.
	var fault atomic.Pointer[awsfake.HandlerFunc]
	env := awsfake.MotoForTest(t, "us-east-1", awsfake.HandlerFunc(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if f := fault.Load(); f != nil {
			return (*f)(w, r, body)
		}
		return false
	}))
	// The test's own reads go to moto directly, not through the fault and the recorder.
	moto, endpoint, calls, c := env.Moto, env.URL, env.EC2, awsfake.ClientsForTest(t, "us-east-1", env.Moto.URL)

	t.Run("published", func(t *testing.T) {
		work := t.TempDir()
		before := awsHolds(ctx, t, c)
		r := newPackerRun(t, packer, plugins, amiTemplate(newPackerImage(t, "ami"), work, endpoint))
		out, code := r.build(ctx, t)
		if code != 0 {
			t.Fatalf("packer build: exit %d\n%s\nlog:\n%s\nmoto:\n%s", code, out, r.log(), moto.Log())
		}
		stored := onlyImage(ctx, t, work)
		amis := map[string]string{}
		for _, region := range []string{amiRegion, packerCopy} {
			d, err := c.EC2(region).DescribeImages(ctx, &ec2.DescribeImagesInput{Filters: []ec2types.Filter{
				{Name: aws.String("tag:" + publication.TagImage), Values: []string{stored.Digest}}}})
			if err != nil {
				t.Fatal(err)
			}
			if len(d.Images) != 1 || d.Images[0].State != ec2types.ImageStateAvailable {
				t.Fatalf("%s: moto holds %d AMIs tagged %s=%s, want 1 available: %+v", region, len(d.Images), publication.TagImage, stored.Digest, d.Images)
			}
			amis[region] = aws.ToString(d.Images[0].ImageId)
		}
		want := packerCopy + ":" + amis[packerCopy] + "," + amiRegion + ":" + amis[amiRegion]
		id, files := readManifest(t, r.dir, stored, want)
		if id != want {
			t.Errorf("manifest.json artifact_id %q, want %q (region:AMI, sorted by region)", id, want)
		}
		paths := artifactFiles(t, r.dir, filepath.Join(r.dir, "out"), files)
		checkChecksums(t, filepath.Join(r.dir, "node.sha256"), paths)
		added := awsHolds(ctx, t, c).added(before)
		if len(added.images) != 2 || len(added.params) != 2 {
			t.Errorf("the build added %s; want 2 AMIs and 2 version parameters", added)
		}
		t.Logf("published %s as %s", stored.Version, id)
	})

	// A build that fails or is interrupted when it writes eu-west-1's version parameter (the
	// snapshot, both AMIs and us-east-1's parameter exist then): what it made on AWS and in
	// output_directory is removed, and the manifest post-processor never runs.
	unfinished := func(t *testing.T, interrupt bool) string {
		t.Helper()
		work := t.TempDir()
		before := awsHolds(ctx, t, c)
		copies, registered := len(calls.Calls("CopyImage")), len(calls.Calls("RegisterImage"))
		r := newPackerRun(t, packer, plugins, amiTemplate(newPackerImage(t, fmt.Sprint("interrupt ", interrupt)), work, endpoint))
		cmd := r.command(ctx, "build", "-color=false")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		var hit, released atomic.Bool
		var signalled, pid atomic.Int64
		h := awsfake.HandlerFunc(func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
			if !ssmCall(r, "PutParameter", packerCopy) {
				return false
			}
			hit.Store(true)
			if interrupt {
				// Ctrl-C: SIGINT to Packer's process group (Packer's panicwrap parent
				// forwards only SIGTERM to the real Packer; plugins ignore SIGINT and are
				// cancelled by Packer). The request is held until the plugin gives it up.
				if signalled.CompareAndSwap(0, time.Now().UnixNano()) {
					syscall.Kill(-int(pid.Load()), syscall.SIGINT)
				}
				select {
				case <-r.Context().Done():
					released.Store(true)
					return true
				case <-time.After(45 * time.Second):
				}
			}
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"__type":"AccessDeniedException","message":"injected by the test: no ssm:PutParameter in `+packerCopy+`"}`)
			return true
		})
		fault.Store(&h)
		defer fault.Store(nil)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid.Store(int64(cmd.Process.Pid))
		t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
		err := cmd.Wait()
		end := time.Now()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("packer build: %v, want exit 1\n%s\nlog:\n%s", err, out.String(), r.log())
		}
		if !hit.Load() {
			t.Fatalf("the build never wrote eu-west-1's version parameter: nothing was left to clean up\n%s\nlog:\n%s", out.String(), r.log())
		}
		if len(calls.Calls("CopyImage")) == copies || len(calls.Calls("RegisterImage")) == registered {
			t.Fatalf("the build registered %d and copied %d AMIs before it stopped, want both", len(calls.Calls("RegisterImage"))-registered, len(calls.Calls("CopyImage"))-copies)
		}
		if interrupt {
			if !released.Load() {
				t.Errorf("the plugin did not give up its request to AWS when Packer was interrupted")
			}
			t.Logf("packer exited %v after SIGINT", end.Sub(time.Unix(0, signalled.Load())).Round(time.Millisecond))
		}
		if left := awsHolds(ctx, t, c).added(before); !left.empty() {
			t.Errorf("the unfinished build left on AWS: %s\n%s\nlog:\n%s", left, out.String(), r.log())
		}
		if ents, err := os.ReadDir(filepath.Join(r.dir, "out")); err == nil && len(ents) > 0 {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Errorf("the unfinished build left output files %v", names)
		}
		if _, err := os.Stat(filepath.Join(r.dir, "manifest.json")); err == nil {
			t.Errorf("the unfinished build's artifact reached the manifest post-processor")
		}
		t.Logf("%s", strings.Join(errorLines(out.String()), " | "))
		return out.String()
	}

	t.Run("failed", func(t *testing.T) {
		out := unfinished(t, false)
		for _, want := range []string{"AccessDeniedException", packerCopy, "Some builds didn't complete successfully"} {
			if !strings.Contains(out, want) {
				t.Errorf("packer build's output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("interrupted", func(t *testing.T) {
		out := unfinished(t, true)
		for _, want := range []string{"Cancelling build after receiving interrupt", "Cleanly cancelled builds after being interrupted."} {
			if !strings.Contains(out, want) {
				t.Errorf("packer build's output lacks %q:\n%s", want, out)
			}
		}
	})
}
