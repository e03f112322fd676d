//go:build cluster

package test

import (
	"context"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
)

// kubeadmCertsPath is the Secret kubeadm init --upload-certs stores the control-plane
// certificates in (encrypted with the certificate key). kubeadm makes it expire with a bootstrap
// token of its own (2 h): once that token is gone, the Secret is garbage collected, and a
// follower's join fails in control-plane-prepare/download-certs.
const kubeadmCertsPath = "/api/v1/namespaces/kube-system/secrets/kubeadm-certs"

// downloadCertsRetry is the console line of a follower whose join failed because the uploaded
// certificates are gone, and that will try again.
var downloadCertsRetry = regexp.MustCompile(`step=kubeadm status=progress [^\n]*phase=control-plane-prepare/download-certs [^\n]*command="kubeadm join" attempt=\d+ retry-in=\S+`)

// insertAfter is an inventory edit (newCluster) of the cluster-tagged tests: lines inserted after the first line that is exactly at
// (without its newline); the test fails if there is none.
func insertAfter(t *testing.T, at, lines string) func(string) string {
	return func(inv string) string {
		at := "\n" + at + "\n"
		i := strings.Index(inv, at)
		if i < 0 {
			t.Fatalf("the example inventory has no line %q", strings.TrimSpace(at))
		}
		i += len(at)
		return inv[:i] + lines + inv[i:]
	}
}

// The three-machine cluster's etcd timing (spec.cluster.etcd), and etcd's flags for it.
const (
	etcdHeartbeat, etcdHeartbeatMS = "500ms", "500"
	etcdElection, etcdElectionMS   = "10s", "10000"
)

