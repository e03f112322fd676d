//go:build cluster

package test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
)

// The cluster tests boot several guests at once on one cluster LAN (clusterLAN): too heavy for
// make test beside everything else, so they run in make e2e-cluster (go test -tags cluster).

// clusterNIC1 is a guest's NIC 1: its own restricted user network, as the other boot tests'
// (updateNetdev, without the relays: these guests need no metadata). Restricted, slirp's DHCP
// gives the guest 169.254.0.15/16 and no router or DNS option.
const clusterNIC1 = "user,id=n0,restrict=on,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15"

// lanGuests are the two guests of TestClusterLANTwoGuests: NIC 2's MAC and its lease.
var lanGuests = []struct{ name, mac, ip string }{
	{"lan-a", "52:54:00:50:00:11", "192.168.50.11"},
	{"lan-b", "52:54:00:50:00:12", "192.168.50.12"},
}

// clusterLANTestLayer masks the serial getty and the node configuration (these guests have no
// NodeConfig: the test is about their network) and adds a report unit that runs once the
// network is online: it waits for the cluster LAN address (192.168.50.0/24, from the hub's
// DHCP), serves its own address on TCP 7777 (socat), connects to every other lanGuests address
// until one answers, and prints one console line with what the test checks. It never powers the
// guest off: its peer may not have connected yet.
func clusterLANTestLayer(t *testing.T, dir string) string {
	t.Helper()
	var ips []string
	for _, g := range lanGuests {
		ips = append(ips, g.ip)
	}
	root := filepath.Join(dir, "clusterlan-testlayer")
	writeTestLayer(t, root, map[string]string{
		"etc/systemd/system/imgctl-test-report.service": `[Unit]
Description=imgctl cluster LAN test report
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/local/bin/imgctl-test-report
TimeoutStartSec=10min

[Install]
WantedBy=multi-user.target
`,
		"usr/local/bin/imgctl-test-report": `#!/bin/bash
peers="` + strings.Join(ips, " ") + `"
me= lanif=
for _ in $(seq 300); do
  read -r lanif me < <(ip -4 -o addr show to 192.168.50.0/24 | awk '{print $2, $4}' | head -n1)
  [ -n "$me" ] && break
  sleep 0.5
done
if [ -z "$me" ]; then
  echo "IMGCTL-TEST-LAN error=no-lan-address links=[$(ip -br addr | tr '\n' ';')]" > /dev/console
  exit 1
fi
addr=${me%/*}
echo "IMGCTL-TEST-LAN-UP me=$me if=$lanif uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
# NIC 1's lease (slirp's DHCP: an address, no router) may come after the LAN's.
for _ in $(seq 240); do
  [ -n "$(ip -4 -o addr show to 169.254.0.0/16)" ] && break
  sleep 0.5
done
echo "IMGCTL-TEST-NIC1-UP links=[$(ip -br -4 addr | tr -s ' \n' ' ;')] uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
socat TCP-LISTEN:7777,bind="$addr",reuseaddr,fork SYSTEM:"echo lan-reply-from-$addr" &
reply= peer=
for _ in $(seq 180); do
  for p in $peers; do
    [ "$p" = "$addr" ] && continue
    reply=$(socat -T5 - TCP:"$p":7777,connect-timeout=2 </dev/null 2>/dev/null) && peer=$p && break 2
  done
  sleep 1
done
leaseof() { grep -E '^(ADDRESS|NETMASK|ROUTER|DNS|SERVER_ADDRESS|LIFETIME)=' "/run/systemd/netif/leases/$(cat "/sys/class/net/$1/ifindex")" | tr '\n' ' '; }
nic1=$(ip -4 -o addr show to 169.254.0.0/16 | awk '{print $2; exit}')
echo "IMGCTL-TEST-LAN me=$me if=$lanif peer=$peer reply=[$reply] neigh=[$(ip neigh show "$peer" dev "$lanif")]" \
  "default=[$(ip -4 route show default | tr '\n' ';')] lanroutes=[$(ip -4 route show dev "$lanif" | tr '\n' ';')]" \
  "lease=[$(leaseof "$lanif")] nic1=$nic1 nic1lease=[$(leaseof "$nic1")] uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
# The peer may still be connecting: keep serving (the test stops the guest).
wait
`,
		// No NodeConfig here: no node configuration, and no reboot by a failed one.
		"etc/systemd/system/kube-node-configuration.service": "",
		"etc/systemd/system/imgctl-bless.service":            "",
	})
	for _, unit := range []string{"kube-node-configuration.service", "imgctl-bless.service"} {
		p := filepath.Join(root, "etc/systemd/system", unit)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/dev/null", p); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestClusterLANTwoGuests boots two guests of one raw image (the Debian node image with a
// stand-in kubelet), each with NIC 1 on its own restricted user network and NIC 2 on the cluster
// LAN, and checks that each gets its static lease from the hub (with the hub as router:
// defaultRoute), reaches the other over TCP, and has exactly one default route, the LAN's: NIC 1
// (restrict=on) has an address and neither router nor DNS, and neither network gives DNS.
func TestClusterLANTwoGuests(t *testing.T) {
	requireQEMU(t)
	testenv.Tools(t, "mmdebstrap")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	work, dir := t.TempDir(), t.TempDir()
	cache := clusterCache(t)
	if err := os.Symlink(filepath.Join(cache, "cache"), filepath.Join(dir, "cache")); err != nil {
		t.Fatal(err)
	}
	kubelet := filepath.Join(work, "kubelet")
	if err := os.WriteFile(kubelet, []byte("#!/bin/sh\necho kubelet stand-in\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(work, "out")
	start := time.Now()
	b := imgctlBuild(ctx, t, dir, "--k8s", "1.21.13", "--target", "raw",
		"--lock", filepath.Join(cache, "imgctl.lock"), "--node-agent", nodeAgent(t), "--output", out,
		"--source", "kubelet=file://"+kubelet+"#path=/usr/bin/kubelet&mode=0755",
		"--source", "extra=file://"+clusterLANTestLayer(t, work)+"/")
	t.Logf("build: %v wall, image %s", time.Since(start).Round(time.Second), b.Digest)

	leases := map[string]string{}
	for _, g := range lanGuests {
		leases[g.mac] = g.ip
	}
	lan := newClusterLAN(t, leases)
	// As a cluster needs: without a default route, a host process cannot even send to a Service
	// IP (routing comes before kube-proxy's DNAT), and kubeadm's and the kubelet's address
	// defaults come from the default route's interface.
	lan.defaultRoute = true
	bootCtx, bootCancel := context.WithTimeout(ctx, 15*time.Minute)
	defer bootCancel()
	start = time.Now()
	vms := make([]*vm, len(lanGuests))
	for i, g := range lanGuests {
		disk := filepath.Join(work, g.name+".raw")
		run(t, "cp", "--sparse=always", filepath.Join(out, "disk.raw"), disk)
		if err := os.Truncate(disk, 4<<30); err != nil {
			t.Fatal(err)
		}
		vars := filepath.Join(work, g.name+"-vars.fd")
		copyFile(t, ovmfVars, vars)
		vms[i] = startVM(bootCtx, t, vmOptions{disk: disk, vars: vars, netdev: clusterNIC1,
			lan: lan.netdevArgs(g.mac), lanMAC: g.mac, logFile: filepath.Join(work, g.name+".log")})
	}
	reports := make([]string, len(lanGuests))
	report := regexp.MustCompile(`IMGCTL-TEST-LAN [^\r\n]*`)
	for i, g := range lanGuests {
		err := vms[i].waitFor(bootCtx, "IMGCTL-TEST-LAN ")
		log := cleanConsole(vms[i].console.String())
		if err != nil {
			t.Fatalf("%s: %v\nconsole:\n%s", g.name, err, tail(log, 8000))
		}
		reports[i] = report.FindString(log)
		up := regexp.MustCompile(`IMGCTL-TEST-(LAN|NIC1)-UP [^\r\n]*`).FindAllString(log, -1)
		t.Logf("%s after %v wall:\n  %s\n  %s", g.name, time.Since(start).Round(time.Second), strings.Join(up, "\n  "), reports[i])
	}
	for _, v := range vms {
		v.stop()
	}

	acked := lan.acked()
	for i, g := range lanGuests {
		peer := lanGuests[1-i]
		r := reports[i]
		if got := acked[g.mac]; got.String() != g.ip {
			t.Errorf("%s: the hub acked %v for %s, want %s", g.name, got, g.mac, g.ip)
		}
		for _, want := range []string{
			"me=" + g.ip + "/24 ", "peer=" + peer.ip + " ", "reply=[lan-reply-from-" + peer.ip + "]",
			"lladdr " + peer.mac, // its ARP went through the hub
			"default=[default via " + lanServerIP.String() + " dev enp0s3 ", // the LAN's (defaultRoute)
			"192.168.50.0/24 proto kernel scope link src " + g.ip,           // the LAN's subnet route
			"ADDRESS=" + g.ip + " ", "SERVER_ADDRESS=" + lanServerIP.String() + " ",
		} {
			if !strings.Contains(r, want) {
				t.Errorf("%s: report lacks %q:\n%s", g.name, want, r)
			}
		}
		// Restricted, slirp gives NIC 1 an address but no router and no DNS; the LAN's lease
		// has the hub as router (defaultRoute) and no DNS.
		lease := regexp.MustCompile(` lease=\[[^]]*\]`).FindString(r)
		if !strings.Contains(lease, "ROUTER="+lanServerIP.String()+" ") || strings.Contains(lease, "DNS=") {
			t.Errorf("%s: the LAN's lease %s: want the router %s and no DNS", g.name, lease, lanServerIP)
		}
		nic1 := regexp.MustCompile(`nic1lease=\[[^]]*\]`).FindString(r)
		if !strings.Contains(r, "nic1=enp0s2 ") || !strings.Contains(nic1, "ADDRESS=169.254.0.15 ") || strings.Contains(nic1, "ROUTER=") || strings.Contains(nic1, "DNS=") {
			t.Errorf("%s: NIC 1's lease %s: want slirp's address 169.254.0.15 on enp0s2 and (restricted) no router or DNS", g.name, nic1)
		}
		if def := regexp.MustCompile(`default=\[[^]]*\]`).FindString(r); strings.Count(def, "default via") != 1 {
			t.Errorf("%s: want exactly one default route (the LAN's):\n%s", g.name, r)
		}
	}
}
