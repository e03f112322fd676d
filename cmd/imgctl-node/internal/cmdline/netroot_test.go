package cmdline

import (
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

const (
	hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hexB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func TestParseNetworkRoot(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	tests := []struct {
		name       string
		line       string
		url        string
		digest     string
		bootIF     net.HardwareAddr
		ip         *IPConfig
		wantErr    string
		wantDevice Device
	}{
		{name: "digest in URL", line: "imgctl.root=http://10.0.2.2:8080/blobs/sha256:" + hexA,
			url: "http://10.0.2.2:8080/blobs/sha256:" + hexA, digest: "sha256:" + hexA},
		{name: "upper-case digest in URL is normalized", line: "imgctl.root=https://boot.example/b/SHA256:" + strings.ToUpper(hexA),
			url: "https://boot.example/b/SHA256:" + strings.ToUpper(hexA), digest: "sha256:" + hexA},
		{name: "digest key, before the URL", line: "imgctl.root-digest=sha256:" + hexB + " imgctl.root=http://h/rootfs.squashfs",
			url: "http://h/rootfs.squashfs", digest: "sha256:" + hexB},
		{name: "both agree", line: "imgctl.root=http://h/sha256:" + hexA + " imgctl.root-digest=sha256:" + hexA,
			url: "http://h/sha256:" + hexA, digest: "sha256:" + hexA},
		{name: "no digest parses; the init refuses it", line: "imgctl.root=http://h/rootfs.squashfs", url: "http://h/rootfs.squashfs"},
		{name: "BOOTIF and ip=dhcp", line: "imgctl.root=http://h/sha256:" + hexA + " BOOTIF=01-52-54-00-12-34-56 ip=dhcp",
			url: "http://h/sha256:" + hexA, digest: "sha256:" + hexA, bootIF: mac, ip: &IPConfig{DHCP: true}},
		{name: "static ip", line: "imgctl.root=http://h/sha256:" + hexA + " ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:none",
			url: "http://h/sha256:" + hexA, digest: "sha256:" + hexA,
			ip: &IPConfig{Iface: "eth0", Addr: netip.MustParsePrefix("10.0.0.5/24"), Gateway: netip.MustParseAddr("10.0.0.1")}},
		{name: "a later device root replaces the URL", line: "imgctl.root=http://h/x imgctl.root=PARTLABEL=ROOT-A BOOTIF=junk ip=junk",
			wantDevice: Device{PartLabel, "ROOT-A"}},
		{name: "conflicting digests", line: "imgctl.root=http://h/sha256:" + hexA + " imgctl.root-digest=sha256:" + hexB,
			wantErr: "ends in digest sha256:" + hexA + " but imgctl.root-digest=sha256:" + hexB},
		{name: "short digest in URL", line: "imgctl.root=http://h/sha256:abc", wantErr: "want sha256: and 64 hex digits"},
		{name: "bad digest key", line: "imgctl.root=http://h/x imgctl.root-digest=md5:" + hexA, wantErr: "imgctl.root-digest: bad digest"},
		{name: "no host", line: "imgctl.root=http:///sha256:" + hexA, wantErr: "want http(s)://HOST/PATH"},
		{name: "bad BOOTIF", line: "imgctl.root=http://h/x BOOTIF=06-52-54-00-12-34-56", wantErr: "not Ethernet"},
		{name: "bad ip", line: "imgctl.root=http://h/x ip=dhcp6", wantErr: "kernel cmdline: ip:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(tc.line)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want %q", tc.line, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.line, err)
			}
			if c.RootURL != tc.url || c.RootDigest != tc.digest || c.Root != tc.wantDevice {
				t.Errorf("Parse(%q): root %v url %q digest %q; want %v %q %q", tc.line, c.Root, c.RootURL, c.RootDigest, tc.wantDevice, tc.url, tc.digest)
			}
			if !reflect.DeepEqual(c.BootIF, tc.bootIF) || !reflect.DeepEqual(c.IP, tc.ip) {
				t.Errorf("Parse(%q): BOOTIF %v ip %+v; want %v %+v", tc.line, c.BootIF, c.IP, tc.bootIF, tc.ip)
			}
		})
	}
}

func TestParseBootIF(t *testing.T) {
	want := net.HardwareAddr{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	for _, s := range []string{"01-aa-bb-cc-dd-ee-ff", "01-AA-BB-CC-DD-EE-FF", "aa-bb-cc-dd-ee-ff", "aa:bb:cc:dd:ee:ff"} {
		got, err := ParseBootIF(s)
		if err != nil || got.String() != want.String() {
			t.Errorf("ParseBootIF(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "01-aa-bb-cc-dd", "02-aa-bb-cc-dd-ee-ff", "01-aa-bb-cc-dd-ee-zz", "01-aa-bb-cc-dd-ee-ff-00-11"} {
		if got, err := ParseBootIF(s); err == nil {
			t.Errorf("ParseBootIF(%q) = %v, want an error", s, got)
		}
	}
}

func TestParseIP(t *testing.T) {
	tests := []struct {
		in      string
		want    IPConfig
		wantErr string
	}{
		{in: "dhcp", want: IPConfig{DHCP: true}},
		{in: "on", want: IPConfig{DHCP: true}},
		{in: "any", want: IPConfig{DHCP: true}},
		{in: "eth1:dhcp", want: IPConfig{Iface: "eth1", DHCP: true}},
		{in: "enp3s0:dhcp:1500", want: IPConfig{Iface: "enp3s0", DHCP: true}},
		{in: ":::::ens3:dhcp", want: IPConfig{Iface: "ens3", DHCP: true}},
		{in: "192.168.1.20::192.168.1.1:255.255.255.0::eth0:none", want: IPConfig{
			Iface: "eth0", Addr: netip.MustParsePrefix("192.168.1.20/24"), Gateway: netip.MustParseAddr("192.168.1.1")}},
		{in: "10.1.2.3::10.1.0.1:16:node7:eno1:off:10.1.0.53:10.1.0.54", want: IPConfig{
			Iface: "eno1", Hostname: "node7", Addr: netip.MustParsePrefix("10.1.2.3/16"), Gateway: netip.MustParseAddr("10.1.0.1"),
			DNS: []netip.Addr{netip.MustParseAddr("10.1.0.53"), netip.MustParseAddr("10.1.0.54")}}},
		{in: "10.0.0.9:::255.255.255.252:::none", want: IPConfig{Addr: netip.MustParsePrefix("10.0.0.9/30")}},
		{in: "dhcp6", wantErr: "want dhcp, IFACE:dhcp"},
		{in: "", wantErr: "want dhcp"},
		{in: "eth0:dhcp6", wantErr: "want dhcp"},
		{in: "10.0.0.5::10.0.0.1:255.255.255.0::eth0:dhcp", wantErr: `method "dhcp" with a static address`},
		{in: "10.0.0.5::10.0.0.1:255.0.255.0::eth0:none", wantErr: "not a contiguous netmask"},
		{in: "10.0.0.5::10.0.0.1:33::eth0:none", wantErr: "out of 0..32"},
		{in: "[fe80::1]::[fe80::2]:64::eth0:none", wantErr: "IPv4 only"},
		{in: "10.0.0.5::gw:24::eth0:none", wantErr: `gateway "gw"`},
		{in: "10.0.0.5::10.0.0.1:24::eth0:none:dns", wantErr: `name server "dns"`},
	}
	for _, tc := range tests {
		got, err := ParseIP(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseIP(%q) = %+v, %v; want error %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseIP(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}
