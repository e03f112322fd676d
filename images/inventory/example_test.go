package inventory

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/imgctl/imgctl/images/nodeconfig"
)

// TestLoadExample: the repository's commented example loads as it is.
func TestLoadExample(t *testing.T) {
	inv, err := Load("../../examples/inventory.yaml")
	if err != nil {
		t.Fatalf("Load(examples/inventory.yaml): %v", err)
	}
	var names []string
	for _, m := range inv.Machines {
		names = append(names, m.Name)
	}
	if want := []string{"cp-1", "node-1", "node-2"}; !slices.Equal(names, want) {
		t.Errorf("machines %q, want %q", names, want)
	}
	n1, ok := inv.Lookup(Identity{MAC: "52:54:00:12:34:57"})
	if !ok || n1.Name != "node-1" {
		t.Fatalf("Lookup(node-1's second MAC) = %v, %v", n1, ok)
	}
	if n1.Role != nodeconfig.RoleNode || n1.Channel != "prod" || n1.Secret.BootstrapToken == "" || n1.Config.Spec.Credentials != nil {
		t.Errorf("node-1 = %+v: want the workers group's role, channel and secret file, and no credentials in Config", n1)
	}
	if !n1.AllowsAddr(netip.MustParseAddr("10.0.0.21")) || n1.AllowsAddr(netip.MustParseAddr("10.0.0.22")) {
		t.Errorf("node-1.Addresses = %v: want its reservation 10.0.0.21 only", n1.Addresses)
	}
	if got := inv.Channels(); !slices.Equal(got, []string{"prod"}) {
		t.Errorf("Channels() = %q", got)
	}
}
