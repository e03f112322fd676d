//go:build cluster

package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
	"github.com/imgctl/imgctl/test/bootenv"
)

// masterIP is the guest's address on its restricted user network (slirp's first lease): not
// link-local, which a kubelet node-ip must not be. The NodeConfig is baked into the image
// (/etc/imgctl/node.yaml, the file provider): an IMDS at 169.254.169.254 would need the guest's
// network to be 169.254.0.0/16.
const masterIP = "10.0.2.15"

// masterNodeConfig is the NodeConfig of a single master on masterIP.
func masterNodeConfig(c exampleCluster) string {
	return fmt.Sprintf(`apiVersion: imgctl/v1alpha1
kind: NodeConfig
metadata:
  name: master-e2e
spec:
  role: master
  cluster:
    name: e2e
    apiServer: https://%[1]s:6443
    podCIDR: 10.244.0.0/16
    serviceCIDR: 10.96.0.0/12
    caCertificate: |
%[2]s
  kubelet:
    extraArgs: {node-ip: %[1]s}
  credentials:
    bootstrapToken: %[3]s
    certificateKey: %[4]s
    caKey: |
%[5]s
`, masterIP, bootenv.YAMLBlock(c.caCert), c.token, c.certKey, bootenv.YAMLBlock(c.caKey))
}

