package configure

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// withPodCIDR adds spec.cluster.podCIDR to a NodeConfig of this file's fixtures.
func withPodCIDR(t *testing.T, doc string) string {
	t.Helper()
	out := strings.Replace(doc, "    apiServer: https://10.0.0.10:6443\n", "    apiServer: https://10.0.0.10:6443\n    podCIDR: 10.244.0.0/16\n", 1)
	if out == doc {
		t.Fatal("fixture has no apiServer line")
	}
	return out
}

// TestPodNetStartsForKubeadmRolesWithPodCIDR: a node kubeadm joins with spec.cluster.podCIDR
// starts imgctl-podnet.service with its environment, after the kubelet is healthy.
func TestPodNetStartsForKubeadmRolesWithPodCIDR(t *testing.T) {
	f, o := newFixture(t, withPodCIDR(t, tokenConfig))
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	got := f.lines()
	if i := slices.Index(got, "podnet-start=ok"); i < 0 || i < slices.Index(got, "kubelet-healthy=ok") {
		t.Errorf("steps = %q, want podnet-start=ok after kubelet-healthy=ok", got)
	}
	if f.commands[len(f.commands)-1] != "systemctl start imgctl-podnet.service" {
		t.Errorf("commands = %q, want the last to start imgctl-podnet.service", f.commands)
	}
	b, err := os.ReadFile(filepath.Join(f.root, PodNetEnv))
	if err != nil || !strings.Contains(string(b), "\nIMGCTL_NODE_NAME=node-2\nIMGCTL_POD_CIDR=10.244.0.0/16\n") {
		t.Errorf("%s: %v\n%s", PodNetEnv, err, b)
	}
	if !strings.Contains(f.steps.String(), "step=podnet-start status=ok") || !strings.Contains(f.steps.String(), "cluster-cidr=10.244.0.0/16") {
		t.Errorf("podnet-start line:\n%s", f.steps.String())
	}
}

// TestPodNetNotStarted: no podCIDR, or a node with a client certificate (no kubeadm): no
// podnet line, no unit, no environment (a stale one from an earlier run is removed); the
// certificate node's steps and commands are exactly those of TestNodeWithCertificate.
func TestPodNetNotStarted(t *testing.T) {
	for name, doc := range map[string]string{"token without podCIDR": tokenConfig, "certificate with podCIDR": withPodCIDR(t, certConfig(t))} {
		t.Run(name, func(t *testing.T) {
			f, o := newFixture(t, doc)
			if err := writeFile(f.root, PodNetEnv, 0o644, []byte("stale\n")); err != nil {
				t.Fatal(err)
			}
			if err := Run(context.Background(), o); err != nil {
				t.Fatalf("%v\n%s", err, f.steps.String())
			}
			if strings.Contains(f.steps.String(), "podnet") || slices.Contains(f.commands, "systemctl start imgctl-podnet.service") {
				t.Errorf("podnet started:\n%s\n%q", f.steps.String(), f.commands)
			}
			if _, err := os.Stat(filepath.Join(f.root, PodNetEnv)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s left: %v", PodNetEnv, err)
			}
		})
	}
}

// TestPodNetDryRunAndFailure: a dry run writes the environment and names the command; a
// failing systemctl fails configure with the command in the line.
func TestPodNetDryRunAndFailure(t *testing.T) {
	f, o := newFixture(t, withPodCIDR(t, tokenConfig))
	o.DryRun = true
	if err := Run(context.Background(), o); err != nil {
		t.Fatalf("%v\n%s", err, f.steps.String())
	}
	if !strings.Contains(f.steps.String(), `step=podnet-start status=skip`) || !strings.Contains(f.steps.String(), `command="systemctl start imgctl-podnet.service"`) {
		t.Errorf("dry run line:\n%s", f.steps.String())
	}
	if _, err := os.Stat(filepath.Join(f.root, PodNetEnv)); err != nil {
		t.Errorf("dry run: %v", err)
	}

	f, o = newFixture(t, withPodCIDR(t, tokenConfig))
	f.cmdErr = map[string]error{"systemctl start imgctl-podnet.service": errors.New("exit status 5")}
	err := Run(context.Background(), o)
	if err == nil || !strings.Contains(f.steps.String(), `step=podnet-start status=fail`) || !strings.Contains(err.Error(), "systemctl start imgctl-podnet.service: exit status 5") {
		t.Errorf("err = %v\n%s", err, f.steps.String())
	}
}
