package health

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the health checks in the standard library: no grpc-go, no generated CRI package.
func TestDeps(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}",
		"github.com/imgctl/imgctl/cmd/imgctl-node/internal/health").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if p != "github.com/imgctl/imgctl/cmd/imgctl-node/internal/health" {
			t.Errorf("health depends on %s", p)
		}
	}
}
