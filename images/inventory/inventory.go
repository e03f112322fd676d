// Package inventory reads the netboot inventory of `imgctl serve`: which machines exist, how a
// booting machine is recognized (any NIC's MAC, its SMBIOS UUID or its serial number), and what
// it gets: a name, a role, the channel (or a pinned image) it boots, labels, extra kernel
// arguments and its NodeConfig, public part and secret part. See README.md in this directory
// and examples/inventory.yaml.
//
//	apiVersion: imgctl/v1alpha1
//	kind: Inventory
//	groups:
//	- name: workers
//	  role: node
//	  channel: prod
//	  config: {cluster: {apiServer: "https://10.0.0.10:6443"}}
//	  secretFile: secrets/workers.yaml
//	machines:
//	- name: node-1
//	  group: workers
//	  macs: ["52:54:00:12:34:56"]
//
// Parsing is strict and reports every problem at once, each as an *Error naming the file, the
// line and the field. A Watcher keeps the current inventory of a file, reloading it when it
// changes without ever exposing a half-read one.
package inventory

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/layers/errtree"
	"github.com/imgctl/imgctl/layers/localfile"
)

// APIVersion and Kind of an inventory document.
const (
	APIVersion = "imgctl/v1alpha1"
	Kind       = "Inventory"
)

// Bounds on an inventory: it is read by a server, possibly on every change, so a mistaken or
// hostile file must not exhaust it.
const (
	MaxFileSize       = 16 << 20 // bytes of the inventory file
	MaxSecretFileSize = 1 << 20  // bytes of one secretFile
	MaxMachines       = 10000
	MaxGroups         = 1000
	MaxMACs           = 16      // per machine
	MaxKernelArgs     = 64      // per machine or group
	MaxLabels         = 64      // per machine or group
	MaxAddresses      = 64      // per machine or group
	maxDepth          = 32      // nesting
	maxValues         = 1 << 21 // YAML values after expanding aliases
)

// Inventory is a parsed, validated inventory.
type Inventory struct {
	Source   string     // the file it was read from (or the name given to Parse)
	Machines []*Machine // sorted by Name
	// Warnings are problems that do not stop the inventory from being used, e.g. a secretFile
	// that others can read. A Watcher logs them.
	Warnings []string

	byName   map[string]*Machine
	byMAC    map[string]*Machine
	byUUID   map[string]*Machine
	bySerial map[string]*Machine
	files    []fileSum // every file read, in order, for change detection

	inlineSecrets bool // some machine or group has a secret: in the inventory itself
}

// Machine is one machine of the inventory, its group's defaults applied.
type Machine struct {
	Name    string // DNS-1123 subdomain, unique: the node name
	Group   string // "" if none
	Role    nodeconfig.Role
	Channel string // exactly one of Channel and Image is set
	Image   string // a pinned image: digest (sha256:HEX) or version
	Labels  map[string]string
	MACs    []string // lower-case aa:bb:cc:dd:ee:ff, unique across machines
	UUID    string   // SMBIOS UUID, lower case; "" if not given
	Serial  string   // "" if not given
	// Addresses are where the machine's requests may come from (e.g. its DHCP reservation):
	// addresses (/32, /128) and prefixes, masked, IPv4 as IPv4 (never IPv4-mapped IPv6). The
	// machine's list, else its group's; nil: any address. See AllowsAddr.
	Addresses []netip.Prefix
	// KernelArgs are extra kernel arguments: the group's, then the machine's.
	KernelArgs []string
	// Config is the public NodeConfig: apiVersion and kind set, metadata.name = Name, spec.role
	// = Role, the group's config under the machine's, Labels added to kubelet nodeLabels, no
	// credentials. Defaults are not applied (the node agent applies them).
	Config nodeconfig.NodeConfig
	// Secret is the secret part: the group's secret or secretFile, then the machine's over it.
	Secret nodeconfig.Credentials

	pos          position // the machine's entry
	channelPos   position // where Channel was set
	channelField string   // and its field path: machines[2].channel or groups[0].channel
}

// position locates a value in an inventory (or secret) file.
type position struct {
	File string
	Line int
}

// Error is one problem with an inventory, located by file, line and field path.
type Error struct {
	File   string
	Line   int // 0: not known
	Column int // 0: not known
	Field  string
	Msg    string
}

// Error formats e as "FILE:LINE: FIELD: MSG".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
		if e.Column > 0 {
			b.WriteString(":" + strconv.Itoa(e.Column))
		}
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors returns every *Error in err (a tree of joined or wrapped errors), in order.
func Errors(err error) []*Error { return errtree.All[*Error](err) }

