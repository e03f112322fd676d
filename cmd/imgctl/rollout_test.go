package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/images/rollout"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

func TestRolloutStatus(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	imgs := map[string]store.Image{}
	roots := map[string]digest.Digest{}
	for i, v := range []string{"1.0.1", "1.0.2"} {
		root := []byte("squashfs of " + v)
		files := append(storetest.DefaultFiles(v), storetest.File{Name: "rootfs.squashfs", MediaType: manifest.SquashfsMediaType, Content: root})
		imgs[v] = storetest.PutImage(t, st, storetest.Config(v, int64(1000+i)), files)
		roots[v] = digest.FromBytes(root)
	}
	must := func(args ...string) (string, string) {
		t.Helper()
		out, stderr, err := run(t, dir, args...)
		if err != nil {
			t.Fatalf("imgctl %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return out, stderr
	}

	// No reports yet: the channels show, with no nodes.
	out, _ := must("rollout", "status")
	if !strings.Contains(out, "nightly") || !strings.Contains(out, "no node has reported") {
		t.Errorf("status without reports:\n%s", out)
	}

	must("promote", "1.0.1", "--to", "nightly")
	must("promote", "1.0.2", "--to", "nightly")
	reports, err := rollout.Open(rollout.StoreDir(st.Dir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	when := time.Date(2026, 12, 5, 0, 10, 0, 0, time.UTC)
	save := func(node, ch, version string, ok bool, root digest.Digest) {
		t.Helper()
		rep := nodeapi.Report{Phase: nodeapi.PhaseConfigure, OK: ok, RootDigest: string(root), Time: when,
			Steps: []nodeapi.Step{{Name: "fetch-root", Status: nodeapi.StatusOK}}}
		if !ok {
			rep.Failed = "kubelet"
			rep.Steps = append(rep.Steps, nodeapi.Step{Name: "kubelet", Status: nodeapi.StatusFail, Error: "kubelet did not become healthy"})
		}
		rec := rollout.Record{Node: node, Channel: ch, Role: "node", Image: imgs[version].Digest(), Received: when, Report: rep}
		if err := reports.Save(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	save("node-a", "nightly", "1.0.2", true, roots["1.0.2"])
	save("node-b", "nightly", "1.0.1", true, roots["1.0.1"])
	save("node-c", "nightly", "1.0.2", false, roots["1.0.2"])
	save("node-d", "staging", "1.0.1", true, roots["1.0.1"])

	out, _ = must("rollout", "status")
	for _, want := range []string{
		"CHANNEL", "nightly  " + imgs["1.0.2"].Digest().Encoded()[:12] + "  1.0.2    1/3",
		"node-a  nightly", "node-b  nightly", "failed at kubelet: kubelet did not become healthy",
		"2026-12-05 00:10:00",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	t.Logf("imgctl rollout status:\n%s", out)

	out, _ = must("-o", "json", "rollout", "status", "nightly")
	var ro rollout.Rollout
	if err := json.Unmarshal([]byte(out), &ro); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(ro.Channels) != 1 || ro.Channels[0].Name != "nightly" || ro.Channels[0].OnHead != 1 || ro.Channels[0].Nodes != 3 ||
		ro.Channels[0].Stale != 1 || ro.Channels[0].Failed != 1 {
		t.Errorf("channels = %+v", ro.Channels)
	}
	if len(ro.Nodes) != 3 || ro.Nodes[0].Node != "node-a" || !ro.Nodes[0].OnHead || ro.Nodes[1].Version != "1.0.1" || ro.Nodes[1].OnHead {
		t.Errorf("nodes = %+v", ro.Nodes)
	}

	_, _, err = run(t, dir, "rollout", "status", "qa")
	if err == nil || !strings.Contains(err.Error(), `channel "qa"`) || !strings.Contains(err.Error(), "nightly, staging, prod") {
		t.Errorf("rollout status qa: %v", err)
	}

	// A corrupt report file is named on stderr; the other nodes still show.
	bad := filepath.Join(reports.Dir(), "node-b.json")
	if err := os.WriteFile(bad, []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr := must("rollout", "status")
	if !strings.Contains(stderr, bad) || !strings.Contains(out, "node-a") || strings.Contains(out, "node-b") {
		t.Errorf("with a corrupt report: stdout\n%s\nstderr\n%s", out, stderr)
	}

	help, _ := must("rollout", "status", "--help")
	if !strings.Contains(help, "imgctl rollout status prod") || !strings.Contains(help, "-o json") {
		t.Errorf("help lacks an example:\n%s", help)
	}
}

// TestRolloutStatusInventory: with --inventory, a machine that never reported shows (and
// counts in its channel), so "1/2" says one of the channel's two machines runs the head.
func TestRolloutStatusInventory(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	root := []byte("squashfs of 1.0.1")
	files := append(storetest.DefaultFiles("1.0.1"), storetest.File{Name: "rootfs.squashfs", MediaType: manifest.SquashfsMediaType, Content: root})
	img := storetest.PutImage(t, st, storetest.Config("1.0.1", 1000), files)
	must := func(args ...string) (string, string) {
		t.Helper()
		out, stderr, err := run(t, dir, args...)
		if err != nil {
			t.Fatalf("imgctl %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return out, stderr
	}
	must("promote", "1.0.1", "--to", "nightly")
	reports, err := rollout.Open(rollout.StoreDir(st.Dir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	when := time.Date(2026, 12, 5, 0, 10, 0, 0, time.UTC)
	rec := rollout.Record{Node: "node-a", Channel: "nightly", Role: "node", Image: img.Digest(), Received: when,
		Report: nodeapi.Report{Phase: nodeapi.PhaseConfigure, OK: true, RootDigest: digest.FromBytes(root).String(), Time: when,
			Steps: []nodeapi.Step{{Name: "kubelet", Status: nodeapi.StatusOK}}}}
	if err := reports.Save(ctx, rec); err != nil {
		t.Fatal(err)
	}
	inv := filepath.Join(dir, "inventory.yaml")
	src := `apiVersion: imgctl/v1alpha1
kind: Inventory
groups:
- name: workers
  role: node
  channel: nightly
  config: {cluster: {apiServer: "https://10.0.0.10:6443"}}
  secret: {bootstrapToken: abcdef.0123456789abcdef, caCertHashes: ["sha256:` + strings.Repeat("0", 64) + `"]}
machines:
- {name: node-a, group: workers, macs: ["52:54:00:00:00:0a"]}
- {name: node-b, group: workers, macs: ["52:54:00:00:00:0b"]}
`
	if err := os.WriteFile(inv, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}

	// Without --inventory, node-b is unknown: 1/1.
	out, _ := must("rollout", "status")
	if !strings.Contains(out, "1/1") || strings.Contains(out, "node-b") {
		t.Errorf("status without --inventory:\n%s", out)
	}
	out, stderr := must("rollout", "status", "--inventory", inv)
	for _, want := range []string{
		"nightly  " + img.Digest().Encoded()[:12] + "  1.0.1    1/2",
		"node-a  nightly  node  " + img.Digest().Encoded()[:12],
		"node-b  nightly  node  -",
		"never reported",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status --inventory lacks %q:\n%s", want, out)
		}
	}
	if stderr != "" {
		t.Errorf("stderr: %s", stderr)
	}
	t.Logf("imgctl rollout status --inventory:\n%s", out)

	out, _ = must("-o", "json", "rollout", "status", "--inventory", inv, "nightly")
	var ro struct {
		Channels []map[string]any `json:"channels"`
		Nodes    []map[string]any `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(out), &ro); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(ro.Channels) != 1 || ro.Channels[0]["nodes"] != 2.0 || ro.Channels[0]["onHead"] != 1.0 || ro.Channels[0]["neverReported"] != 1.0 {
		t.Errorf("channels = %v", ro.Channels)
	}
	if len(ro.Nodes) != 2 || ro.Nodes[0]["reported"] != true || ro.Nodes[1]["node"] != "node-b" || ro.Nodes[1]["reported"] != false ||
		ro.Nodes[1]["channel"] != "nightly" || ro.Nodes[1]["when"] != nil {
		t.Errorf("nodes = %v", ro.Nodes)
	}

	// A broken inventory is an error naming file, line and field; so is a missing one.
	if err := os.WriteFile(inv, []byte(strings.Replace(src, "52:54:00:00:00:0b", "52:54:00:00:00:0a", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = run(t, dir, "rollout", "status", "--inventory", inv)
	if err == nil || !strings.Contains(err.Error(), inv+`:11: machines[1].macs[0]: MAC 52:54:00:00:00:0a of machine "node-b" is also machine "node-a"'s`) {
		t.Errorf("rollout status with a duplicate MAC: %v", err)
	}
	_, _, err = run(t, dir, "rollout", "status", "--inventory", filepath.Join(dir, "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "load inventory") || !strings.Contains(err.Error(), filepath.Join(dir, "nope.yaml")) {
		t.Errorf("rollout status with a missing inventory: %v", err)
	}
}
