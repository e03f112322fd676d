package inventory

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/nodeconfig"
)

const (
	zeroHash = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	oneHash  = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	token    = "abcdef.0123456789abcdef"
	// head is a valid inventory up to "machines:" (line 13); the first machine starts at line 14.
	head = `apiVersion: imgctl/v1alpha1
kind: Inventory
groups:
- name: workers
  role: node
  channel: prod
  labels: {example.com/pool: general}
  kernelArgs: [console=ttyS0]
  config:
    cluster: {name: prod, apiServer: "https://10.0.0.10:6443"}
    kubelet: {maxPods: 110, nodeLabels: {a: b}}
  secret: {bootstrapToken: ` + token + `, caCertHashes: ["` + zeroHash + `"]}
machines:
`
	okMachine = "- name: node-1\n  group: workers\n  macs: [\"52:54:00:12:34:56\"]\n"
)

func parseString(t *testing.T, src string) (*Inventory, error) {
	t.Helper()
	return Parse("inv.yaml", []byte(src), t.TempDir())
}

func errLines(err error) []string {
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

func TestParseMerge(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "s.yaml"), []byte("caCertHashes: [\""+oneHash+"\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := head + okMachine + `- name: node-2
  group: workers
  macs: ["52-54-00-AB-CD-EF", 5254000000ff]
  uuid: 4C4C4544-0042-3510-8052-B4C04F4E3132
  serial: "  CZ123  "
  role: masterFollower
  image: 1.21.13-6.1.0-20261126.1
  labels: {example.com/pool: big, zone: z1}
  kernelArgs: [debug]
  config:
    cluster: {apiServer: "https://10.0.0.11:6443"}
    kubelet: {nodeLabels: {c: d}}
  secretFile: s.yaml
- name: lonely
  role: master
  channel: staging
  serial: "12345"
  config: {cluster: {name: lab}}
`
	src = strings.Replace(src, "  secretFile: s.yaml\n", "  secretFile: s.yaml\n", 1)
	// masterFollower needs a certificateKey: the group's secret lacks it, so put it in the file.
	if err := os.WriteFile(filepath.Join(dir, "s.yaml"), []byte("caCertHashes: [\""+oneHash+"\"]\ncertificateKey: "+strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	inv, err := Parse("inv.yaml", []byte(src), dir)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if inv.Source != "inv.yaml" || len(inv.Warnings) != 0 {
		t.Errorf("Source %q, Warnings %q", inv.Source, inv.Warnings)
	}
	n2, ok := inv.Machine("node-2")
	if !ok {
		t.Fatal("Machine(node-2) not found")
	}
	want := &Machine{
		Name: "node-2", Group: "workers", Role: nodeconfig.RoleMasterFollower,
		Image:      "1.21.13-6.1.0-20261126.1",
		Labels:     map[string]string{"example.com/pool": "big", "zone": "z1"},
		MACs:       []string{"52:54:00:ab:cd:ef", "52:54:00:00:00:ff"},
		UUID:       "4c4c4544-0042-3510-8052-b4c04f4e3132",
		Serial:     "CZ123",
		KernelArgs: []string{"console=ttyS0", "debug"},
		Config: nodeconfig.NodeConfig{
			APIVersion: nodeconfig.APIVersion, Kind: nodeconfig.Kind,
			Metadata: nodeconfig.ObjectMeta{Name: "node-2"},
			Spec: nodeconfig.Spec{
				Role:    nodeconfig.RoleMasterFollower,
				Cluster: nodeconfig.Cluster{Name: "prod", APIServer: "https://10.0.0.11:6443"},
				Kubelet: nodeconfig.Kubelet{MaxPods: 110, NodeLabels: map[string]string{"a": "b", "c": "d", "example.com/pool": "big", "zone": "z1"}},
			},
		},
		// The file's fields over the group's, one by one.
		Secret: nodeconfig.Credentials{BootstrapToken: token, CACertHashes: []string{oneHash}, CertificateKey: strings.Repeat("ab", 32)},
	}
	got := *n2
	got.pos, got.channelPos, got.channelField = position{}, position{}, ""
	if !reflect.DeepEqual(&got, want) {
		t.Errorf("node-2:\n got %+v\nwant %+v", got, *want)
	}
	n1, _ := inv.Machine("node-1")
	if n1.Channel != "prod" || n1.Image != "" || !slices.Equal(n1.KernelArgs, []string{"console=ttyS0"}) ||
		n1.Config.Spec.Cluster.DNSDomain != "" || n1.Config.Spec.Credentials != nil || n1.Secret.BootstrapToken != token {
		t.Errorf("node-1 = %+v: want the group's channel, kernel args and secret, no defaults, no credentials in Config", n1)
	}
	if got := inv.Channels(); !slices.Equal(got, []string{"prod", "staging"}) {
		t.Errorf("Channels() = %q", got)
	}
	var names []string
	for _, m := range inv.Machines {
		names = append(names, m.Name)
	}
	if !slices.Equal(names, []string{"lonely", "node-1", "node-2"}) {
		t.Errorf("Machines not sorted by name: %q", names)
	}
	// The group's maps are not shared with (or changed by) its machines.
	if n1.Labels["example.com/pool"] != "general" || len(n1.Config.Spec.Kubelet.NodeLabels) != 2 {
		t.Errorf("node-1 labels %v, nodeLabels %v", n1.Labels, n1.Config.Spec.Kubelet.NodeLabels)
	}
}

func TestLookup(t *testing.T) {
	inv, err := parseString(t, head+okMachine+`- name: node-2
  group: workers
  macs: ["52:54:00:00:00:02"]
  uuid: 4c4c4544-0042-3510-8052-b4c04f4e3132
  serial: SER-2
- name: node-3
  group: workers
  serial: SER-3
`)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id   Identity
		want string
	}{
		{Identity{MAC: "52:54:00:12:34:56"}, "node-1"},
		{Identity{MAC: "52:54:00:00:00:02"}, "node-2"},
		{Identity{UUID: "4c4c4544-0042-3510-8052-b4c04f4e3132"}, "node-2"},
		{Identity{Serial: "SER-3"}, "node-3"},
		// MAC first, then UUID, then serial.
		{Identity{MAC: "52:54:00:12:34:56", UUID: "4c4c4544-0042-3510-8052-b4c04f4e3132", Serial: "SER-3"}, "node-1"},
		{Identity{MAC: "52:54:00:99:99:99", UUID: "4c4c4544-0042-3510-8052-b4c04f4e3132", Serial: "SER-3"}, "node-2"},
		{Identity{MAC: "52:54:00:99:99:99", Serial: "SER-3"}, "node-3"},
		{Identity{MAC: "52:54:00:99:99:99"}, ""},
		{Identity{}, ""},
	} {
		m, ok := inv.Lookup(c.id)
		got := ""
		if ok {
			got = m.Name
		}
		if got != c.want {
			t.Errorf("Lookup(%+v) = %q, want %q", c.id, got, c.want)
		}
	}
	if _, ok := inv.Machine("node-9"); ok {
		t.Error("Machine(node-9) found")
	}
}

// m is a machine of the workers group at line 14 with extra fields.
func m(extra string) string { return okMachine + extra }

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string // every line of the error, exactly
	}{
		{"bad MAC", head + "- name: a\n  group: workers\n  macs: [\"52:54:zz:12:34:56\"]\n",
			[]string{`inv.yaml:16: machines[0].macs[0]: "52:54:zz:12:34:56" is not a MAC address (expected aa:bb:cc:dd:ee:ff)`}},
		{"short MAC", head + "- name: a\n  group: workers\n  macs: [\"52:54:00:12:34\"]\n",
			[]string{`inv.yaml:16: machines[0].macs[0]: "52:54:00:12:34" is not a MAC address (expected aa:bb:cc:dd:ee:ff)`}},
		{"multicast MAC", head + "- name: a\n  group: workers\n  macs: [\"01:00:5e:00:00:01\"]\n",
			[]string{`inv.yaml:16: machines[0].macs[0]: 01:00:5e:00:00:01 is a multicast address (expected a NIC's unicast address)`}},
		{"zero MAC", head + "- name: a\n  group: workers\n  macs: [\"00:00:00:00:00:00\"]\n",
			[]string{`inv.yaml:16: machines[0].macs[0]: 00:00:00:00:00:00 is the all-zero MAC address (expected a NIC's address)`}},
		{"broadcast MAC", head + "- name: a\n  group: workers\n  macs: [\"FF:FF:FF:FF:FF:FF\"]\n",
			[]string{`inv.yaml:16: machines[0].macs[0]: ff:ff:ff:ff:ff:ff is the broadcast address (expected a NIC's address)`}},
		{"MAC twice in a machine", head + "- name: a\n  group: workers\n  macs: [\"52:54:00:12:34:56\", \"52-54-00-12-34-56\"]\n",
			[]string{`inv.yaml:16: machines[0].macs[1]: 52:54:00:12:34:56 is listed twice (also machines[0].macs[0])`}},
		{"duplicate MAC across machines", head + okMachine + "- name: node-2\n  group: workers\n  macs:\n  - 52:54:00:00:00:01\n  - 52:54:00:12:34:56\n",
			[]string{`inv.yaml:21: machines[1].macs[1]: MAC 52:54:00:12:34:56 of machine "node-2" is also machine "node-1"'s (machines[0] at inv.yaml:14)`}},
		{"duplicate UUID", head + m("  uuid: 4c4c4544-0042-3510-8052-b4c04f4e3132\n") + "- name: node-2\n  group: workers\n  uuid: 4C4C4544-0042-3510-8052-B4C04F4E3132\n",
			[]string{`inv.yaml:20: machines[1].uuid: UUID 4c4c4544-0042-3510-8052-b4c04f4e3132 of machine "node-2" is also machine "node-1"'s (machines[0] at inv.yaml:14)`}},
		{"duplicate serial", head + m("  serial: S1\n") + "- name: node-2\n  group: workers\n  serial: S1\n",
			[]string{`inv.yaml:20: machines[1].serial: serial "S1" of machine "node-2" is also machine "node-1"'s (machines[0] at inv.yaml:14)`}},
		{"duplicate name", head + okMachine + "- name: node-1\n  group: workers\n  macs: [\"52:54:00:00:00:09\"]\n",
			[]string{`inv.yaml:17: machines[1].name: machine name "node-1" is taken by machines[0] at inv.yaml:14`}},
		{"unknown group", head + "- name: a\n  group: wrokers\n  macs: [\"52:54:00:12:34:56\"]\n",
			[]string{`inv.yaml:15: machines[0].group: unknown group "wrokers" (expected one of workers)`}},
		{"no identity", head + "- name: a\n  group: workers\n",
			[]string{`inv.yaml:14: machines[0]: machine "a" has no identity (expected macs, uuid or serial)`}},
		{"no name", head + "- group: workers\n  macs: [\"52:54:00:12:34:56\"]\n",
			[]string{`inv.yaml:14: machines[0]: missing name (the node name, e.g. node-1)`}},
		{"bad name", head + "- name: Node_1\n  group: workers\n  macs: [\"52:54:00:12:34:56\"]\n",
			[]string{`inv.yaml:14: machines[0].name: "Node_1" is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.'; dot-separated labels of at most 63, each starting and ending with a letter or digit) (the machine name is its node name)`}},
		{"channel and image", head + m("  channel: prod\n  image: v1\n"),
			[]string{`inv.yaml:18: machines[0].image: set either channel (followed at every boot) or image (pinned), not both`}},
		{"boots nothing", head + "- name: a\n  role: master\n  macs: [\"52:54:00:12:34:56\"]\n  config: {cluster: {name: c}}\n",
			[]string{`inv.yaml:14: machines[0]: machine "a" boots nothing (expected channel: or image:, on the machine or its group)`}},
		{"no role", head + "- name: a\n  channel: prod\n  macs: [\"52:54:00:12:34:56\"]\n",
			[]string{`inv.yaml:14: machines[0]: machine "a" has no role (expected role: master, masterFollower or node, on the machine or its group)`}},
		{"role of the wrong type", head + m("  role: [node]\n"),
			[]string{`inv.yaml:17: machines[0].role: expected a string, got a list`}},
		{"channel of the wrong type", head + m("  channel: {a: b}\n"),
			[]string{`inv.yaml:17: machines[0].channel: expected a string, got a mapping`}},
		{"empty group", head + "- name: a\n  group: \"\"\n  macs: [\"52:54:00:12:34:56\"]\n",
			[]string{`inv.yaml:15: machines[0].group: empty group name`}},
		{"unknown role", head + m("  role: worker\n"),
			[]string{`inv.yaml:17: machines[0].role: unknown role "worker" (expected master, masterFollower or node)`}},
		{"bad channel", head + m("  channel: Prod\n"),
			[]string{`inv.yaml:17: machines[0].channel: channel name "Prod": want 1 to 63 lower-case letters, digits or '-', starting and ending with a letter or digit`}},
		{"short digest", head + m("  image: sha256:abc\n"),
			[]string{`inv.yaml:17: machines[0].image: "sha256:abc" is not an image digest (expected sha256: and 64 lower-case hex digits)`}},
		{"bad version", head + m("  image: a/b\n"),
			[]string{`inv.yaml:17: machines[0].image: "a/b" is neither an image digest (sha256:HEX) nor an image version: version "a/b": want [A-Za-z0-9][A-Za-z0-9._+-]* (at most 128 characters)`}},
		{"bad UUID", head + m("  uuid: 4c4c4544-0042-3510-8052\n"),
			[]string{`inv.yaml:17: machines[0].uuid: "4c4c4544-0042-3510-8052" is not a UUID (expected 8-4-4-4-12 hex digits, as iPXE's ${uuid} or dmidecode -s system-uuid print it)`}},
		{"zero UUID", head + m("  uuid: 00000000-0000-0000-0000-000000000000\n"),
			[]string{`inv.yaml:17: machines[0].uuid: 00000000-0000-0000-0000-000000000000 is what firmware reports when it has no UUID (expected the machine's own)`}},
		{"all-f UUID", head + m("  uuid: FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF\n"),
			[]string{`inv.yaml:17: machines[0].uuid: ffffffff-ffff-ffff-ffff-ffffffffffff is what firmware reports when it has no UUID (expected the machine's own)`}},
		{"placeholder serial", head + m("  serial: To Be Filled By O.E.M.\n"),
			[]string{`inv.yaml:17: machines[0].serial: "To Be Filled By O.E.M." is a firmware placeholder many machines share (expected the machine's own serial number)`}},
		{"long serial", head + m("  serial: "+strings.Repeat("x", 65)+"\n"),
			[]string{`inv.yaml:17: machines[0].serial: "` + strings.Repeat("x", 65) + `" is 65 characters (expected a serial number of at most 64)`}},
		{"control character in serial", head + m("  serial: \"a\\tb\"\n"),
			[]string{`inv.yaml:17: machines[0].serial: "a\tb" is not a serial number (expected printable ASCII)`}},
		{"bad kernel arg", head + m("  kernelArgs: [\"x=${uuid}\", \"a b\"]\n"),
			[]string{`inv.yaml:17: machines[0].kernelArgs[0]: kernel argument "x=${uuid}": "$" is not allowed (iPXE would expand it)`,
				`inv.yaml:17: machines[0].kernelArgs[1]: kernel argument "a b": white space is allowed only inside double quotes (one argument per list item)`}},
		{"unknown field", head + m("  mac: [\"52:54:00:12:34:57\"]\n"),
			[]string{`inv.yaml:17: machines[0].mac: unknown field (expected one of name, group, macs, uuid, serial, addresses, role, channel, image, labels, kernelArgs, config, secret, secretFile)`}},
		{"duplicate field", head + m("  group: workers\n"),
			[]string{`inv.yaml:17: machines[0].group: duplicate field (first at line 15)`}},
		{"wrong type", head + "- name: a\n  group: workers\n  macs: 52:54:00:12:34:56\n",
			[]string{`inv.yaml:16: machines[0].macs: expected a list of strings, got str "52:54:00:12:34:56"`}},
		{"config role and credentials", head + m("  config: {role: node, credentials: {bootstrapToken: x}}\n"),
			[]string{`inv.yaml:17: machines[0].config.role: set role next to config (on the machine or its group), not in it`,
				`inv.yaml:17: machines[0].config.credentials: credentials are secret: put them in secret or secretFile, not in config`}},
		{"config unknown field", head + m("  config:\n    cluster:\n      apiSever: https://x\n"),
			[]string{`inv.yaml:19: machines[0].config.cluster.apiSever: unknown field (expected name, apiServer, dnsDomain, serviceCIDR, podCIDR, clusterDNS, caCertificate, adminKubeconfig or etcd)`}},
		{"config wrong type", head + m("  config:\n    kubelet:\n      maxPods: lots\n"),
			[]string{`inv.yaml:19: machines[0].config.kubelet.maxPods: expected an integer, got str "lots"`}},
		{"config bad value in machine", head + m("  config:\n    cluster:\n      podCIDR: 10.96.0.0/16\n"),
			[]string{`inv.yaml:19: machines[0].config.cluster.podCIDR: 10.96.0.0/16 overlaps serviceCIDR 10.96.0.0/12`}},
		{"bad label", head + m("  labels: {\"bad key!\": v}\n"),
			[]string{`inv.yaml:17: machines[0].labels.bad key!: bad label key: name "bad key!": expected at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends`}},
		{"label conflicts with nodeLabels", head + m("  labels: {a: c}\n"),
			[]string{`inv.yaml:17: machines[0].labels.a: label a="c" conflicts with config.kubelet.nodeLabels a="b" (labels become node labels)`}},
		{"role needs a field set nowhere", head + "- name: a\n  role: node\n  channel: prod\n  macs: [\"52:54:00:12:34:56\"]\n",
			[]string{`inv.yaml:14: machines[0]: machine "a": NodeConfig spec.cluster.apiServer: required for role node`,
				`inv.yaml:14: machines[0]: machine "a": NodeConfig spec.credentials: role node needs bootstrapToken and caCertHashes, or clientCertificate, clientKey and spec.cluster.caCertificate`}},
		{"group value reported once for all its machines",
			strings.Replace(head, `apiServer: "https://10.0.0.10:6443"`, `apiServer: "http://10.0.0.10"`, 1) + okMachine + "- name: node-2\n  group: workers\n  macs: [\"52:54:00:00:00:02\"]\n",
			[]string{`inv.yaml:10: groups[0].config.cluster.apiServer: "http://10.0.0.10": expected https://HOST[:PORT] (NodeConfig of machine "node-1")`}},
		{"secret over group for the wrong role", head + m("  role: master\n  secret: {caKey: x}\n"),
			[]string{`inv.yaml:14: machines[0]: machine "node-1": NodeConfig spec.cluster.caCertificate: required for role master`,
				`inv.yaml:18: machines[0].secret.caKey: no PEM private key`}},
		{"secret and secretFile", head + m("  secret: {bootstrapToken: "+token+"}\n  secretFile: s.yaml\n"),
			[]string{`inv.yaml:18: machines[0].secretFile: set either secret or secretFile, not both`}},
		{"missing secretFile", head + m("  secretFile: nope.yaml\n"),
			[]string{`inv.yaml:17: machines[0].secretFile: secret file: open DIR/nope.yaml: no such file or directory`}},
		{"empty secretFile", head + m("  secretFile: \"\"\n"),
			[]string{`inv.yaml:17: machines[0].secretFile: empty path (expected a file of credentials, relative to the inventory's directory)`}},
		{"duplicate group", strings.Replace(head, "machines:\n", "- name: workers\n  role: master\nmachines:\n", 1) + "- name: a\n  role: master\n  channel: prod\n  macs: [\"52:54:00:12:34:56\"]\n  config: {cluster: {name: c}}\n",
			[]string{`inv.yaml:13: groups[1].name: group workers is defined twice (first as groups[0] at line 4)`}},
		{"bad group name", strings.Replace(head, "name: workers", "name: Workers", 1) + "- name: a\n  group: Workers\n  macs: [\"52:54:00:12:34:56\"]\n",
			[]string{`inv.yaml:4: groups[0].name: "Workers" is not a DNS-1123 label (lower-case letters, digits and '-', at most 63)`}},
		{"group field unknown", strings.Replace(head, "  role: node\n", "  role: node\n  macs: []\n", 1) + okMachine,
			[]string{`inv.yaml:6: groups[0].macs: unknown field (expected one of name, addresses, role, channel, image, labels, kernelArgs, config, secret, secretFile)`}},
		{"wrong apiVersion and kind", "apiVersion: v1\nkind: ConfigMap\n",
			[]string{`inv.yaml:1: apiVersion: got "v1" (expected imgctl/v1alpha1)`, `inv.yaml:2: kind: got "ConfigMap" (expected Inventory)`}},
		{"missing apiVersion and kind", "machines: []\n",
			[]string{`inv.yaml:1: apiVersion: missing (expected imgctl/v1alpha1)`, `inv.yaml:1: kind: missing (expected Inventory)`}},
		{"top-level unknown field", "apiVersion: imgctl/v1alpha1\nkind: Inventory\nnodes: []\n",
			[]string{`inv.yaml:3: nodes: unknown field (expected one of apiVersion, kind, groups, machines)`}},
		{"malformed YAML", "apiVersion: imgctl/v1alpha1\nkind: [\n",
			[]string{`inv.yaml:3: malformed YAML: did not find expected node content`}},
		{"two documents", "apiVersion: imgctl/v1alpha1\nkind: Inventory\n---\na: 1\n",
			[]string{`inv.yaml:3: more than one YAML document (the file holds one: an Inventory with apiVersion imgctl/v1alpha1)`}},
		{"empty", "",
			[]string{`inv.yaml:1: empty document (expected an Inventory with apiVersion imgctl/v1alpha1)`}},
		{"not a mapping", "- a\n",
			[]string{`inv.yaml:1: expected an Inventory document (a mapping with apiVersion, kind, groups, machines), got a list`}},
		{"machines not a list", "apiVersion: imgctl/v1alpha1\nkind: Inventory\nmachines: {a: 1}\n",
			[]string{`inv.yaml:3: machines: expected a list of machines, got a mapping`}},
		{"too many MACs", head + "- name: a\n  group: workers\n  macs: [" + strings.Repeat(`"52:54:00:12:34:56", `, MaxMACs) + "\"52:54:00:12:34:57\"]\n",
			[]string{fmt.Sprintf(`inv.yaml:16: machines[0].macs: %d items (expected at most %d)`, MaxMACs+1, MaxMACs)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			inv, err := Parse("inv.yaml", []byte(c.src), dir)
			if err == nil {
				t.Fatalf("Parse succeeded (%d machines), want errors %q", len(inv.Machines), c.want)
			}
			if inv != nil {
				t.Errorf("Parse returned an inventory with its error")
			}
			got := strings.ReplaceAll(err.Error(), dir, "DIR")
			if !slices.Equal(strings.Split(got, "\n"), c.want) {
				t.Errorf("errors:\n got %q\nwant %q", strings.Split(got, "\n"), c.want)
			}
			for _, e := range Errors(err) {
				if e.File == "" || e.Line == 0 {
					t.Errorf("error %q has no file and line", e)
				}
			}
		})
	}
}
