package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/inventory"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// fakeChannels is a channel.Backend with fixed histories.
type fakeChannels struct {
	order []string
	heads map[string][]channel.Entry
}

func (f *fakeChannels) Order() ([]string, error) { return f.order, nil }

func (f *fakeChannels) History(_ context.Context, ch string) (channel.History, error) {
	if !slices.Contains(f.order, ch) {
		return channel.History{}, fmt.Errorf("channel %q: %w", ch, channel.ErrUnknownChannel)
	}
	return channel.History{SchemaVersion: 1, Channel: ch, Entries: f.heads[ch]}, nil
}

func (f *fakeChannels) Move(context.Context, string, digest.Digest, channel.Entry) (channel.Entry, error) {
	return channel.Entry{}, errors.New("read only")
}

// pxeImage stores a netboot image of version whose rootfs.squashfs derives from version.
func pxeImage(t *testing.T, st *store.Store, version string, epoch int64) (store.Image, digest.Digest) {
	t.Helper()
	root := []byte("squashfs of " + version)
	files := append(storetest.DefaultFiles(version), storetest.File{Name: "rootfs.squashfs", MediaType: manifest.SquashfsMediaType, Content: root})
	return storetest.PutImage(t, st, storetest.Config(version, epoch), files), digest.FromBytes(root)
}

type statusEnv struct {
	st       *store.Store
	r        *Reports
	channels *fakeChannels
	v1, v2   store.Image
	v3       store.Image // in the store, in no channel
	root1    digest.Digest
	root2    digest.Digest
	gone     digest.Digest // an image the channel history names but the store no longer has
}