// masterTestLayer bakes the NodeConfig and gives the guest a default route (restricted slirp gives none, and a host
// process reaches a Service IP only through a route) and a report unit that prints the
// configuration's outcome and the containers once kube-node-configuration has finished.
func masterTestLayer(t *testing.T, dir, nodeConfig string) string {
	t.Helper()
	root := filepath.Join(dir, "master-testlayer")
	writeTestLayer(t, root, map[string]string{
		"etc/imgctl/node.yaml": nodeConfig,
		"etc/systemd/system/imgctl-test-route.service": `[Unit]
Description=imgctl cluster test: a default route on the user network
Wants=network-online.target
After=network-online.target
Before=kube-node-configuration.service

[Service]
Type=oneshot
ExecStart=/sbin/ip route replace default via 10.0.2.2

[Install]
WantedBy=multi-user.target
`,
		"etc/systemd/system/imgctl-test-report.service": reportUnit("imgctl cluster test report", "kube-node-configuration.service"),
		"usr/local/bin/imgctl-test-report": `#!/bin/bash
snapshotter=$(ctr --address /run/containerd/containerd.sock plugins ls 2>&1 | awk '$2 == "overlayfs" { print $NF }')
pods=$(crictl --runtime-endpoint unix:///run/containerd/containerd.sock ps -q 2>/dev/null | wc -l)
echo "IMGCTL-TEST-MASTER configuration=$(systemctl is-active kube-node-configuration) kubelet=$(systemctl is-active kubelet) podnet=$(systemctl is-active imgctl-podnet) snapshotter=$snapshotter containers=$pods" > /dev/console
`,
	})
	if err := os.Chmod(filepath.Join(root, "etc/imgctl/node.yaml"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/systemd/system/imgctl-test-route.service", filepath.Join(root, "etc/systemd/system/multi-user.target.wants/imgctl-test-route.service")); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestClusterMasterForms boots one master from a raw image with the control-plane images and a
// master NodeConfig baked: kubeadm init with the example CA, token and
// certificate key, the control plane as static pods (the first containers on the node), podnet,
// the Node Ready, and a pod of the baked pause image Running on it. The test talks to the API
// server through qemu's hostfwd with its own system:masters certificate from the example CA.
func TestClusterMasterForms(t *testing.T) {
	requireQEMU(t)
	testenv.Tools(t, "mmdebstrap")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	k8s := kubernetesTools(t)
	cp := controlPlaneLayout(t)
	ex := readExampleCluster(t)
	work := t.TempDir()
	dir := clusterCache(t)

	srcs := []string{
		"--source", "kubelet=file://" + filepath.Join(k8s, "kubelet") + "#path=/usr/bin/kubelet&mode=0755",
		"--source", "kubelet=file://" + filepath.Join(k8s, "kubeadm") + "#path=/usr/bin/kubeadm&mode=0755",
		"--source", "extra=file://" + filepath.Join(k8s, "crictl") + "#path=/usr/bin/crictl&mode=0755",
		"--source", "extra=file://" + masterTestLayer(t, work, masterNodeConfig(ex)) + "/",
	}
	lines, err := os.ReadFile(filepath.Join(cp, "sources.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Fields(string(lines)) {
		srcs = append(srcs, "--source", "extra="+l)
	}
	out := filepath.Join(work, "out")
	start := time.Now()
	args := append([]string{"build", "--k8s", "1.21.13", "--target", "raw", "--lock", filepath.Join(dir, "master.lock"),
		"--node-agent", nodeAgent(t), "--output", out}, srcs...)
	if _, err := imgctl(ctx, t, dir, args...); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the master image in %v", time.Since(start).Round(time.Second))

	api := freePorts(t, 1)[0]
	netdev := fmt.Sprintf("user,id=n0,restrict=on,net=10.0.2.0/24,host=10.0.2.2,dhcpstart=%s,hostfwd=tcp:127.0.0.1:%s-:6443", masterIP, api)
	disk := filepath.Join(work, "master.raw")
	run(t, "cp", "--sparse=always", filepath.Join(out, "disk.raw"), disk)
	if err := os.Truncate(disk, 8<<30); err != nil {
		t.Fatal(err)
	}
	vars := filepath.Join(work, "vars.fd")
	copyFile(t, ovmfVars, vars)
	logs, err := filepath.Abs("../.cache/e2e-cluster/logs")
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(logs, 0o755)
	booted := time.Now()
	vm := startVM(ctx, t, vmOptions{disk: disk, vars: vars, memoryMiB: 3072, netdev: netdev, logFile: filepath.Join(logs, "master-e2e.log")})
	defer vm.stop()

	if err := vm.waitFor(ctx, "IMGCTL-TEST-MASTER"); err != nil {
		t.Fatalf("master: %v\nsteps:\n  %s\nconsole:\n%s", err, strings.Join(stepLines(cleanConsole(vm.console.String())), "\n  "), tail(vm.console.String(), 6000))
	}
	log := cleanConsole(vm.console.String())
	t.Logf("configuration finished %v after power-on; steps:\n  %s", time.Since(booted).Round(time.Second), strings.Join(stepLines(log), "\n  "))
	for _, want := range []string{"step=kubeadm status=ok", "step=container-store status=ok", "configuration=active", "kubelet=active", "snapshotter=ok"} {
		if !strings.Contains(log, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	client := adminClient(t, ex)
	base := "https://127.0.0.1:" + api
	get := func(path string, v any) error {
		resp, err := client.Get(base + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
		}
		return json.Unmarshal(b, v)
	}
	// The Node Ready (podnet wrote the CNI config from the Node's pod CIDR).
	var ready bool
	var last string
	for ctx.Err() == nil && !ready {
		var nodes struct {
			Items []struct {
				Metadata struct{ Name string }
				Spec     struct{ PodCIDR string }
				Status   struct {
					Conditions []struct{ Type, Status, Reason string }
				}
			}
		}
		if err := get("/api/v1/nodes", &nodes); err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("%+v", nodes.Items)
			for _, n := range nodes.Items {
				for _, c := range n.Status.Conditions {
					if n.Metadata.Name == "master-e2e" && c.Type == "Ready" && c.Status == "True" && n.Spec.PodCIDR != "" {
						ready = true
					}
				}
			}
		}
		if !ready {
			time.Sleep(5 * time.Second)
		}
	}
	if !ready {
		t.Fatalf("master-e2e never Ready: %s\nconsole:\n%s", last, tail(vm.console.String(), 4000))
	}
	t.Logf("master-e2e Ready %v after power-on", time.Since(booted).Round(time.Second))

	// A pod of the baked pause image, on the master (tolerating its taint), Running.
	pod := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"e2e-pause","namespace":"default"},
"spec":{"tolerations":[{"operator":"Exists"}],"containers":[{"name":"pause","image":"registry.imgctl.invalid/kubernetes/pause:3.4.1","imagePullPolicy":"Never"}]}}`
	resp, err := client.Post(base+"/api/v1/namespaces/default/pods", "application/json", bytes.NewBufferString(pod))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("creating the pod: %s: %s", resp.Status, b)
	}
	running := false
	for ctx.Err() == nil && !running {
		var p struct {
			Status struct {
				Phase string
				PodIP string `json:"podIP"`
			}
		}
		if err := get("/api/v1/namespaces/default/pods/e2e-pause", &p); err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("%+v", p.Status)
			if p.Status.Phase == "Running" {
				running = true
				if ip := net.ParseIP(p.Status.PodIP); ip == nil || !strings.HasPrefix(p.Status.PodIP, "10.244.") {
					t.Errorf("pod IP %q is not in the pod CIDR 10.244.0.0/16", p.Status.PodIP)
				}
			}
		}
		if !running {
			time.Sleep(5 * time.Second)
		}
	}
	if !running {
		t.Fatalf("the pause pod never ran: %s", last)
	}
	t.Logf("a pod ran on master-e2e %v after power-on: %s", time.Since(booted).Round(time.Second), last)
}
