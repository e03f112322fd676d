package podnet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/netup/netuptest"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/render"
	"github.com/imgctl/imgctl/layers/testenv"
)

var nsSeq atomic.Int32

// netns creates a network namespace removed when the test ends (with everything in it).
func netns(t *testing.T, role string) string {
	t.Helper()
	name := fmt.Sprintf("imgctl-podnet-%s-%d-%d", role, os.Getpid(), nsSeq.Add(1))
	netuptest.Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	netuptest.Run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// cniResult is the part of a CNI 1.0.0 result the test reads.
type cniResult struct {
	CNIVersion string `json:"cniVersion"`
	IPs        []struct {
		Address string `json:"address"`
		Gateway string `json:"gateway"`
	} `json:"ips"`
}

// TestConflistWithDebianPlugins runs the conflist's chain the way containerd's libcni does
// (each plugin gets its entry plus cniVersion, name, runtimeConfig and the previous result)
// with Debian's containernetworking-plugins, inside a "node" network namespace, for a pod
// network namespace: the pod gets an address from the pod CIDR and a default route via cni0,
// the node reaches it, and hostPort 8080 reaches its port 80 through portmap. Only ipam.dataDir
// is added (host-local would keep its leases under /var/lib/cni on the test machine).
func TestConflistWithDebianPlugins(t *testing.T) {
	testenv.Integration(t, "CNI plugins in network namespaces")
	testenv.Root(t, "creates network namespaces and runs the CNI plugins in them")
	testenv.Tools(t, "ip", "iptables")
	testenv.Files(t, render.CNIBinDir+"/bridge", render.CNIBinDir+"/host-local", render.CNIBinDir+"/portmap")
	nodeNS, podNS := netns(t, "node"), netns(t, "pod")

	raw, err := Conflist(netip.MustParsePrefix("10.244.1.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		t.Fatal(err)
	}
	list.Plugins[0]["ipam"].(map[string]any)["dataDir"] = t.TempDir()
	runtimeConfig := map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}

	plugin := func(command string, conf map[string]any, prev json.RawMessage) ([]byte, error) {
		c := map[string]any{"cniVersion": list.CNIVersion, "name": list.Name}
		for k, v := range conf {
			c[k] = v
		}
		if caps, ok := conf["capabilities"].(map[string]any); ok && caps["portMappings"] == true {
			c["runtimeConfig"] = runtimeConfig
		}
		if prev != nil {
			c["prevResult"] = prev
		}
		in, _ := json.Marshal(c)
		cmd := exec.Command("ip", "netns", "exec", nodeNS, render.CNIBinDir+"/"+conf["type"].(string))
		cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=podnet-test", "CNI_NETNS=/run/netns/" + podNS,
			"CNI_IFNAME=eth0", "CNI_PATH=" + render.CNIBinDir, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
		cmd.Stdin = bytes.NewReader(in)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return out, fmt.Errorf("%s %s: %v\nstdout: %s\nstderr: %s\nconfig: %s", command, conf["type"], err, out, stderr.String(), in)
		}
		return out, nil
	}
	var prev json.RawMessage
	for _, p := range list.Plugins {
		out, err := plugin("ADD", p, prev)
		if err != nil {
			t.Fatal(err)
		}
		prev = out
	}
	t.Cleanup(func() {
		for i := len(list.Plugins) - 1; i >= 0; i-- {
			if _, err := plugin("DEL", list.Plugins[i], prev); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	var res cniResult
	if err := json.Unmarshal(prev, &res); err != nil || res.CNIVersion != CNIVersion || len(res.IPs) != 1 {
		t.Fatalf("result: %v\n%s", err, prev)
	}
	addr := netip.MustParsePrefix(res.IPs[0].Address)
	if !netip.MustParsePrefix("10.244.1.0/24").Contains(addr.Addr()) || addr.Bits() != 24 || res.IPs[0].Gateway != "10.244.1.1" {
		t.Errorf("pod address %s gateway %s, want one in 10.244.1.0/24 via 10.244.1.1", addr, res.IPs[0].Gateway)
	}
	if out := netuptest.Run(t, "ip", "-n", podNS, "-4", "addr", "show", "dev", "eth0"); !strings.Contains(out, "inet "+addr.String()) {
		t.Errorf("pod eth0 lacks %s:\n%s", addr, out)
	}
	if out := netuptest.Run(t, "ip", "-n", podNS, "-4", "route", "show", "default"); !strings.Contains(out, "default via 10.244.1.1 dev eth0") {
		t.Errorf("pod default route:\n%s", out)
	}
	if out := netuptest.Run(t, "ip", "-n", nodeNS, "-4", "addr", "show", "dev", BridgeName); !strings.Contains(out, "inet 10.244.1.1/24") {
		t.Errorf("node %s:\n%s", BridgeName, out)
	}

	// A server in the pod on port 80; the node reaches it directly and through hostPort 8080.
	var ln net.Listener
	netuptest.In(t, podNS, func() { ln, err = net.Listen("tcp4", ":80") })
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "pod\n")
			c.Close()
		}
	}()
	for _, target := range []string{addr.Addr().String() + ":80", "10.244.1.1:8080"} {
		var got []byte
		netuptest.In(t, nodeNS, func() {
			var c net.Conn
			c, err = net.DialTimeout("tcp4", target, 5*time.Second)
			if err != nil {
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			got, err = io.ReadAll(c)
		})
		if err != nil || string(got) != "pod\n" {
			t.Errorf("node → %s: %q, %v", target, got, err)
		}
	}
}

// TestRouteSyncInNetns: syncRoutes through netlink in a network namespace keeps exactly the
// wanted proto-201 routes (adds, replaces a moved gateway, removes the rest) and never touches
// a route it did not install; a gateway off the segment fails with the reason.
func TestRouteSyncInNetns(t *testing.T) {
	testenv.Integration(t, "routes in a network namespace")
	testenv.Root(t, "creates a network namespace")
	testenv.Tools(t, "ip")
	ns := netns(t, "routes")
	netuptest.Run(t, "ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
	netuptest.Run(t, "ip", "-n", ns, "addr", "add", "10.0.0.11/24", "dev", "eth0")
	netuptest.Run(t, "ip", "-n", ns, "link", "set", "peer0", "up")
	netuptest.Run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	netuptest.Run(t, "ip", "-n", ns, "route", "add", "10.99.0.0/24", "via", "10.0.0.99")                 // the administrator's
	netuptest.Run(t, "ip", "-n", ns, "route", "add", "10.244.7.0/24", "via", "10.0.0.7", "proto", "201") // a node that left

	// ours lists the routes marked proto 201 (ip leaves the filtered-on "proto 201" out).
	ours := func() string {
		var lines []string
		for _, l := range strings.Split(netuptest.Run(t, "ip", "-n", ns, "-4", "route", "show", "proto", "201"), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
		return strings.Join(lines, "\n")
	}
	sync := func(want ...Route) (added, removed []Route, err error) {
		netuptest.In(t, ns, func() { added, removed, err = syncRoutes(netlinkRoutes{}, want) })
		return
	}

	added, removed, err := sync(route("10.244.0.0/24", "10.0.0.10"), route("10.244.2.0/24", "10.0.0.12"))
	if err != nil {
		t.Fatal(err)
	}
	if len(added) != 2 || !slices.Equal(removed, []Route{route("10.244.7.0/24", "10.0.0.7")}) {
		t.Errorf("added %v removed %v", added, removed)
	}
	if got, want := ours(), "10.244.0.0/24 via 10.0.0.10 dev eth0\n10.244.2.0/24 via 10.0.0.12 dev eth0"; got != want {
		t.Errorf("routes:\n%s\nwant:\n%s", got, want)
	}
	netuptest.In(t, ns, func() {
		have, err := netlinkRoutes{}.List()
		if err != nil || len(have) != 2 {
			t.Errorf("List = %v, %v", have, err)
		}
	})

	// The same state again: nothing to do.
	if added, removed, err := sync(route("10.244.0.0/24", "10.0.0.10"), route("10.244.2.0/24", "10.0.0.12")); err != nil || len(added)+len(removed) != 0 {
		t.Errorf("idempotent sync: added %v removed %v err %v", added, removed, err)
	}
	// A node moved: its route follows; an unreachable gateway is an error naming the limit.
	_, _, err = sync(route("10.244.2.0/24", "10.0.0.22"), route("10.244.3.0/24", "172.16.0.3"))
	if err == nil || !strings.Contains(err.Error(), "network is unreachable") || !strings.Contains(err.Error(), "L2 segment") {
		t.Errorf("unreachable gateway: err = %v", err)
	}
	if got := ours(); got != "10.244.2.0/24 via 10.0.0.22 dev eth0" {
		t.Errorf("routes after a move:\n%s", got)
	}
	// Every node gone: every route of ours removed, the administrator's kept.
	if _, _, err := sync(); err != nil {
		t.Fatal(err)
	}
	if got := ours(); got != "" {
		t.Errorf("routes left:\n%s", got)
	}
	if got := netuptest.Run(t, "ip", "-n", ns, "-4", "route", "show", "10.99.0.0/24"); !strings.Contains(got, "via 10.0.0.99") {
		t.Errorf("the administrator's route was touched:\n%s", got)
	}
}