// newStatusEnv: nightly went v0 (gone from the store) → v1 → v2 (head); staging is at v1; prod
// never moved.
func newStatusEnv(t *testing.T) *statusEnv {
	t.Helper()
	e := &statusEnv{st: storetest.Open(t)}
	e.v1, e.root1 = pxeImage(t, e.st, "1.0.1", 1001)
	e.v2, e.root2 = pxeImage(t, e.st, "1.0.2", 1002)
	e.v3 = storetest.PutVersion(t, e.st, "1.0.3", 1003)
	e.gone = digest.FromString("an image removed by gc")
	when := t0.Add(-time.Hour)
	e.channels = &fakeChannels{order: []string{"nightly", "staging", "prod"}, heads: map[string][]channel.Entry{
		"nightly": {
			{Seq: 1, Channel: "nightly", Action: channel.ActionPromote, To: e.gone, ToVersion: "1.0.0", When: when},
			{Seq: 2, Channel: "nightly", Action: channel.ActionPromote, From: e.gone, To: e.v1.Digest(), ToVersion: "1.0.1", When: when},
			{Seq: 3, Channel: "nightly", Action: channel.ActionPromote, From: e.v1.Digest(), To: e.v2.Digest(), ToVersion: "1.0.2", When: when},
		},
		"staging": {{Seq: 1, Channel: "staging", Action: channel.ActionPromote, To: e.v1.Digest(), ToVersion: "1.0.1", When: when}},
	}}
	r, err := Open(StoreDir(e.st.Dir()), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	e.r = r
	return e
}

// save records a report of node in ch, served img; failed names a failed step ("" = ok);
// root is the root digest the node reports ("" = none).
func (e *statusEnv) save(t *testing.T, node, ch string, img digest.Digest, phase nodeapi.Phase, failed string, root digest.Digest, n int) {
	t.Helper()
	rec := record(node, img, n)
	rec.Channel = ch
	rec.Report = report(phase, failed, rec.Received)
	rec.Report.RootDigest = string(root)
	if err := e.r.Save(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
}

// testInventory parses an inventory of machines (YAML list items) that may use the workers
// group (role node).
func testInventory(t *testing.T, machines string) *inventory.Inventory {
	t.Helper()
	inv, err := inventory.Parse("inv.yaml", []byte(`apiVersion: imgctl/v1alpha1
kind: Inventory
groups:
- name: workers
  role: node
  config: {cluster: {apiServer: "https://10.0.0.10:6443"}}
  secret: {bootstrapToken: abcdef.0123456789abcdef, caCertHashes: ["sha256:`+strings.Repeat("0", 64)+`"]}
machines:
`+machines), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

// fleet is an inventory of a (nightly), c (nightly), p (pinned) and s2 (staging).
const fleet = `- {name: a, group: workers, channel: nightly, macs: ["52:54:00:00:00:0a"]}
- {name: c, group: workers, channel: nightly, macs: ["52:54:00:00:00:0c"]}
- {name: p, group: workers, image: 1.0.3, serial: P1}
- {name: s2, group: workers, channel: staging, serial: S2}
`

func TestStatus(t *testing.T) {
	type node struct {
		node, channel, version string
		onHead, ok, mismatch   bool
		phase                  nodeapi.Phase
		failed, lastStep       string
		neverReported          bool
	}
	type ch struct {
		name, version                          string
		nodes, onHead, failed, stale, mismatch int
		neverReported                          int
	}
	for _, c := range []struct {
		name      string
		setup     func(t *testing.T, e *statusEnv)
		only      string
		inventory string // machines of an inventory given with WithInventory; "": none
		nodes     []node
		channels  []ch
	}{
		{
			name:  "no reports",
			setup: func(*testing.T, *statusEnv) {},
			channels: []ch{
				{name: "nightly", version: "1.0.2"}, {name: "staging", version: "1.0.1"}, {name: "prod"},
			},
		},
		{
			name: "nodes on the head and on an older image",
			setup: func(t *testing.T, e *statusEnv) {
				e.save(t, "a", "nightly", e.v2.Digest(), nodeapi.PhaseConfigure, "", e.root2, 2)
				e.save(t, "b", "nightly", e.v1.Digest(), nodeapi.PhaseConfigure, "", e.root1, 1)
				e.save(t, "s1", "staging", e.v1.Digest(), nodeapi.PhaseInit, "", "", 3)
			},
			nodes: []node{
				{node: "a", channel: "nightly", version: "1.0.2", onHead: true, ok: true, phase: nodeapi.PhaseConfigure, lastStep: "network"},
				{node: "b", channel: "nightly", version: "1.0.1", ok: true, phase: nodeapi.PhaseConfigure, lastStep: "network"},
				{node: "s1", channel: "staging", version: "1.0.1", onHead: true, ok: true, phase: nodeapi.PhaseInit, lastStep: "network"},
			},
			channels: []ch{
				{name: "nightly", version: "1.0.2", nodes: 2, onHead: 1, stale: 1},
				{name: "staging", version: "1.0.1", nodes: 1, onHead: 1},
				{name: "prod"},
			},
		},
		{
			name: "failed boot and a root that is not the served one",
			setup: func(t *testing.T, e *statusEnv) {
				e.save(t, "a", "nightly", e.v2.Digest(), nodeapi.PhaseInit, "fetch-root", "", 1)
				e.save(t, "b", "nightly", e.v2.Digest(), nodeapi.PhaseConfigure, "", e.root1, 2)
			},
			nodes: []node{
				{node: "a", channel: "nightly", version: "1.0.2", onHead: true, phase: nodeapi.PhaseInit, failed: "fetch-root", lastStep: "fetch-root"},
				{node: "b", channel: "nightly", version: "1.0.2", onHead: true, ok: true, mismatch: true, phase: nodeapi.PhaseConfigure, lastStep: "network"},
			},
			channels: []ch{
				{name: "nightly", version: "1.0.2", nodes: 2, failed: 1, onHead: 0, mismatch: 1},
				{name: "staging", version: "1.0.1"}, {name: "prod"},
			},
		},
		{
			name: "versions from the store, else from the history; an image without a root is not compared",
			setup: func(t *testing.T, e *statusEnv) {
				e.save(t, "old", "nightly", e.gone, nodeapi.PhaseConfigure, "", e.root1, 1)
				e.save(t, "pinned", "", e.v3.Digest(), nodeapi.PhaseConfigure, "", e.root1, 2)
			},
			nodes: []node{
				{node: "old", channel: "nightly", version: "1.0.0", ok: true, phase: nodeapi.PhaseConfigure, lastStep: "network"},
				{node: "pinned", version: "1.0.3", ok: true, phase: nodeapi.PhaseConfigure, lastStep: "network"},
			},
			channels: []ch{
				{name: "nightly", version: "1.0.2", nodes: 1, stale: 1}, {name: "staging", version: "1.0.1"}, {name: "prod"},
			},
		},
		{
			name: "filter by channel",
			setup: func(t *testing.T, e *statusEnv) {
				e.save(t, "a", "nightly", e.v2.Digest(), nodeapi.PhaseConfigure, "", e.root2, 1)
				e.save(t, "s1", "staging", e.v1.Digest(), nodeapi.PhaseConfigure, "", e.root1, 2)
				e.save(t, "pinned", "", e.v1.Digest(), nodeapi.PhaseConfigure, "", e.root1, 3)
			},
			only: "staging",
			nodes: []node{
				{node: "s1", channel: "staging", version: "1.0.1", onHead: true, ok: true, phase: nodeapi.PhaseConfigure, lastStep: "network"},
			},
			channels: []ch{{name: "staging", version: "1.0.1", nodes: 1, onHead: 1}},
		},
		{
			name: "inventory machines that never reported count in their channel",
			setup: func(t *testing.T, e *statusEnv) {
				e.save(t, "a", "nightly", e.v2.Digest(), nodeapi.PhaseConfigure, "", e.root2, 1)
				e.save(t, "gone", "nightly", e.v1.Digest(), nodeapi.PhaseConfigure, "", e.root1, 2) // not in the inventory: still shown
			},
			inventory: fleet,
			nodes: []node{
				{node: "a", channel: "nightly", version: "1.0.2", onHead: true, ok: true, phase: nodeapi.PhaseConfigure, lastStep: "network"},
				{node: "c", channel: "nightly", neverReported: true},
				{node: "gone", channel: "nightly", version: "1.0.1", ok: true, phase: nodeapi.PhaseConfigure, lastStep: "network"},
				{node: "p", neverReported: true},
				{node: "s2", channel: "staging", neverReported: true},
			},
			channels: []ch{
				{name: "nightly", version: "1.0.2", nodes: 3, onHead: 1, stale: 1, neverReported: 1},
				{name: "staging", version: "1.0.1", nodes: 1, neverReported: 1},
				{name: "prod"},
			},
		},
		{
			name: "inventory filtered by channel",
			setup: func(t *testing.T, e *statusEnv) {
				e.save(t, "a", "nightly", e.v2.Digest(), nodeapi.PhaseConfigure, "", e.root2, 1)
			},
			inventory: fleet,
			only:      "nightly",
			nodes: []node{
				{node: "a", channel: "nightly", version: "1.0.2", onHead: true, ok: true, phase: nodeapi.PhaseConfigure, lastStep: "network"},
				{node: "c", channel: "nightly", neverReported: true},
			},
			channels: []ch{{name: "nightly", version: "1.0.2", nodes: 2, onHead: 1, neverReported: 1}},
		},
		{
			name:      "inventory, no reports at all",
			setup:     func(*testing.T, *statusEnv) {},
			inventory: fleet,
			nodes: []node{
				{node: "a", channel: "nightly", neverReported: true},
				{node: "c", channel: "nightly", neverReported: true},
				{node: "p", neverReported: true},
				{node: "s2", channel: "staging", neverReported: true},
			},
			channels: []ch{
				{name: "nightly", version: "1.0.2", nodes: 2, neverReported: 2},
				{name: "staging", version: "1.0.1", nodes: 1, neverReported: 1},
				{name: "prod"},
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newStatusEnv(t)
			c.setup(t, e)
			var opts []Option
			if c.inventory != "" {
				opts = append(opts, WithInventory(testInventory(t, c.inventory)))
			}
			got, err := Status(t.Context(), e.r, e.channels, e.st, c.only, opts...)
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Problems) != 0 {
				t.Errorf("problems: %v", got.Problems)
			}
			if len(got.Nodes) != len(c.nodes) {
				t.Fatalf("nodes = %+v, want %d", got.Nodes, len(c.nodes))
			}
			for i, w := range c.nodes {
				g := got.Nodes[i]
				if g.Node != w.node || g.Channel != w.channel || g.Version != w.version || g.OnHead != w.onHead || g.OK != w.ok ||
					g.RootMismatch != w.mismatch || g.Phase != w.phase || g.Failed != w.failed || g.LastStep != w.lastStep || g.Role != "node" ||
					g.Reported == w.neverReported {
					t.Errorf("nodes[%d] = %+v,\nwant %+v", i, g, w)
				}
				if g.Reported && (g.When.IsZero() || g.Image == "") {
					t.Errorf("nodes[%d]: no time or image: %+v", i, g)
				}
				if !g.Reported && (!g.When.IsZero() || g.Image != "" || g.BootID != "" || g.Addr != "") {
					t.Errorf("nodes[%d]: never reported, but has a report's fields: %+v", i, g)
				}
			}
			if len(got.Channels) != len(c.channels) {
				t.Fatalf("channels = %+v, want %d", got.Channels, len(c.channels))
			}
			for i, w := range c.channels {
				g := got.Channels[i]
				if g.Name != w.name || g.Version != w.version || g.Nodes != w.nodes || g.OnHead != w.onHead || g.Failed != w.failed || g.Stale != w.stale || g.RootMismatch != w.mismatch ||
					g.NeverReported != w.neverReported {
					t.Errorf("channels[%d] = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

func TestStatusMismatchNamesBothRoots(t *testing.T) {
	e := newStatusEnv(t)
	e.save(t, "b", "nightly", e.v2.Digest(), nodeapi.PhaseConfigure, "", e.root1, 1)
	got, err := Status(t.Context(), e.r, e.channels, e.st, "")
	if err != nil || len(got.Nodes) != 1 {
		t.Fatalf("Status = %+v, %v", got, err)
	}
	n := got.Nodes[0]
	if !n.RootMismatch || n.RootDigest != e.root1 || n.ServedRoot != e.root2 {
		t.Errorf("node = %+v: want a mismatch, reported %s, served %s", n, e.root1, e.root2)
	}
}

func TestStatusUnknownChannel(t *testing.T) {
	e := newStatusEnv(t)
	_, err := Status(t.Context(), e.r, e.channels, e.st, "qa")
	if !errors.Is(err, channel.ErrUnknownChannel) || !strings.Contains(err.Error(), `"qa"`) || !strings.Contains(err.Error(), "nightly, staging, prod") {
		t.Fatalf("Status(qa) = %v, want ErrUnknownChannel listing the known channels", err)
	}
}

// TestStatusShowsCorruptReports: an unreadable report file is a problem in the result, and
// the other nodes still show.
func TestStatusShowsCorruptReports(t *testing.T) {
	e := newStatusEnv(t)
	e.save(t, "a", "nightly", e.v2.Digest(), nodeapi.PhaseConfigure, "", e.root2, 1)
	e.save(t, "b", "nightly", e.v2.Digest(), nodeapi.PhaseConfigure, "", e.root2, 2)
	bad := filepath.Join(e.r.Dir(), "b.json")
	if err := os.WriteFile(bad, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Status(t.Context(), e.r, e.channels, e.st, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Nodes) != 1 || got.Nodes[0].Node != "a" || len(got.Problems) != 1 || !strings.Contains(got.Problems[0], bad) {
		t.Fatalf("Status = nodes %+v, problems %q: want node a and a problem naming %s", got.Nodes, got.Problems, bad)
	}
}

// TestStatusWithoutImages: with no store to look images up in, versions come from the channel
// histories and no root is compared.
func TestStatusWithoutImages(t *testing.T) {
	e := newStatusEnv(t)
	e.save(t, "b", "nightly", e.v1.Digest(), nodeapi.PhaseConfigure, "", e.root2, 1)
	got, err := Status(t.Context(), e.r, e.channels, nil, "nightly")
	if err != nil || len(got.Nodes) != 1 {
		t.Fatalf("Status = %+v, %v", got, err)
	}
	if n := got.Nodes[0]; n.Version != "1.0.1" || n.RootMismatch || n.ServedRoot != "" {
		t.Errorf("node = %+v", n)
	}
}

// TestStatusInventoryUnknownChannel: an inventory machine in a channel the store does not have
// is shown, and named in the problems.
func TestStatusInventoryUnknownChannel(t *testing.T) {
	e := newStatusEnv(t)
	inv := testInventory(t, `- {name: q, group: workers, channel: qa, serial: Q1}
`)
	got, err := Status(t.Context(), e.r, e.channels, e.st, "", WithInventory(inv))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Nodes) != 1 || got.Nodes[0].Node != "q" || got.Nodes[0].Channel != "qa" || got.Nodes[0].Reported {
		t.Errorf("nodes = %+v", got.Nodes)
	}
	want := `inventory inv.yaml: machine "q": channel "qa" is not in the store (known channels: nightly, staging, prod)`
	if !slices.Equal(got.Problems, []string{want}) {
		t.Errorf("problems = %q, want %q", got.Problems, want)
	}
}

// TestStatusNeverReportedJSON: a machine that never reported is "reported": false in JSON,
// without a report's time or image.
func TestStatusNeverReportedJSON(t *testing.T) {
	e := newStatusEnv(t)
	got, err := Status(t.Context(), e.r, e.channels, e.st, "nightly", WithInventory(testInventory(t, fleet)))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(got.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"node":"a","channel":"nightly","role":"node","reported":false,"onHead":false,"ok":false}`; string(b) != want {
		t.Errorf("JSON %s,\nwant %s", b, want)
	}
}

// TestStatusInventoryCorruptReport: a machine whose report file cannot be read did report: it
// is named in the problems, not shown as never reported.
func TestStatusInventoryCorruptReport(t *testing.T) {
	e := newStatusEnv(t)
	e.save(t, "a", "nightly", e.v2.Digest(), nodeapi.PhaseConfigure, "", e.root2, 1)
	e.save(t, "c", "nightly", e.v2.Digest(), nodeapi.PhaseConfigure, "", e.root2, 2)
	bad := filepath.Join(e.r.Dir(), "c.json")
	if err := os.WriteFile(bad, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Status(t.Context(), e.r, e.channels, e.st, "nightly", WithInventory(testInventory(t, fleet)))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Nodes) != 1 || got.Nodes[0].Node != "a" || len(got.Problems) != 1 || !strings.Contains(got.Problems[0], bad) {
		t.Fatalf("Status = nodes %+v, problems %q: want node a only and a problem naming %s", got.Nodes, got.Problems, bad)
	}
	if c := got.Channels[0]; c.Nodes != 1 || c.NeverReported != 0 {
		t.Errorf("channel = %+v", c)
	}
}
