// Package cmdline parses the imgctl.* options of the kernel command line. The keys and the
// device forms are the boot contract's (package images/boot), shared with the builders.
package cmdline

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/redact"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/boot/verity"
)

// Defaults.
const (
	DefaultInit        = "/sbin/init"
	FallbackInit       = "/lib/systemd/systemd"
	DefaultRootTimeout = 30 * time.Second
)

// Flag is the value of a boolean option: true when given alone (imgctl.debug) or with any
// value but 0, false and no.
func Flag(val string, hasVal bool) bool {
	return !hasVal || (val != "0" && val != "false" && val != "no")
}

// Kind says how a Device names a block device.
type Kind string

// Device kinds.
const (
	PartLabel Kind = boot.PartLabel
	PartUUID  Kind = boot.PartUUID
	Path      Kind = "path"
)

// Device names a block device: PARTLABEL=ROOT-A, PARTUUID=…, or /dev/vda2.
type Device struct {
	Kind  Kind
	Value string // label, lower-case GUID, or path
}

// IsZero reports whether d names nothing.
func (d Device) IsZero() bool { return d.Kind == "" }

func (d Device) String() string {
	if d.Kind == Path {
		return d.Value
	}
	return string(d.Kind) + "=" + d.Value
}

// ParseDevice parses a device spec.
func ParseDevice(s string) (Device, error) {
	switch {
	case strings.HasPrefix(s, boot.PartLabel+"="):
		if v := strings.TrimPrefix(s, boot.PartLabel+"="); v != "" {
			return Device{Kind: PartLabel, Value: v}, nil
		}
	case strings.HasPrefix(s, boot.PartUUID+"="):
		v := strings.ToLower(strings.TrimPrefix(s, boot.PartUUID+"="))
		if isGUID(v) {
			return Device{Kind: PartUUID, Value: v}, nil
		}
	case strings.HasPrefix(s, boot.DevPrefix) && len(s) > len(boot.DevPrefix):
		return Device{Kind: Path, Value: s}, nil
	}
	return Device{}, fmt.Errorf("bad device %q: want PARTLABEL=NAME, PARTUUID=GUID or /dev/PATH", s)
}

func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdef", c) {
				return false
			}
		}
	}
	return true
}

// Config is what the initrd's init takes from the kernel command line.
type Config struct {
	Root        Device           // imgctl.root naming a local device (this or RootURL is required)
	RootURL     string           // imgctl.root=http(s)://…: the root image is downloaded into RAM
	RootDigest  string           // sha256:HEX the root image must have: imgctl.root-digest, or the URL's last path element
	BootIF      net.HardwareAddr // BOOTIF=01-aa-bb-cc-dd-ee-ff (iPXE, pxelinux): the NIC to boot from; only with RootURL
	IP          *IPConfig        // ip= (dracut, kernel): how to configure the boot NIC; only with RootURL
	State       Device           // imgctl.state (optional)
	Init        string           // imgctl.init, default /sbin/init
	InitSet     bool             // imgctl.init was given: no fallback to FallbackInit
	RootTimeout time.Duration    // imgctl.root-timeout, default 30s ("3s", "500ms" or seconds "3")
	Debug       bool             // imgctl.debug: do not reboot on failure
	Verity      *Verity          // imgctl.verity + imgctl.verity-offset: map the root through dm-verity (nil: no verity)
}

// Verity is the root's dm-verity parameters.
type Verity struct {
	RootHash string // 64 lower-case hex digits (verity.ParseRootHash)
	Offset   int64  // bytes from the root device's start to the verity superblock: the data size
}

