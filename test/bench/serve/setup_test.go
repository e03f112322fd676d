package main

import (
	"context"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/builders/pxe"
	"github.com/imgctl/imgctl/images/inventory"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
)

// The bench's inventory must be one imgctl serve accepts, and every request path must name a
// machine of it; the image must carry the netboot artifacts under the pxe target's names.
// Otherwise make bench fails only when it starts the server (in CI, after make test).
func TestSetup(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "store")
	out, err := setup(ctx, []string{"-store", storeDir, "-out", dir, "-machines", "5",
		"-kernel-mb", "1", "-initrd-mb", "1", "-root-mb", "2"})
	if err != nil {
		t.Fatal(err)
	}
	res := out.(setupResult)
	inv, err := inventory.Load(res.Inventory)
	if err != nil {
		t.Fatalf("imgctl serve would refuse the bench inventory: %v", err)
	}
	if len(inv.Machines) != 5 {
		t.Fatalf("%d machines in the inventory, want 5", len(inv.Machines))
	}
	paths, err := readPaths(res.PathsFile)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range paths {
		u, err := url.Parse(p)
		if err != nil || u.Path != "/ipxe" {
			t.Fatalf("path %q: want /ipxe?…", p)
		}
		q := u.Query()
		id, err := inventory.ParseIdentity(q.Get("mac"), q.Get("uuid"), q.Get("serial"))
		if err != nil {
			t.Fatalf("path %q: %v", p, err)
		}
		m, ok := inv.Lookup(id)
		if !ok || m.Name != benchMachine(i).name || m.Channel != "nightly" {
			t.Fatalf("path %q: machine %v (found %v), want %s on channel nightly", p, m, ok, benchMachine(i).name)
		}
	}
	st, err := store.Open(ctx, storeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	img, err := st.Resolve(ctx, res.Image)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{pxe.KernelName: res.Kernel, pxe.InitrdName: res.Initrd, pxe.RootName: res.Root}
	for _, a := range manifest.Artifacts(img.Manifest) {
		if d, ok := want[a.Name]; ok {
			if a.Digest.String() != d {
				t.Errorf("artifact %s is %s, want %s", a.Name, a.Digest, d)
			}
			delete(want, a.Name)
		}
	}
	if len(want) != 0 {
		t.Errorf("image lacks the artifacts %v", want)
	}
	if res.RootBytes != 2_000_000 || !strings.HasPrefix(res.Root, "sha256:") {
		t.Errorf("root %s of %d bytes, want 2000000", res.Root, res.RootBytes)
	}
}
