package source

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/scripts/bootstrap"
)

func TestBootstrapLayer(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ca, err := cache.Open(filepath.Join(dir, "cache"), nil)
	if err != nil {
		t.Fatal(err)
	}
	agent := filepath.Join(dir, "imgctl-node")
	os.WriteFile(agent, []byte("agent v1"), 0o600)
	env := &Env{Cache: ca, NodeAgent: agent}
	u, err := Parse("imgctl://bootstrap")
	if err != nil {
		t.Fatal(err)
	}
	pin, err := env.Resolve(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pin.Resolved != "imgctl-bootstrap="+bootstrap.Version {
		t.Errorf("Resolved = %q", pin.Resolved)
	}
	tr, err := env.Materialize(ctx, u, pin)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Digest != pin.Digest {
		t.Errorf("materialized %s, resolved %s: the layer is not deterministic", tr.Digest, pin.Digest)
	}
	f, err := ca.Open(tr.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[string]*tar.Header{}
	var agentBody string
	r := tar.NewReader(f)
	for {
		hdr, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[strings.TrimSuffix(hdr.Name, "/")] = hdr
		if hdr.Name == bootstrap.AgentPath {
			b, _ := io.ReadAll(r)
			agentBody = string(b)
		}
	}
	if h := got[bootstrap.AgentPath]; h == nil || h.Mode != 0o755 || h.Uid != 0 || agentBody != "agent v1" {
		t.Errorf("agent entry = %+v body %q", h, agentBody)
	}
	if h := got["usr/lib/systemd/system/multi-user.target.wants/kubernetes.target"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "../kubernetes.target" {
		t.Errorf("enablement symlink = %+v", h)
	}
	if h := got["usr/lib/systemd/system/kube-node-configuration.service"]; h == nil || h.Mode != 0o644 {
		t.Errorf("configuration unit = %+v", h)
	}
	if h := got["etc/imgctl/hooks.d/post-configure.d"]; h == nil || h.Typeflag != tar.TypeDir {
		t.Errorf("hook directory = %+v", h)
	}

	// A different agent is a different layer.
	os.WriteFile(agent, []byte("agent v2"), 0o600)
	pin2, err := env.Resolve(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pin2.Digest == pin.Digest {
		t.Error("changing the agent did not change the layer digest")
	}

	env.NodeAgent = ""
	if _, err := env.Resolve(ctx, u, nil); err == nil || !strings.Contains(err.Error(), "--node-agent") {
		t.Errorf("no agent: err = %v", err)
	}
	env.NodeAgent = filepath.Join(dir, "missing")
	if _, err := env.Resolve(ctx, u, nil); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing agent: err = %v", err)
	}
}