// TestClusterThreeMachines forms the README's three-machine cluster from images: master-1
// (kubeadm init), then master-2 (kubeadm join --control-plane), then node-1 (kubeadm join),
// all netbooting the same image from imgctl serve with the example inventory. Before
// master-2 boots, its certificate key has expired the way kubeadm expires it (the kubeadm-certs
// Secret is deleted): its join fails naming the phase on the console and it retries with backoff;
// the test then uploads the certificates again (what `kubeadm init phase upload-certs` on the
// master does) and the next attempt succeeds. All three Nodes Ready, master-2 runs its own
// API server and etcd, and a pod on node-1 resolves the kubernetes Service's names.
func TestClusterThreeMachines(t *testing.T) {
	testenv.Integration(t, "qemu guests forming a cluster")
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Minute)
	defer cancel()
	// etcd's Raft timing for TCG: with etcd's defaults (100ms heartbeats, 1s election timeout),
	// once master-2's member had joined, master-1's API server restarted again and again and
	// node-1's joins timed out.
	// The group's config is the first with a cluster section.
	c := newCluster(ctx, t, insertAfter(t, "      cluster:",
		"        etcd: {heartbeatInterval: "+etcdHeartbeat+", electionTimeout: "+etcdElection+"}\n"))
	// Two control-plane guests under TCG on two cores: with a host thread per vCPU, master-1's API
	// server stopped answering while master-2's etcd joined (kubeadm's update-status timed out,
	// three runs of three).
	c.singleThread = true
	master := c.boot(ctx, "master-1")
	c.waitKubeadm(ctx, master)

	// Expire the certificate key: keep the Secret's data, delete it.
	var certs struct {
		Type string            `json:"type"`
		Data map[string]string `json:"data"`
	}
	if err := c.api.get(kubeadmCertsPath, &certs); err != nil {
		t.Fatal(err)
	}
	if len(certs.Data) == 0 {
		t.Fatalf("%s holds no certificates", kubeadmCertsPath)
	}
	if _, err := c.api.do(http.MethodDelete, kubeadmCertsPath, nil, http.StatusOK, nil); err != nil {
		t.Fatal(err)
	}

	follower := c.boot(ctx, "master-2")
	waitCtx, waitCancel := context.WithTimeout(ctx, 30*time.Minute)
	for downloadCertsRetry.FindString(cleanConsole(follower.vm.console.String())) == "" {
		select {
		case <-waitCtx.Done():
			waitCancel()
			t.Fatalf("master-2 never reported a failed download-certs phase with a retry\nsteps:\n  %s",
				strings.Join(stepLines(follower.vm.console.String()), "\n  "))
		case <-time.After(2 * time.Second):
		}
	}
	waitCancel()
	t.Logf("master-2, certificate key expired: %s", downloadCertsRetry.FindString(cleanConsole(follower.vm.console.String())))

	// Upload the certificates again.
	secret := map[string]any{"apiVersion": "v1", "kind": "Secret", "type": certs.Type,
		"metadata": map[string]any{"name": "kubeadm-certs", "namespace": "kube-system"}, "data": certs.Data}
	if _, err := c.api.do(http.MethodPost, "/api/v1/namespaces/kube-system/secrets", secret, http.StatusCreated, nil); err != nil {
		t.Fatal(err)
	}
	c.waitKubeadm(ctx, follower)
	// node-1 only now: under TCG on two host cores, a third guest booting while master-2's etcd
	// joins slowed both control-plane machines so far that kubeadm gave up waiting for the new
	// member (TestFollowerEtcdJoinNotRetried). On real machines all of them can power on at once.
	node := c.boot(ctx, "node-1")
	c.waitKubeadm(ctx, node)
	log := cleanConsole(follower.vm.console.String())
	if m := regexp.MustCompile(`step=kubeadm status=ok [^\n]*command="kubeadm join" attempts=(\d+)`).FindStringSubmatch(log); m == nil || m[1] == "1" {
		t.Errorf("master-2 did not join on a later attempt: %q", m)
	}

	nodes := c.waitReady(ctx, "master-1", "master-2", "node-1")
	t.Logf("master-1, master-2 and node-1 Ready %v after the first power-on", time.Since(c.start).Round(time.Second))
	for _, name := range []string{"master-1", "master-2"} {
		if _, ok := nodes[name].Metadata.Labels["node-role.kubernetes.io/master"]; !ok {
			t.Errorf("%s lacks the control-plane label: %v", name, nodes[name].Metadata.Labels)
		}
		for _, component := range []string{"kube-apiserver", "etcd"} {
			var p struct {
				Spec struct {
					Containers []struct{ Command []string }
				}
				Status struct{ Phase string }
			}
			path := "/api/v1/namespaces/kube-system/pods/" + component + "-" + name
			for {
				err := c.api.get(path, &p)
				if err == nil && p.Status.Phase == "Running" {
					break
				}
				select {
				case <-ctx.Done():
					t.Fatalf("%s: %v (phase %q)", path, err, p.Status.Phase)
				case <-time.After(5 * time.Second):
				}
			}
			if component != "etcd" {
				continue
			}
			// Both members run with the master's spec.cluster.etcd: master-2's kubeadm join
			// took it from the cluster's configuration.
			var cmd []string
			if len(p.Spec.Containers) > 0 {
				cmd = p.Spec.Containers[0].Command
			}
			for _, flag := range []string{"--heartbeat-interval=" + etcdHeartbeatMS, "--election-timeout=" + etcdElectionMS} {
				if !slices.Contains(cmd, flag) {
					t.Errorf("%s: etcd runs without %s: %q", path, flag, cmd)
				}
			}
		}
	}
	if _, ok := nodes["node-1"].Metadata.Labels["node-role.kubernetes.io/master"]; ok {
		t.Errorf("node-1 has the control-plane label")
	}
	line := c.runDNSProbe(ctx, nodes["node-1"])
	t.Logf("a pod on node-1 resolved the kubernetes Service %v after the first power-on: %s", time.Since(c.start).Round(time.Second), line)
	c.logSteps()
	c.checkNoSecrets()
}