// Parse reads the imgctl.* options from a kernel command line (the contents of /proc/cmdline).
// Other options are ignored; the last occurrence of an option wins, as with the kernel's own.
func Parse(line string) (Config, error) {
	c := Config{Init: DefaultInit, RootTimeout: DefaultRootTimeout}
	var rootDigest, bootIF, ip, verityHash string
	var ipSet bool
	var verityOffset int64
	for _, f := range Fields(line) {
		key, val, hasVal := strings.Cut(f, "=")
		var err error
		switch key {
		case boot.KeyRoot:
			c.Root, c.RootURL = Device{}, ""
			if strings.HasPrefix(val, "http://") || strings.HasPrefix(val, "https://") {
				c.RootURL, err = parseRootURL(val)
			} else {
				c.Root, err = ParseDevice(val)
			}
		case boot.KeyRootDigest:
			rootDigest, err = ParseDigest(val)
		case boot.KeyBootIF:
			bootIF = val
		case boot.KeyIP:
			ip, ipSet = val, true
		case boot.KeyState:
			c.State, err = ParseDevice(val)
		case boot.KeyInit:
			if !strings.HasPrefix(val, "/") {
				err = fmt.Errorf("%s=%q: want an absolute path", boot.KeyInit, val)
			}
			c.Init, c.InitSet = val, true
		case boot.KeyRootTimeout:
			c.RootTimeout, err = parseTimeout(val)
		case boot.KeyDebug:
			c.Debug = Flag(val, hasVal)
		case boot.KeyVerity:
			verityHash, err = parseRootHash(val)
		case boot.KeyVerityOffset:
			verityOffset, err = parseVerityOffset(val)
		default:
			continue
		}
		if err != nil {
			return c, fmt.Errorf("kernel cmdline: %s: %w", key, err)
		}
	}
	if c.Root.IsZero() && c.RootURL == "" {
		return c, fmt.Errorf("kernel cmdline: %s is missing", boot.KeyRoot)
	}
	switch {
	case verityHash != "" && verityOffset != 0:
		c.Verity = &Verity{RootHash: verityHash, Offset: verityOffset}
	case verityHash != "":
		return c, fmt.Errorf("kernel cmdline: %s is missing: %s needs it", boot.KeyVerityOffset, boot.KeyVerity)
	case verityOffset != 0:
		return c, fmt.Errorf("kernel cmdline: %s is missing: %s needs it", boot.KeyVerity, boot.KeyVerityOffset)
	}
	if c.RootURL == "" {
		return c, nil // BOOTIF=, ip= and the digest concern only the network root
	}
	var err error
	if c.RootDigest, err = rootURLDigest(c.RootURL, rootDigest); err != nil {
		return c, fmt.Errorf("kernel cmdline: %w", err)
	}
	if bootIF != "" {
		if c.BootIF, err = ParseBootIF(bootIF); err != nil {
			return c, fmt.Errorf("kernel cmdline: BOOTIF: %w", err)
		}
	}
	if ipSet {
		ipc, err := ParseIP(ip)
		if err != nil {
			return c, fmt.Errorf("kernel cmdline: ip: %w", err)
		}
		c.IP = &ipc
	}
	return c, nil
}

func parseRootURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error // its text quotes the whole URL, secrets included
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("bad root URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("bad root URL %q: want http(s)://HOST/PATH", redact.URL(u))
	}
	return s, nil
}

// rootURLDigest picks the network root's digest: the URL's last path element when it is
// sha256:HEX, and imgctl.root-digest (which must then agree). "" when neither gives one: the
// init refuses such a root (an unverified root never boots), after saying so on the console.
func rootURLDigest(rawURL, given string) (string, error) {
	u, _ := url.Parse(rawURL) // parsed before
	last := path.Base(u.Path)
	var fromURL string
	if strings.HasPrefix(strings.ToLower(last), "sha256:") {
		d, err := ParseDigest(last)
		if err != nil {
			return "", fmt.Errorf("%s=%s: last path element: %w", boot.KeyRoot, redact.String(rawURL), err)
		}
		fromURL = d
	}
	if fromURL != "" && given != "" && fromURL != given {
		return "", fmt.Errorf("%s=%s ends in digest %s but %s=%s", boot.KeyRoot, redact.String(rawURL), fromURL, boot.KeyRootDigest, given)
	}
	if given != "" {
		return given, nil
	}
	return fromURL, nil
}

// parseRootHash checks a dm-verity root hash (verity.ParseRootHash: 64 lower-case hex digits).
func parseRootHash(s string) (string, error) {
	if _, err := verity.ParseRootHash(s); err != nil {
		return "", err
	}
	return s, nil
}

// parseVerityOffset checks the verity superblock's offset: a positive multiple of the block size.
func parseVerityOffset(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n%verity.BlockSize != 0 {
		return 0, fmt.Errorf("%q: want a positive multiple of %d (bytes to the verity superblock)", s, verity.BlockSize)
	}
	return n, nil
}

// ParseDigest checks a sha256:HEX digest (64 hex digits) and returns it in lower case.
func ParseDigest(s string) (string, error) {
	d := strings.ToLower(s)
	hex, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", fmt.Errorf("bad digest %q: want sha256: and 64 hex digits", s)
	}
	return d, nil
}

// ParseBootIF parses pxelinux's and iPXE's BOOTIF=01-aa-bb-cc-dd-ee-ff (hardware type 01,
// Ethernet, then the MAC), also accepting the MAC alone with - or : separators.
func ParseBootIF(s string) (net.HardwareAddr, error) {
	parts := strings.FieldsFunc(s, func(r rune) bool { return r == '-' || r == ':' })
	if len(parts) == 7 {
		if parts[0] != "01" {
			return nil, fmt.Errorf("%q: hardware type %s is not Ethernet (01)", s, parts[0])
		}
		parts = parts[1:]
	}
	mac, err := net.ParseMAC(strings.Join(parts, ":"))
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("%q: want 01-aa-bb-cc-dd-ee-ff", s)
	}
	return mac, nil
}

