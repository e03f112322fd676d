package inventory

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseAddressErrors(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string // every line of the error, exactly
	}{
		{"not an address", head + okMachine + "- name: node-2\n  group: workers\n  macs: [\"52:54:00:00:00:02\"]\n  addresses: [\"10.0.0.300\"]\n",
			[]string{`inv.yaml:20: machines[1].addresses[0]: "10.0.0.300" is not an IP address or CIDR prefix (expected e.g. 10.0.0.11 or 10.0.0.0/24)`}},
		{"prefix too long", head + m("  addresses: [10.0.0.0/33]\n"),
			[]string{`inv.yaml:17: machines[0].addresses[0]: "10.0.0.0/33" is not an IP address or CIDR prefix (expected e.g. 10.0.0.11 or 10.0.0.0/24)`}},
		{"host name", head + m("  addresses: [node-1.example.com]\n"),
			[]string{`inv.yaml:17: machines[0].addresses[0]: "node-1.example.com" is not an IP address or CIDR prefix (expected e.g. 10.0.0.11 or 10.0.0.0/24)`}},
		{"host bits set", head + m("  addresses: [10.0.0.11/24]\n"),
			[]string{`inv.yaml:17: machines[0].addresses[0]: "10.0.0.11/24" has host bits set (expected 10.0.0.0/24, or 10.0.0.11 for that one address)`}},
		{"zone", head + m("  addresses: [\"fe80::1%eth0\"]\n"),
			[]string{`inv.yaml:17: machines[0].addresses[0]: "fe80::1%eth0" has a zone (expected an address without %ZONE)`}},
		{"unspecified", head + m("  addresses: [\"0.0.0.0\", \"::\"]\n"),
			[]string{`inv.yaml:17: machines[0].addresses[0]: 0.0.0.0 is the unspecified address: no machine sends from it (expected the machine's address, or 0.0.0.0/0 for any)`,
				`inv.yaml:17: machines[0].addresses[1]: :: is the unspecified address: no machine sends from it (expected the machine's address, or ::/0 for any)`}},
		{"listed twice", head + m("  addresses:\n  - 10.0.0.11\n  - 10.0.0.11/32\n  - \"::ffff:10.0.0.11\"\n"),
			[]string{`inv.yaml:19: machines[0].addresses[1]: 10.0.0.11 is listed twice (also machines[0].addresses[0])`,
				`inv.yaml:20: machines[0].addresses[2]: 10.0.0.11 is listed twice (also machines[0].addresses[0])`}},
		{"IPv4-mapped prefix wider than IPv4 has host bits", head + m("  addresses: [\"::ffff:0.0.0.0/95\"]\n"),
			[]string{`inv.yaml:17: machines[0].addresses[0]: "::ffff:0.0.0.0/95" has host bits set (expected ::fffe:0:0/95, or ::ffff:0.0.0.0 for that one address)`}},
		{"in a group", strings.Replace(head, "  role: node\n", "  role: node\n  addresses: [10.0.0.0/8, bad]\n", 1) + okMachine,
			[]string{`inv.yaml:6: groups[0].addresses[1]: "bad" is not an IP address or CIDR prefix (expected e.g. 10.0.0.11 or 10.0.0.0/24)`}},
		{"wrong type", head + m("  addresses: 10.0.0.11\n"),
			[]string{`inv.yaml:17: machines[0].addresses: expected a list of strings, got str "10.0.0.11"`}},
		{"too many", head + m("  addresses: ["+strings.Repeat("10.0.0.1, ", MaxAddresses)+"10.0.0.2]\n"),
			[]string{fmt.Sprintf(`inv.yaml:17: machines[0].addresses: %d items (expected at most %d)`, MaxAddresses+1, MaxAddresses)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			inv, err := parseString(t, c.src)
			if err == nil {
				t.Fatalf("Parse succeeded (%d machines), want errors %q", len(inv.Machines), c.want)
			}
			if got := strings.Split(err.Error(), "\n"); !slices.Equal(got, c.want) {
				t.Errorf("errors:\n got %q\nwant %q", got, c.want)
			}
		})
	}
}

// TestAddressesMerge: a machine's addresses replace its group's (an empty list too: any
// address); a machine without them has its group's; IPv4-mapped addresses are stored as IPv4.
func TestAddressesMerge(t *testing.T) {
	src := strings.Replace(head, "  role: node\n", "  role: node\n  addresses: [10.0.0.0/24, \"fd00::/64\"]\n", 1) + okMachine +
		`- name: node-2
  group: workers
  macs: ["52:54:00:00:00:02"]
  addresses: [10.1.0.12, "::ffff:10.2.0.0/112", "2001:db8::12"]
- name: node-3
  group: workers
  macs: ["52:54:00:00:00:03"]
  addresses: []
- name: node-4
  group: workers
  macs: ["52:54:00:00:00:04"]
- name: lonely
  role: master
  channel: staging
  serial: "12345"
  config: {cluster: {name: lab}}
`
	inv, err := parseString(t, src)
	if err != nil {
		t.Fatal(err)
	}
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	for name, want := range map[string][]netip.Prefix{
		"node-1": pfx("10.0.0.0/24", "fd00::/64"),
		"node-2": pfx("10.1.0.12/32", "10.2.0.0/16", "2001:db8::12/128"),
		"node-3": nil,
		"node-4": pfx("10.0.0.0/24", "fd00::/64"),
		"lonely": nil,
	} {
		m, _ := inv.Machine(name)
		if !slices.Equal(m.Addresses, want) {
			t.Errorf("%s: Addresses = %v, want %v", name, m.Addresses, want)
		}
	}
	// The group's list is not shared among its machines.
	n1, _ := inv.Machine("node-1")
	n1.Addresses[0] = netip.MustParsePrefix("192.0.2.0/24")
	if n4, _ := inv.Machine("node-4"); n4.Addresses[0] != netip.MustParsePrefix("10.0.0.0/24") {
		t.Errorf("node-4.Addresses changed with node-1's: %v", n4.Addresses)
	}
}

func TestAllowsAddr(t *testing.T) {
	inv, err := parseString(t, head+m("  addresses: [10.0.0.11, 10.1.0.0/16, \"fd00::/64\"]\n")+
		"- name: any\n  group: workers\n  macs: [\"52:54:00:00:00:02\"]\n")
	if err != nil {
		t.Fatal(err)
	}
	n1, _ := inv.Machine("node-1")
	anyM, _ := inv.Machine("any")
	for _, c := range []struct {
		addr string
		want bool
	}{
		{"10.0.0.11", true},
		{"::ffff:10.0.0.11", true}, // what a dual-stack listener reports for an IPv4 client
		{"10.0.0.12", false},
		{"10.1.255.254", true},
		{"::ffff:10.1.2.3", true},
		{"10.2.0.1", false},
		{"fd00::1", true},
		{"fd00::1%eth0", true}, // the zone is the listener's interface, not the node
		{"fd00:0:0:1::1", false},
		{"::1", false},
		{"127.0.0.1", false},
	} {
		a := netip.MustParseAddr(c.addr)
		if got := n1.AllowsAddr(a); got != c.want {
			t.Errorf("node-1.AllowsAddr(%s) = %v, want %v", c.addr, got, c.want)
		}
		if !anyM.AllowsAddr(a) {
			t.Errorf("a machine without addresses refuses %s", c.addr)
		}
	}
	if n1.AllowsAddr(netip.Addr{}) {
		t.Error("node-1 allows the zero Addr")
	}
	if !anyM.AllowsAddr(netip.Addr{}) {
		t.Error("a machine without addresses refuses the zero Addr")
	}
}
