package inventory

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/nodeconfig"
)

// FuzzParse: Parse never panics, either fails with located errors or returns an inventory that
// keeps its promises (one of channel and image, a valid role, unique identities that look
// each machine up, a public Config that validates with the secret part), and never quotes the
// secret it was given in an error.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("../../examples/inventory.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(example))
	f.Add(head + okMachine)
	f.Add(head + okMachine + machine2 + "- name: n3\n  role: master\n  image: v1\n  serial: S3\n  config: {cluster: {name: c}}\n")
	f.Add(head + "- name: a\n  group: workers\n  macs: [\"52:54:zz:12:34:56\"]\n  secretFile: s.yaml\n")
	f.Add("apiVersion: imgctl/v1alpha1\nkind: Inventory\nmachines: &m [*m]\n")
	f.Add(head + okMachine + "- name: a2\n  group: workers\n  serial: S2\n  addresses: [10.0.0.11, \"::ffff:10.1.0.0/112\", \"fd00::/64\"]\n")
	f.Add(head + "- &x {name: a, group: workers, macs: [\"52:54:00:12:34:56\"]}\n- *x\n")
	f.Fuzz(func(t *testing.T, src string) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "s.yaml"), []byte("bootstrapToken: "+token+"\ncaCertHashes: [\""+zeroHash+"\"]\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		inv, err := Parse("inv.yaml", []byte(src), dir)
		if err != nil {
			if inv != nil {
				t.Fatal("Parse returned an inventory with an error")
			}
			for _, e := range Errors(err) {
				if e.File == "" || e.Msg == "" {
					t.Fatalf("unlocated error %q", e)
				}
			}
			if !strings.Contains(src, token) && strings.Contains(err.Error(), token) {
				t.Fatalf("the secret file's token shows in %q", err)
			}
			return
		}
		if !slices.IsSortedFunc(inv.Machines, func(a, b *Machine) int { return strings.Compare(a.Name, b.Name) }) {
			t.Fatal("machines not sorted")
		}
		for _, m := range inv.Machines {
			if (m.Channel == "") == (m.Image == "") {
				t.Fatalf("machine %s: channel %q, image %q", m.Name, m.Channel, m.Image)
			}
			if !slices.Contains(nodeconfig.Roles, m.Role) || m.Config.Spec.Role != m.Role || m.Config.Metadata.Name != m.Name {
				t.Fatalf("machine %s: role %q, config %+v", m.Name, m.Role, m.Config)
			}
			if m.Config.Spec.Credentials != nil {
				t.Fatalf("machine %s: credentials in the public config", m.Name)
			}
			full := nodeconfig.Merge(m.Config, m.Secret)
			full.Defaults()
			if err := full.Validate(); err != nil {
				t.Fatalf("machine %s: merged config does not validate: %v", m.Name, err)
			}
			for _, mac := range m.MACs {
				if got, ok := inv.Lookup(Identity{MAC: mac}); !ok || got != m {
					t.Fatalf("Lookup(%s) is not machine %s", mac, m.Name)
				}
			}
			if m.UUID != "" {
				if got, ok := inv.Lookup(Identity{UUID: m.UUID}); !ok || got != m {
					t.Fatalf("Lookup(%s) is not machine %s", m.UUID, m.Name)
				}
			}
			for _, p := range m.Addresses {
				if !p.IsValid() || p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "" || !m.AllowsAddr(p.Addr()) {
					t.Fatalf("machine %s: address %v", m.Name, p)
				}
			}
			if got, ok := inv.Machine(m.Name); !ok || got != m {
				t.Fatalf("Machine(%s) is not it", m.Name)
			}
		}
	})
}
