package metadata

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the node agent small and static: the metadata code and the NodeConfig schema may
// use only the standard library, golang.org/x/sys, yaml.v3 and imgctl's own packages.
func TestDeps(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}",
		"github.com/imgctl/imgctl/cmd/imgctl-node/internal/metadata", "github.com/imgctl/imgctl/images/nodeconfig").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		switch {
		case p == "gopkg.in/yaml.v3",
			strings.HasPrefix(p, "golang.org/x/sys/"),
			p == "github.com/imgctl/imgctl/images/nodeconfig",
			strings.HasPrefix(p, "github.com/imgctl/imgctl/cmd/imgctl-node/"):
		default:
			t.Errorf("metadata depends on %s", p)
		}
	}
}