// IPConfig is the boot NIC's configuration from ip=: DHCP on Iface (any NIC when empty), or a
// static address.
type IPConfig struct {
	Iface    string       // the NIC's name; "" for the one BOOTIF names, or any with link
	DHCP     bool         // false: the static fields below
	Addr     netip.Prefix // static: the client address and netmask
	Gateway  netip.Addr   // static: the default route (invalid: none)
	DNS      []netip.Addr // static: name servers
	Hostname string       // static: the client's host name, if given
}

// ParseIP parses the ip= forms dracut and the kernel use for IPv4:
//
//	ip=dhcp (also on, any)
//	ip=IFACE:dhcp
//	ip=CLIENT:[PEER]:[GW]:NETMASK:[HOSTNAME]:[IFACE]:none|off[:DNS1[:DNS2]]
//	ip=:::::IFACE:dhcp
//
// NETMASK is dotted (255.255.255.0) or a prefix length (24).
func ParseIP(s string) (IPConfig, error) {
	isDHCP := func(m string) bool { return m == "dhcp" || m == "on" || m == "any" }
	if strings.ContainsAny(s, "[]") {
		return IPConfig{}, fmt.Errorf("%q: IPv6 is not supported here (IPv4 only)", s)
	}
	f := strings.Split(s, ":")
	switch {
	case len(f) == 1 && isDHCP(f[0]):
		return IPConfig{DHCP: true}, nil
	case len(f) >= 2 && len(f) <= 4 && f[0] != "" && isDHCP(f[1]):
		return IPConfig{Iface: f[0], DHCP: true}, nil
	case len(f) < 7 || len(f) > 9:
		return IPConfig{}, fmt.Errorf("%q: want dhcp, IFACE:dhcp or CLIENT::GW:NETMASK:HOSTNAME:IFACE:none (IPv4)", s)
	}
	client, gw, mask, host, iface, method := f[0], f[2], f[3], f[4], f[5], f[6]
	if client == "" && isDHCP(method) {
		return IPConfig{Iface: iface, DHCP: true}, nil
	}
	if method != "none" && method != "off" && method != "" {
		return IPConfig{}, fmt.Errorf("%q: method %q with a static address: want none (static) or dhcp without a client address", s, method)
	}
	c := IPConfig{Iface: iface, Hostname: host}
	addr, err := netip.ParseAddr(client)
	if err != nil || !addr.Is4() {
		return IPConfig{}, fmt.Errorf("%q: client address %q: want an IPv4 address", s, client)
	}
	bits, err := maskBits(mask)
	if err != nil {
		return IPConfig{}, fmt.Errorf("%q: netmask %q: %w", s, mask, err)
	}
	c.Addr = netip.PrefixFrom(addr, bits)
	if gw != "" {
		if c.Gateway, err = netip.ParseAddr(gw); err != nil || !c.Gateway.Is4() {
			return IPConfig{}, fmt.Errorf("%q: gateway %q: want an IPv4 address", s, gw)
		}
	}
	for _, d := range f[7:] {
		if d == "" {
			continue
		}
		a, err := netip.ParseAddr(d)
		if err != nil {
			return IPConfig{}, fmt.Errorf("%q: name server %q: %w", s, d, err)
		}
		c.DNS = append(c.DNS, a)
	}
	return c, nil
}

func maskBits(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n > 32 {
			return 0, fmt.Errorf("prefix length %d out of 0..32", n)
		}
		return n, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return 0, fmt.Errorf("want 255.255.255.0 or 24")
	}
	b := a.As4()
	ones, bits := net.IPMask(b[:]).Size()
	if bits == 0 {
		return 0, fmt.Errorf("%s is not a contiguous netmask", s)
	}
	return ones, nil
}

func parseTimeout(s string) (time.Duration, error) {
	if n, err := strconv.Atoi(s); err == nil {
		s = strconv.Itoa(n) + "s"
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q: %w", s, err)
	}
	if d <= 0 {
		return 0, fmt.Errorf("bad duration %q: must be positive", s)
	}
	return d, nil
}

// Fields splits a kernel command line like the kernel does: on white space, with double quotes
// grouping (and removed from) a value such as imgctl.init="/sbin/my init".
func Fields(line string) []string {
	var out []string
	var cur strings.Builder
	in, quoted := false, false
	for _, r := range line {
		switch {
		case r == '"':
			quoted = !quoted
			in = true
		case !quoted && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// SlotParams reads a disk slot's imgctl.root-digest=, imgctl.verity= and imgctl.verity-offset=
// from a command line, as they are (Parse keeps the root digest of a network root only): the
// running slot's identity for the update agent and the blessing. A verity root hash without a
// positive offset is dropped.
func SlotParams(line string) (p boot.SlotParams) {
	for _, f := range Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case boot.KeyRootDigest:
			p.RootDigest = v
		case boot.KeyVerity:
			p.VerityRootHash = v
		case boot.KeyVerityOffset:
			p.VerityOffset, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if p.VerityOffset <= 0 {
		p.VerityRootHash = ""
	}
	return p
}
