// Package test holds the end-to-end suites and the architecture checks of imgctl.
package test

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/imgctl/imgctl/"

// TestDependencyDirection enforces DESIGN.md section 4: cmd -> builders -> images -> layers,
// and only cmd holds CLI code.
func TestDependencyDirection(t *testing.T) {
	if n := checkDirection(t, listImports(t, "..", "./...")); n < 10 {
		t.Fatalf("only %d packages listed: the check is not looking at the repository", n)
	}
}

// pluginModule is the Packer plugin's module, nested in the repository (its own go.mod).
const pluginModule = "cmd/packer-plugin-imgctl"

// TestPluginDependencyDirection: the Packer plugin's module (which the root module's ./...
// does not list) obeys the same rule, and nothing imports it.
func TestPluginDependencyDirection(t *testing.T) {
	out := listImports(t, "../"+pluginModule, "./...")
	if !strings.Contains(out, module+pluginModule+"/builder ") {
		t.Fatalf("go list in %s does not list its builder package:\n%s", pluginModule, out)
	}
	if n := checkDirection(t, out); n < 2 {
		t.Fatalf("only %d packages listed in %s", n, pluginModule)
	}
}

// listImports is `go list` of patterns in dir: each package's import path and its imports.
func listImports(t *testing.T, dir string, patterns ...string) string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`}, patterns...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list in %s: %v\n%s", dir, err, out)
	}
	return string(out)
}

// checkDirection checks the imports listImports listed and returns how many of imgctl's
// packages it looked at.
func checkDirection(t *testing.T, out string) int {
	t.Helper()
	forbidden := []struct{ from, to string }{
		{"layers/", "images/"}, {"layers/", "builders"}, {"layers/", "cmd/"},
		{"images/", "builders"}, {"images/", "cmd/"},
		{"builders", "cmd/"},
		// The node agent runs on every node and in the initrd: no build, store or cloud code.
		{"cmd/imgctl-node", "builders"}, {"cmd/imgctl-node", "images/"}, {"cmd/imgctl-node", "cmd/imgctl/"},
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		fields := strings.Fields(line)
		pkg, ok := strings.CutPrefix(fields[0], module)
		if !ok {
			continue
		}
		checked++
		for _, imp := range fields[1:] {
			// The boot contract is a leaf both sides import: the standard library and itself only.
			if (isBootContract(pkg) || pkg == "images/nodeapi" || pkg == "images/update") && !isStandard(imp) && !isBootContract(strings.TrimPrefix(imp, module)) {
				t.Errorf("%s imports %s: the boot, node API and update contracts import nothing but the standard library and images/boot*", pkg, imp)
			}
			if imp == "github.com/spf13/cobra" && !strings.HasPrefix(pkg, "cmd/") {
				t.Errorf("%s imports cobra: CLI code belongs in cmd/", pkg)
			}
			if strings.HasPrefix(pkg, "cmd/imgctl-node") && strings.HasPrefix(imp, "github.com/aws/") {
				t.Errorf("%s imports %s: the node agent stays small", pkg, imp)
			}
			dep, ok := strings.CutPrefix(imp, module)
			if !ok {
				continue
			}
			for _, f := range forbidden {
				if nodeLeaves[dep] && f.from == "cmd/imgctl-node" {
					continue // leaves shared with the node agent
				}
				if strings.HasPrefix(pkg, f.from) && strings.HasPrefix(dep, f.to) {
					t.Errorf("%s imports %s: dependencies flow cmd -> builders -> images -> layers", pkg, dep)
				}
			}
			if strings.HasPrefix(dep, pluginModule) && !strings.HasPrefix(pkg, pluginModule) {
				t.Errorf("%s imports %s: nothing imports the Packer plugin", pkg, dep)
			}
		}
	}
	return checked
}

// nodeLeaves are the packages outside cmd/ that the node agent may import: the NodeConfig
// schema, image.json, the boot contract (command-line keys, partition labels, GPT codec,
// dm-verity format) and the update contract (pointer, manifest keys, block plan).
var nodeLeaves = map[string]bool{
	"images/nodeconfig": true, "images/imageinfo": true, "images/boot": true, "images/boot/gpt": true, "images/boot/verity": true,
	"images/nodeapi": true, "images/update": true,
}

// isBootContract reports whether pkg (relative to the module) is the boot contract: images/boot
// and the packages under it, not every package whose name starts with "boot" (images/bootauth
// is server code).
func isBootContract(pkg string) bool {
	return pkg == "images/boot" || strings.HasPrefix(pkg, "images/boot/")
}

func TestIsBootContract(t *testing.T) {
	for pkg, want := range map[string]bool{
		"images/boot": true, "images/boot/gpt": true, "images/bootauth": false, "images/nodeapi": false,
		"github.com/other/images/boot": false,
	} {
		if got := isBootContract(pkg); got != want {
			t.Errorf("isBootContract(%q) = %v, want %v", pkg, got, want)
		}
	}
}

// isStandard reports whether an import path is the standard library's (no dot in its first
// element).
func isStandard(imp string) bool {
	first, _, _ := strings.Cut(imp, "/")
	return !strings.Contains(first, ".")
}

// TestNodeAgentDependencies keeps imgctl-node small and static (it is every initrd's /init, 8.6 MB
// today): besides the standard library and imgctl's own packages it may use only these modules.
// The CRI client speaks gRPC over net/http's HTTP/2 (no grpc-go); the kubelet configuration is a
// local struct that the render tests decode into k8s.io/kubelet's type (importing that type
// grew the binary from 2 to 19 MB).
func TestNodeAgentDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "../cmd/imgctl-node").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	allowed := []string{"golang.org/x/sys/", "gopkg.in/yaml.v3", "sigs.k8s.io/yaml", "go.yaml.in/yaml/v2", module,
		// The network root's DHCPv4 client (insomniacslk/dhcp's nclient4, what u-root uses) and
		// exactly what it pulls in: its raw packet socket (mdlayher/packet, mdlayher/socket,
		// x/net/bpf, x/sync/errgroup) and u-root/uio's buffers (which import lz4). The agent
		// grew from 8,147,106 to 8,646,818 bytes (-ldflags=-s) with the whole network root.
		"github.com/insomniacslk/dhcp/dhcpv4", "github.com/insomniacslk/dhcp/iana", "github.com/insomniacslk/dhcp/interfaces",
		"github.com/insomniacslk/dhcp/rfc1035label", "github.com/u-root/uio/uio", "github.com/u-root/uio/rand",
		"github.com/pierrec/lz4/v4", "github.com/josharian/native", "github.com/mdlayher/packet", "github.com/mdlayher/socket",
		"golang.org/x/net/bpf", "golang.org/x/sync/errgroup",
	}
	n := 0
	for _, p := range strings.Fields(string(out)) {
		n++
		ok := false
		for _, a := range allowed {
			ok = ok || strings.HasPrefix(p, a)
		}
		if !ok {
			t.Errorf("imgctl-node depends on %s (allowed: %q)", p, allowed)
		}
	}
	if n < 5 {
		t.Fatalf("go list found only %d packages: not looking at the node agent", n)
	}
}