// Load reads and parses the inventory file at path; secretFile paths are relative to its
// directory.
func Load(path string) (*Inventory, error) {
	inv, _, err := load(path)
	return inv, err
}

// load is Load, also returning the files it read with their hashes (on failure too, so that a
// Watcher can tell a changed bad file from the same bad file).
func load(path string) (*Inventory, []fileSum, error) {
	f, fi, err := localfile.OpenChecked(path)
	if err != nil {
		return nil, nil, fmt.Errorf("load inventory: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("load inventory %s: %w", path, err)
	}
	inv, files, err := parse(path, data, filepath.Dir(path))
	if err == nil && inv.inlineSecrets {
		if w := permWarning(path, fi.Mode()); w != "" {
			inv.Warnings = append(inv.Warnings, w)
		}
	}
	return inv, files, err
}

// Parse decodes and validates an inventory; name is its source in error messages, dir the
// directory secretFile paths are relative to. On failure it returns every problem found, joined,
// each an *Error: "inventory.yaml:12: machines[2].macs[0]: "52:54:zz:12:34:56" is not a MAC
// address (expected aa:bb:cc:dd:ee:ff)". No error or warning ever quotes a secret value.
func Parse(name string, data []byte, dir string) (*Inventory, error) {
	inv, _, err := parse(name, data, dir)
	return inv, err
}

func parse(name string, data []byte, dir string) (*Inventory, []fileSum, error) {
	d := newDecoder(name, dir)
	d.files = append(d.files, sumOf(name, data))
	if len(data) > MaxFileSize {
		return nil, d.files, &Error{File: name, Msg: fmt.Sprintf("inventory is %d bytes (expected at most %d)", len(data), MaxFileSize)}
	}
	inv := d.document(data)
	if len(d.errs) > 0 {
		return nil, d.files, d.joined()
	}
	inv.files = d.files
	return inv, d.files, nil
}

// Lookup finds the machine a booting machine claims to be: by MAC first, then UUID, then serial.
func (inv *Inventory) Lookup(id Identity) (*Machine, bool) {
	if m, ok := inv.byMAC[id.MAC]; ok && id.MAC != "" {
		return m, true
	}
	if m, ok := inv.byUUID[id.UUID]; ok && id.UUID != "" {
		return m, true
	}
	if m, ok := inv.bySerial[id.Serial]; ok && id.Serial != "" {
		return m, true
	}
	return nil, false
}

// AllowsAddr reports whether a request from a may be the machine's: true if m has no
// Addresses, else whether one of them contains a. An IPv4-mapped IPv6 address (what a
// dual-stack listener reports for an IPv4 client) counts as its IPv4 address, and a zone (the
// listener's interface) is ignored. The zero Addr is allowed only when any address is.
func (m *Machine) AllowsAddr(a netip.Addr) bool {
	if len(m.Addresses) == 0 {
		return true
	}
	a = a.Unmap().WithZone("")
	for _, p := range m.Addresses {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Machine finds a machine by name.
func (inv *Inventory) Machine(name string) (*Machine, bool) {
	m, ok := inv.byName[name]
	return m, ok
}

// Channels lists every channel a machine boots from, sorted, each once.
func (inv *Inventory) Channels() []string {
	var chs []string
	for _, m := range inv.Machines {
		if m.Channel != "" {
			chs = append(chs, m.Channel)
		}
	}
	slices.Sort(chs)
	return slices.Compact(chs)
}

// CheckChannels reports every machine whose channel is not in known (the store's channels),
// located where the channel was set: a check for NewWatcher.
func (inv *Inventory) CheckChannels(known []string) error {
	var errs []*Error
	seen := map[position]bool{}
	for _, m := range inv.Machines {
		if m.Channel == "" || slices.Contains(known, m.Channel) {
			continue
		}
		if seen[m.channelPos] { // set once in a group: reported once
			continue
		}
		seen[m.channelPos] = true
		expected := "the store has no channels"
		if len(known) > 0 {
			expected = "expected one of " + strings.Join(known, ", ")
		}
		errs = append(errs, &Error{File: m.channelPos.File, Line: m.channelPos.Line, Field: m.channelField,
			Msg: fmt.Sprintf("unknown channel %q (%s)", m.Channel, expected)})
	}
	return joinErrors(errs)
}

func joinErrors(errs []*Error) error {
	if len(errs) == 0 {
		return nil
	}
	slices.SortStableFunc(errs, func(a, b *Error) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
}
