package inventory

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/layers/localfile"
	"github.com/imgctl/imgctl/layers/spec"
	"github.com/opencontainers/go-digest"
	"gopkg.in/yaml.v3"
)

// fileSum is one file an inventory was read from and the sha256 of its content.
type fileSum struct {
	path string
	sum  [32]byte
}

func sumOf(path string, data []byte) fileSum { return fileSum{path, sha256.Sum256(data)} }

// entry is one group or machine as written, before groups are applied.
type entry struct {
	path string // groups[0], machines[2]
	pos  position
	ok   bool // no problem found in the entry itself

	name, group, channel, image, uuid, serial string
	role                                      nodeconfig.Role
	namePos, groupPos, rolePos, channelPos    position
	uuidPos, serialPos                        position
	labels                                    map[string]string
	labelPos                                  map[string]position
	kernelArgs                                []string
	macs                                      []string
	macPos                                    []position
	addresses                                 []netip.Prefix
	addressesSet                              bool // addresses: is given (an empty list too)

	config    *yaml.Node          // the config mapping without role and credentials; nil if none
	configPos map[string]position // relative field path (cluster.apiServer) → where it is set

	secret       *nodeconfig.Credentials // nil if none
	secretPos    map[string]position     // relative field path (bootstrapToken) → where it is set
	secretPrefix string                  // field path prefix of secretPos in its file
	inlineSecret bool
}

// secretDoc is one secretFile, read once per parse however many entries name it.
type secretDoc struct {
	cred   *nodeconfig.Credentials
	pos    map[string]position
	err    error
	failed bool
}

type decoder struct {
	file, dir string
	errs      []*Error
	files     []fileSum
	secrets   map[string]*secretDoc
	values    int
	overflow  bool
	warnings  []string
	inline    bool // some entry has an inline secret
}

func newDecoder(file, dir string) *decoder {
	return &decoder{file: file, dir: dir, secrets: map[string]*secretDoc{}}
}

func (d *decoder) fail(p position, field, format string, args ...any) {
	d.errs = append(d.errs, &Error{File: p.File, Line: p.Line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) joined() error { return joinErrors(d.errs) }

func (d *decoder) at(n *yaml.Node) position { return position{File: d.file, Line: n.Line} }

// decodeYAML decodes the single YAML document in data (from file), within the value budget.
func (d *decoder) decodeYAML(file string, data []byte, what string) (root *yaml.Node) {
	defer func() {
		if r := recover(); r != nil { // yaml.v3 is not supposed to panic; report, do not crash a server
			d.fail(position{file, 1}, "", "malformed YAML: parser failure")
			root = nil
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.fail(position{file, 1}, "", "empty document (expected %s)", what)
			return nil
		}
		d.yamlError(file, data, err)
		return nil
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		d.yamlError(file, data, err)
		return nil
	default:
		d.fail(position{file, next.Line}, "", "more than one YAML document (the file holds one: %s)", what)
		return nil
	}
	if len(doc.Content) != 1 {
		d.fail(position{file, 1}, "", "empty document (expected %s)", what)
		return nil
	}
	root = doc.Content[0]
	if !d.budget(file, root, "", 0) {
		return nil
	}
	return root
}

var unknownAnchorRE = regexp.MustCompile(`unknown anchor '([^']*)' referenced`)

// yamlError records a yaml.v3 syntax error with its line; yaml.v3 gives none for an alias to an
// unknown anchor, so that one is looked up.
func (d *decoder) yamlError(file string, data []byte, err error) {
	e := spec.YAMLError(file, data, err)
	line, col := e.Line, e.Column
	if m := unknownAnchorRE.FindStringSubmatch(e.Msg); m != nil {
		for i, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "*"+m[1]) {
				line, col = i+1, 0
				break
			}
		}
	}
	d.errs = append(d.errs, &Error{File: file, Line: line, Column: col, Msg: e.Msg})
}

// budget counts n's values with aliases expanded, failing past maxValues or maxDepth: the
// bound on "billion laughs" documents, checked before anything else walks them.
func (d *decoder) budget(file string, n *yaml.Node, path string, depth int) bool {
	if depth > maxDepth {
		d.fail(position{file, n.Line}, field(path), "nested more than %d levels deep", maxDepth)
		return false
	}
	if d.values++; d.values > maxValues {
		if !d.overflow {
			d.overflow = true
			d.fail(position{file, n.Line}, field(path), "document too large (more than %d values after expanding aliases)", maxValues)
		}
		return false
	}
	switch n.Kind {
	case yaml.AliasNode:
		if n.Alias == nil {
			d.fail(position{file, n.Line}, field(path), "dangling alias")
			return false
		}
		return d.budget(file, n.Alias, path, depth+1)
	case yaml.MappingNode, yaml.SequenceNode, yaml.DocumentNode:
		for _, c := range n.Content {
			if !d.budget(file, c, path, depth+1) {
				return false
			}
		}
	}
	return true
}

func field(path string) string {
	if path == "" {
		return "(document)"
	}
	return path
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// deref follows aliases (budget has checked they end).
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < maxDepth; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n == nil || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "null"
		}
		return fmt.Sprintf("%s %s", strings.TrimPrefix(n.ShortTag(), "!!"), quote(n.Value))
	}
	return "an alias"
}

// fields calls fn for each key of the mapping n, reporting non-mappings and unknown, duplicate
// and non-string keys. A null n is an empty mapping. It reports whether n was usable.
func (d *decoder) fields(n *yaml.Node, path string, known []string, fn func(key string, k, v *yaml.Node)) bool {
	n = deref(n)
	if isNull(n) {
		return true
	}
	if n.Kind != yaml.MappingNode {
		d.fail(d.at(n), field(path), "expected a mapping with fields %s, got %s", strings.Join(known, ", "), describe(n))
		return false
	}
	ok := true
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode || isNull(k) {
			d.fail(d.at(k), field(path), "expected a field name, got %s", describe(k))
			ok = false
			continue
		}
		p := join(path, k.Value)
		if !fieldNameRE.MatchString(k.Value) {
			p = join(path, "(key not shown)") // not a field name: a misplaced secret?
		}
		if first, dup := seen[k.Value]; dup {
			d.fail(d.at(k), p, "duplicate field (first at line %d)", first.Line)
			ok = false
			continue
		}
		seen[k.Value] = k
		if !slices.Contains(known, k.Value) {
			d.fail(d.at(k), p, "unknown field (expected one of %s)", strings.Join(known, ", "))
			ok = false
			continue
		}
		fn(k.Value, k, v)
	}
	return ok
}

// str decodes a scalar as text: numbers, booleans and dates keep their source text, null is "".
func (d *decoder) str(v *yaml.Node, path string) (string, bool) {
	v = deref(v)
	if v.Kind != yaml.ScalarNode {
		d.fail(d.at(v), path, "expected a string, got %s", describe(v))
		return "", false
	}
	switch v.ShortTag() {
	case "!!null":
		return "", true
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
		return v.Value, true
	}
	d.fail(d.at(v), path, "expected a string, got a value tagged %s", v.Tag)
	return "", false
}

// list decodes a list of strings, at most limit long.
func (d *decoder) list(v *yaml.Node, path string, limit int) (items []string, pos []position, ok bool) {
	v = deref(v)
	if isNull(v) {
		return nil, nil, true
	}
	if v.Kind != yaml.SequenceNode {
		d.fail(d.at(v), path, "expected a list of strings, got %s", describe(v))
		return nil, nil, false
	}
	if len(v.Content) > limit {
		d.fail(d.at(v), path, "%d items (expected at most %d)", len(v.Content), limit)
		return nil, nil, false
	}
	ok = true
	for i, item := range v.Content {
		s, good := d.str(item, fmt.Sprintf("%s[%d]", path, i))
		ok = ok && good
		items = append(items, s)
		pos = append(pos, d.at(deref(item)))
	}
	return items, pos, ok
}

// strMap decodes a mapping of strings to strings, at most limit entries.
func (d *decoder) strMap(v *yaml.Node, path string, limit int) (map[string]string, map[string]position, bool) {
	v = deref(v)
	if isNull(v) {
		return nil, nil, true
	}
	if v.Kind != yaml.MappingNode {
		d.fail(d.at(v), path, "expected a mapping of strings, got %s", describe(v))
		return nil, nil, false
	}
	if len(v.Content)/2 > limit {
		d.fail(d.at(v), path, "%d entries (expected at most %d)", len(v.Content)/2, limit)
		return nil, nil, false
	}
	m, pos, ok := map[string]string{}, map[string]position{}, true
	for i := 0; i+1 < len(v.Content); i += 2 {
		k := deref(v.Content[i])
		key, good := d.str(k, path)
		if !good || key == "" {
			if good {
				d.fail(d.at(k), path, "empty key")
			}
			ok = false
			continue
		}
		p := join(path, key)
		if _, dup := m[key]; dup {
			d.fail(d.at(k), p, "duplicate key (first at line %d)", pos[key].Line)
			ok = false
			continue
		}
		val, good := d.str(v.Content[i+1], p)
		ok = ok && good
		m[key], pos[key] = val, d.at(k)
	}
	return m, pos, ok
}

// document decodes and validates the whole inventory.
func (d *decoder) document(data []byte) *Inventory {
	root := d.decodeYAML(d.file, data, "an "+Kind+" with apiVersion "+APIVersion)
	if root == nil {
		return nil
	}
	root = deref(root)
	if root.Kind != yaml.MappingNode {
		d.fail(d.at(root), "", "expected an %s document (a mapping with apiVersion, kind, groups, machines), got %s", Kind, describe(root))
		return nil
	}
	var groups, machines []*entry
	seenAPI, seenKind := false, false
	d.fields(root, "", []string{"apiVersion", "kind", "groups", "machines"}, func(key string, k, v *yaml.Node) {
		switch key {
		case "apiVersion", "kind":
			want := map[string]string{"apiVersion": APIVersion, "kind": Kind}[key]
			s, ok := d.str(v, key)
			if ok && s != want {
				d.fail(d.at(v), key, "got %s (expected %s)", quote(s), want)
			}
			if key == "apiVersion" {
				seenAPI = true
			} else {
				seenKind = true
			}
		case "groups":
			groups = d.entries(v, key, MaxGroups, false)
		case "machines":
			machines = d.entries(v, key, MaxMachines, true)
		}
	})
	if !seenAPI {
		d.fail(d.at(root), "apiVersion", "missing (expected %s)", APIVersion)
	}
	if !seenKind {
		d.fail(d.at(root), "kind", "missing (expected %s)", Kind)
	}
	return d.build(groups, machines)
}

func (d *decoder) entries(v *yaml.Node, path string, limit int, machine bool) []*entry {
	v = deref(v)
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		d.fail(d.at(v), path, "expected a list of %s, got %s", path, describe(v))
		return nil
	}
	if len(v.Content) > limit {
		d.fail(d.at(v), path, "%d %s (expected at most %d)", len(v.Content), path, limit)
		return nil
	}
	out := make([]*entry, 0, len(v.Content))
	for i, item := range v.Content {
		out = append(out, d.entry(deref(item), fmt.Sprintf("%s[%d]", path, i), machine))
	}
	return out
}

var (
	groupFields   = []string{"name", "addresses", "role", "channel", "image", "labels", "kernelArgs", "config", "secret", "secretFile"}
	machineFields = []string{"name", "group", "macs", "uuid", "serial", "addresses", "role", "channel", "image", "labels", "kernelArgs", "config", "secret", "secretFile"}
	labelRE       = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

// entry decodes one group or machine; every problem is recorded and e.ok says whether any was.
func (d *decoder) entry(n *yaml.Node, path string, machine bool) *entry {
	e := &entry{path: path, pos: d.at(n)}
	errs := len(d.errs)
	known := groupFields
	if machine {
		known = machineFields
	}
	var secretFileKey *yaml.Node
	var secretFile string
	var secretNode *yaml.Node
	var imagePos position
	hasIdentity := false // macs, uuid or serial is given (valid or not)
	if !d.fields(n, path, known, func(key string, k, v *yaml.Node) {
		f := join(path, key)
		p := d.at(k)
		switch key {
		case "name":
			var ok bool
			e.namePos = p
			if e.name, ok = d.str(v, f); !ok {
				return
			}
			switch {
			case e.name == "":
				d.fail(p, f, "empty name")
			case machine:
				if err := nodeconfig.CheckNodeName(e.name); err != nil {
					d.fail(p, f, "%v (the machine name is its node name)", err)
				}
			case !labelRE.MatchString(e.name):
				d.fail(p, f, "%s is not a DNS-1123 label (lower-case letters, digits and '-', at most 63)", quote(e.name))
			}
		case "group":
			var ok bool
			e.groupPos = p
			if e.group, ok = d.str(v, f); !ok {
				return
			}
			if e.group == "" {
				d.fail(p, f, "empty group name")
			}
		case "role":
			s, ok := d.str(v, f)
			if !ok {
				return
			}
			e.role, e.rolePos = nodeconfig.Role(s), p
			if !slices.Contains(nodeconfig.Roles, e.role) {
				d.fail(p, f, "unknown role %s (expected %s)", quote(s), roleList())
			}
		case "channel":
			var ok bool
			e.channelPos = p
			if e.channel, ok = d.str(v, f); !ok {
				return
			}
			if err := channel.ValidateName(e.channel); err != nil {
				d.fail(p, f, "%v", err)
			}
		case "image":
			var ok bool
			imagePos = p
			if e.image, ok = d.str(v, f); !ok {
				return
			}
			if err := checkImageRef(e.image); err != nil {
				d.fail(p, f, "%v", err)
			}
		case "labels":
			e.labels, e.labelPos, _ = d.strMap(v, f, MaxLabels)
		case "kernelArgs":
			var pos []position
			e.kernelArgs, pos, _ = d.list(v, f, MaxKernelArgs)
			for i, a := range e.kernelArgs {
				if err := spec.CheckKernelArg(a); err != nil {
					d.fail(pos[i], fmt.Sprintf("%s[%d]", f, i), "kernel argument %s: %v", quote(a), err)
				}
			}
		case "macs":
			hasIdentity = hasIdentity || !isNull(v)
			macs, pos, _ := d.list(v, f, MaxMACs)
			e.macPos = pos
			for i, s := range macs {
				fi := fmt.Sprintf("%s[%d]", f, i)
				mac, err := ParseMAC(s)
				if err == nil {
					err = checkNICAddress(mac)
				}
				if err != nil {
					d.fail(pos[i], fi, "%v", err)
					mac = ""
				} else if j := slices.Index(e.macs, mac); j >= 0 {
					d.fail(pos[i], fi, "%s is listed twice (also %s[%d])", mac, f, j)
				}
				e.macs = append(e.macs, mac)
			}
		case "addresses":
			e.addressesSet = !isNull(v)
			list, pos, _ := d.list(v, f, MaxAddresses)
			for i, s := range list {
				fi := fmt.Sprintf("%s[%d]", f, i)
				pfx, err := parseAddress(s)
				switch {
				case err != nil:
					d.fail(pos[i], fi, "%v", err)
				case slices.Contains(e.addresses, pfx):
					d.fail(pos[i], fi, "%s is listed twice (also %s[%d])", showPrefix(pfx), f, slices.Index(e.addresses, pfx))
				default:
					e.addresses = append(e.addresses, pfx)
					continue
				}
				e.addresses = append(e.addresses, netip.Prefix{}) // keep indexes aligned with the list
			}
		case "uuid":
			hasIdentity = true
			e.uuidPos = p
			s, ok := d.str(v, f)
			if !ok {
				return
			}
			u, err := ParseUUID(s)
			switch {
			case err != nil:
				d.fail(p, f, "%v", err)
			case placeholderUUID(u):
				d.fail(p, f, "%s is what firmware reports when it has no UUID (expected the machine's own)", u)
			default:
				e.uuid = u
			}
		case "serial":
			hasIdentity = true
			e.serialPos = p
			s, ok := d.str(v, f)
			if !ok {
				return
			}
			ser, err := ParseSerial(s)
			switch {
			case err != nil:
				d.fail(p, f, "%v", err)
			case placeholderSerial(ser):
				d.fail(p, f, "%s is a firmware placeholder many machines share (expected the machine's own serial number)", quote(ser))
			default:
				e.serial = ser
			}
		case "config":
			e.config, e.configPos = d.config(v, f)
		case "secret":
			secretNode = v
			if isNull(v) {
				break
			}
			e.inlineSecret = true
			d.inline = true
			e.secret, e.secretPos = d.secret(d.file, v, f)
			e.secretPrefix = f
		case "secretFile":
			var ok bool
			if secretFile, ok = d.str(v, f); ok {
				secretFileKey = k
			}
		}
	}) {
		return e
	}
	if machine && e.name == "" && e.namePos == (position{}) {
		d.fail(e.pos, path, "missing name (the node name, e.g. node-1)")
	}
	if !machine && e.namePos == (position{}) {
		d.fail(e.pos, path, "missing name (machines refer to the group by it)")
	}
	if e.channel != "" && e.image != "" {
		d.fail(imagePos, join(path, "image"), "set either channel (followed at every boot) or image (pinned), not both")
	}
	if secretFileKey != nil {
		f := join(path, "secretFile")
		switch {
		case secretNode != nil && !isNull(secretNode):
			d.fail(d.at(secretFileKey), f, "set either secret or secretFile, not both")
		case secretFile == "":
			d.fail(d.at(secretFileKey), f, "empty path (expected a file of credentials, relative to the inventory's directory)")
		default:
			e.secret, e.secretPos = d.secretFile(secretFile, d.at(secretFileKey), f)
			e.secretPrefix = ""
		}
	}
	if machine && !hasIdentity {
		d.fail(e.pos, path, "machine %s has no identity (expected macs, uuid or serial)", quote(e.name))
	}
	e.ok = len(d.errs) == errs
	return e
}

func roleList() string {
	s := make([]string, len(nodeconfig.Roles))
	for i, r := range nodeconfig.Roles {
		s[i] = string(r)
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// checkImageRef checks a pinned image: a full sha256 digest or an image version.
func checkImageRef(ref string) error {
	if strings.HasPrefix(ref, string(digest.SHA256)+":") {
		d, err := digest.Parse(ref)
		if err != nil || d.Algorithm() != digest.SHA256 {
			return fmt.Errorf("%s is not an image digest (expected sha256: and 64 lower-case hex digits)", quote(ref))
		}
		return nil
	}
	if err := manifest.CheckVersion(ref); err != nil {
		return fmt.Errorf("%s is neither an image digest (sha256:HEX) nor an image version: %w", quote(ref), err)
	}
	return nil
}

// parseAddress parses one entry of addresses: an IP address (a /32 or /128) or a CIDR prefix,
// IPv4-mapped IPv6 turned into IPv4.
func parseAddress(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("%s is not an IP address or CIDR prefix (expected e.g. 10.0.0.11 or 10.0.0.0/24)", quote(s))
		}
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("%s has host bits set (expected %s, or %s for that one address)", quote(s), p.Masked(), p.Addr())
		}
	} else {
		a, err := netip.ParseAddr(s)
		switch {
		case err != nil:
			return netip.Prefix{}, fmt.Errorf("%s is not an IP address or CIDR prefix (expected e.g. 10.0.0.11 or 10.0.0.0/24)", quote(s))
		case a.Zone() != "":
			return netip.Prefix{}, fmt.Errorf("%s has a zone (expected an address without %%ZONE)", quote(s))
		case a.Unmap().IsUnspecified():
			a = a.Unmap()
			return netip.Prefix{}, fmt.Errorf("%s is the unspecified address: no machine sends from it (expected the machine's address, or %s for any)", a, netip.PrefixFrom(a, 0))
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() { // masked, so at least /96: the ::ffff: part is in the prefix
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p, nil
}

// showPrefix shows a single address without /32 or /128.
func showPrefix(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// checkNICAddress refuses MACs no NIC has: all zero, broadcast and multicast (group) addresses.
func checkNICAddress(mac string) error {
	switch {
	case mac == "00:00:00:00:00:00":
		return fmt.Errorf("%s is the all-zero MAC address (expected a NIC's address)", mac)
	case mac == "ff:ff:ff:ff:ff:ff":
		return fmt.Errorf("%s is the broadcast address (expected a NIC's address)", mac)
	case hexVal(mac[1])&1 == 1:
		return fmt.Errorf("%s is a multicast address (expected a NIC's unicast address)", mac)
	}
	return nil
}

func hexVal(c byte) byte {
	if c >= 'a' {
		return c - 'a' + 10
	}
	return c - '0'
}

// config checks a config mapping (NodeConfig spec fields but role and credentials) with
// nodeconfig's own schema and records where each field is set.
func (d *decoder) config(v *yaml.Node, path string) (*yaml.Node, map[string]position) {
	v = deref(v)
	if isNull(v) {
		return nil, nil
	}
	if v.Kind != yaml.MappingNode {
		d.fail(d.at(v), path, "expected a mapping of NodeConfig spec fields (cluster, kubelet), got %s", describe(v))
		return nil, nil
	}
	// A copy without role and credentials: each has its own place in an inventory.
	c := *v
	c.Content = nil
	for i := 0; i+1 < len(v.Content); i += 2 {
		k := deref(v.Content[i])
		switch k.Value {
		case "role":
			d.fail(d.at(k), join(path, k.Value), "set role next to config (on the machine or its group), not in it")
			continue
		case "credentials":
			d.fail(d.at(k), join(path, k.Value), "credentials are secret: put them in secret or secretFile, not in config")
			continue
		}
		c.Content = append(c.Content, v.Content[i], v.Content[i+1])
	}
	pos := map[string]position{}
	record(d.file, &c, "", pos, 0)
	var s nodeconfig.Spec
	for _, p := range nodeconfig.DecodeNode(path, &c, &s) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.Field, path), ".")
		d.errs = append(d.errs, &Error{File: d.file, Line: lookup(pos, rel, d.at(v)).Line, Field: p.Field, Msg: p.Detail})
	}
	return &c, pos
}

// record maps each field path under n (relative: cluster.apiServer, clusterDNS[0]) to where it is.
func record(file string, n *yaml.Node, path string, pos map[string]position, depth int) {
	n = deref(n)
	if n == nil || depth > maxDepth {
		return
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := deref(n.Content[i])
			p := join(path, k.Value)
			if _, dup := pos[p]; !dup {
				pos[p] = position{file, k.Line}
			}
			record(file, n.Content[i+1], p, pos, depth+1)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			pos[p] = position{file, deref(c).Line}
			record(file, c, p, pos, depth+1)
		}
	}
}

// lookup finds where rel, or the closest field above it, is set; def if nowhere.
func lookup(pos map[string]position, rel string, def position) position {
	for rel != "" {
		if p, ok := pos[rel]; ok {
			return p
		}
		i := strings.LastIndexAny(rel, ".[")
		if i < 0 {
			break
		}
		rel = rel[:i]
	}
	return def
}

// hasExact reports whether rel itself is set in pos.
func hasExact(pos map[string]position, rel string) bool {
	_, ok := pos[rel]
	return ok
}

// secret decodes credentials from n (in file) strictly. Shape errors come from a copy whose
// values are blanked, so that no secret is ever quoted.
func (d *decoder) secret(file string, n *yaml.Node, path string) (*nodeconfig.Credentials, map[string]position) {
	n = deref(n)
	pos := map[string]position{}
	record(file, n, "", pos, 0)
	var c nodeconfig.Credentials
	if probs := nodeconfig.DecodeNode(path, redact(n, 0), &c); len(probs) > 0 {
		for _, p := range probs {
			rel := strings.TrimPrefix(strings.TrimPrefix(p.Field, path), ".")
			d.errs = append(d.errs, &Error{File: file, Line: lookup(pos, rel, position{file, n.Line}).Line, Field: p.Field, Msg: p.Detail})
		}
		return nil, nil
	}
	if probs := nodeconfig.DecodeNode(path, n, &c); len(probs) > 0 { // cannot happen: same shape
		d.fail(position{file, n.Line}, field(path), "malformed credentials")
		return nil, nil
	}
	if c.IsZero() {
		return nil, nil
	}
	return &c, pos
}

var fieldNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,40}$`)

// redact copies n with every scalar value replaced by a placeholder (tags kept, so shape errors
// stay right) and keys that do not look like field names replaced too; aliases are expanded.
func redact(n *yaml.Node, depth int) *yaml.Node {
	n = deref(n)
	c := &yaml.Node{Kind: n.Kind, Style: n.Style, Tag: n.Tag, Line: n.Line, Column: n.Column}
	if depth > maxDepth {
		c.Kind, c.Tag, c.Value = yaml.ScalarNode, "!!str", "…"
		return c
	}
	switch n.Kind {
	case yaml.ScalarNode:
		c.Value = "…"
		if n.ShortTag() == "!!null" {
			c.Value = n.Value
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := deref(n.Content[i])
			kc := &yaml.Node{Kind: k.Kind, Tag: k.Tag, Line: k.Line, Column: k.Column, Value: "(key not shown)"}
			if k.Kind == yaml.ScalarNode && fieldNameRE.MatchString(k.Value) {
				kc.Value = k.Value
			}
			c.Content = append(c.Content, kc, redact(n.Content[i+1], depth+1))
		}
	case yaml.SequenceNode:
		for _, e := range n.Content {
			c.Content = append(c.Content, redact(e, depth+1))
		}
	}
	return c
}

// secretFile reads the credentials file name (relative to the inventory's directory) once.
func (d *decoder) secretFile(name string, at position, f string) (*nodeconfig.Credentials, map[string]position) {
	path := name
	if !filepath.IsAbs(path) {
		path = filepath.Join(d.dir, name)
	}
	if doc, ok := d.secrets[path]; ok {
		if doc.err != nil {
			d.fail(at, f, "%v", doc.err)
		}
		if doc.failed {
			d.fail(at, f, "%s is malformed (see above)", path)
		}
		return doc.cred, doc.pos
	}
	doc := &secretDoc{}
	d.secrets[path] = doc
	data, warn, err := readSecretFile(path)
	if err != nil {
		doc.err = err
		d.fail(at, f, "%v", err)
		return nil, nil
	}
	d.files = append(d.files, sumOf(path, data))
	if warn != "" {
		d.warnings = append(d.warnings, warn)
	}
	errs := len(d.errs)
	root := d.decodeYAML(path, data, "a mapping of credentials: bootstrapToken, caCertHashes, …")
	if root != nil {
		doc.cred, doc.pos = d.secret(path, root, "")
	}
	doc.failed = len(d.errs) > errs
	return doc.cred, doc.pos
}

// readSecretFile reads a secret file, and warns if others may read it.
func readSecretFile(path string) (data []byte, warning string, err error) {
	f, fi, err := localfile.OpenChecked(path)
	if err != nil {
		return nil, "", fmt.Errorf("secret file: %w", err)
	}
	defer f.Close()
	if fi.Size() > MaxSecretFileSize {
		return nil, "", fmt.Errorf("secret file %s is %d bytes (expected at most %d)", path, fi.Size(), MaxSecretFileSize)
	}
	data, err = io.ReadAll(io.LimitReader(f, MaxSecretFileSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("secret file %s: %w", path, err)
	}
	if len(data) > MaxSecretFileSize {
		return nil, "", fmt.Errorf("secret file %s is more than %d bytes", path, MaxSecretFileSize)
	}
	return data, permWarning(path, fi.Mode()), nil
}

// permWarning warns about a file holding secrets that others may read: the server still uses it
// (the repository's example is checked out 0644), but an operator should chmod it.
func permWarning(path string, mode fs.FileMode) string {
	if mode.Perm()&0o077 != 0 {
		return fmt.Sprintf("%s holds secrets but has mode %04o: group or others can read it (run chmod 600 %s)", path, mode.Perm(), path)
	}
	return ""
}

// build applies groups to machines, checks what spans entries and makes the Inventory.
func (d *decoder) build(groups, machines []*entry) *Inventory {
	byGroup := map[string]*entry{}
	var groupNames []string
	for _, g := range groups {
		if g.name == "" {
			continue
		}
		if first, dup := byGroup[g.name]; dup {
			d.fail(g.namePos, join(g.path, "name"), "group %s is defined twice (first as %s at line %d)", g.name, first.path, first.pos.Line)
			continue
		}
		byGroup[g.name] = g
		groupNames = append(groupNames, g.name)
	}
	inv := &Inventory{
		Source: d.file,
		byName: map[string]*Machine{}, byMAC: map[string]*Machine{},
		byUUID: map[string]*Machine{}, bySerial: map[string]*Machine{},
	}
	owner := map[*Machine]*entry{}
	for _, e := range machines {
		m := &Machine{Name: e.name, Group: e.group, MACs: slices.DeleteFunc(slices.Clone(e.macs), func(s string) bool { return s == "" }),
			UUID: e.uuid, Serial: e.serial, pos: e.pos}
		d.unique(inv, owner, e, m)
		var g *entry
		if e.group != "" {
			var ok bool
			if g, ok = byGroup[e.group]; !ok {
				d.fail(e.groupPos, join(e.path, "group"), "unknown group %s (%s)", quote(e.group), expectedOf(groupNames, "the inventory has no groups"))
				continue
			}
		}
		if !e.ok || g != nil && !g.ok {
			continue // its own problems are reported; merging would only repeat them
		}
		d.merge(m, e, g)
		inv.Machines = append(inv.Machines, m)
	}
	slices.SortFunc(inv.Machines, func(a, b *Machine) int { return strings.Compare(a.Name, b.Name) })
	inv.Warnings = d.warnings
	inv.inlineSecrets = d.inline
	return inv
}

func expectedOf(names []string, none string) string {
	if len(names) == 0 {
		return none
	}
	return "expected one of " + strings.Join(names, ", ")
}

// unique indexes m by name, MACs, UUID and serial, reporting any already taken by another machine.
func (d *decoder) unique(inv *Inventory, owner map[*Machine]*entry, e *entry, m *Machine) {
	clash := func(p position, f, what string, other *Machine) {
		o := owner[other]
		d.fail(p, f, "%s of machine %s is also machine %s's (%s at %s:%d)", what, quote(e.name), quote(other.Name), o.path, o.pos.File, o.pos.Line)
	}
	owner[m] = e
	if e.name != "" {
		if other, dup := inv.byName[e.name]; dup {
			d.fail(e.namePos, join(e.path, "name"), "machine name %s is taken by %s at %s:%d", quote(e.name), owner[other].path, owner[other].pos.File, owner[other].pos.Line)
		} else {
			inv.byName[e.name] = m
		}
	}
	for i, mac := range e.macs {
		if mac == "" {
			continue
		}
		if other, dup := inv.byMAC[mac]; dup && other != m {
			clash(e.macPos[i], fmt.Sprintf("%s.macs[%d]", e.path, i), "MAC "+mac, other)
		} else {
			inv.byMAC[mac] = m
		}
	}
	if e.uuid != "" {
		if other, dup := inv.byUUID[e.uuid]; dup {
			clash(e.uuidPos, join(e.path, "uuid"), "UUID "+e.uuid, other)
		} else {
			inv.byUUID[e.uuid] = m
		}
	}
	if e.serial != "" {
		if other, dup := inv.bySerial[e.serial]; dup {
			clash(e.serialPos, join(e.path, "serial"), "serial "+quote(e.serial), other)
		} else {
			inv.bySerial[e.serial] = m
		}
	}
}

// merge fills m from its entry e over its group g (nil if none) and validates the NodeConfig.
func (d *decoder) merge(m *Machine, e, g *entry) {
	if g == nil {
		g = &entry{}
	}
	before := len(d.errs)
	m.Role = cmpOr(e.role, g.role)
	if m.Role == "" {
		d.fail(e.pos, e.path, "machine %s has no role (expected role: %s, on the machine or its group)", quote(m.Name), roleList())
	}
	switch {
	case e.channel != "" || e.image != "":
		m.Channel, m.Image = e.channel, e.image
		if m.Channel != "" {
			m.channelPos, m.channelField = e.channelPos, join(e.path, "channel")
		}
	case g.channel != "" || g.image != "":
		m.Channel, m.Image = g.channel, g.image
		if m.Channel != "" {
			m.channelPos, m.channelField = g.channelPos, join(g.path, "channel")
		}
	default:
		d.fail(e.pos, e.path, "machine %s boots nothing (expected channel: or image:, on the machine or its group)", quote(m.Name))
	}
	m.KernelArgs = append(slices.Clone(g.kernelArgs), e.kernelArgs...)
	if e.addressesSet {
		m.Addresses = slices.Clone(e.addresses)
	} else {
		m.Addresses = slices.Clone(g.addresses)
	}
	if len(m.Addresses) == 0 {
		m.Addresses = nil
	}
	m.Labels = maps.Clone(g.labels)
	if len(e.labels) > 0 {
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		maps.Copy(m.Labels, e.labels)
	}

	var s nodeconfig.Spec
	if probs := nodeconfig.DecodeNode(join(e.path, "config"), mergeNodes(g.config, e.config, 0), &s); len(probs) > 0 {
		d.fail(e.pos, join(e.path, "config"), "config does not merge with group %s's: %s", e.group, probs[0].Detail)
		return
	}
	for _, k := range slices.Sorted(maps.Keys(m.Labels)) {
		v := m.Labels[k]
		if old, ok := s.Kubelet.NodeLabels[k]; ok && old != v {
			p, f := labelAt(e, g, k)
			d.fail(p, f, "label %s=%s conflicts with config.kubelet.nodeLabels %s=%s (labels become node labels)", k, quote(v), k, quote(old))
		}
		if s.Kubelet.NodeLabels == nil {
			s.Kubelet.NodeLabels = map[string]string{}
		}
		s.Kubelet.NodeLabels[k] = v
	}
	s.Role, s.Credentials = m.Role, nil
	m.Config = nodeconfig.NodeConfig{APIVersion: nodeconfig.APIVersion, Kind: nodeconfig.Kind,
		Metadata: nodeconfig.ObjectMeta{Name: m.Name}, Spec: s}

	var sec nodeconfig.Credentials
	if g.secret != nil {
		sec = *g.secret
	}
	if e.secret != nil {
		if c := nodeconfig.Merge(nodeconfig.NodeConfig{Spec: nodeconfig.Spec{Credentials: &sec}}, *e.secret).Spec.Credentials; c != nil {
			sec = *c
		}
	}
	m.Secret = sec
	if len(d.errs) > before {
		return
	}
	full := nodeconfig.Merge(m.Config, m.Secret)
	full.Defaults()
	for _, fe := range fieldErrors(full.Validate()) {
		d.placeConfigError(m, e, g, fe)
	}
}

func cmpOr[T comparable](a, b T) T {
	var zero T
	if a != zero {
		return a
	}
	return b
}

func labelAt(e, g *entry, k string) (position, string) {
	if p, ok := e.labelPos[k]; ok {
		return p, join(e.path, "labels."+k)
	}
	return g.labelPos[k], join(g.path, "labels."+k)
}

func fieldErrors(err error) []*nodeconfig.FieldError {
	var out []*nodeconfig.FieldError
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, fieldErrors(e)...)
		}
		return out
	}
	var fe *nodeconfig.FieldError
	if errors.As(err, &fe) {
		return []*nodeconfig.FieldError{fe}
	}
	return []*nodeconfig.FieldError{{Field: "(config)", Detail: err.Error()}}
}

// placeConfigError reports a problem of m's merged NodeConfig where its value is set: in the
// machine, its group or a secret file; a value set in a group is reported once for all its
// machines. A field set nowhere (required for the role) is reported at the machine.
func (d *decoder) placeConfigError(m *Machine, e, g *entry, fe *nodeconfig.FieldError) {
	rel, _ := strings.CutPrefix(fe.Field, "spec.")
	var p position
	var f string
	switch {
	case fe.Field == "metadata.name":
		p, f = e.namePos, join(e.path, "name")
	case rel == "role":
		p, f = cmpOr(e.rolePos, g.rolePos), join(e.path, "role")
	case strings.HasPrefix(rel, "kubelet.nodeLabels.") && (e.labels[strings.TrimPrefix(rel, "kubelet.nodeLabels.")] != "" || g.labels[strings.TrimPrefix(rel, "kubelet.nodeLabels.")] != ""):
		p, f = labelAt(e, g, strings.TrimPrefix(rel, "kubelet.nodeLabels."))
	case strings.HasPrefix(rel, "credentials."):
		c := strings.TrimPrefix(rel, "credentials.")
		switch {
		case hasExact(e.secretPos, c):
			p, f = lookup(e.secretPos, c, e.pos), join(e.secretPrefix, c)
		case hasExact(g.secretPos, c):
			p, f = lookup(g.secretPos, c, g.pos), join(g.secretPrefix, c)
		}
	default:
		switch {
		case hasExact(e.configPos, rel):
			p, f = lookup(e.configPos, rel, e.pos), join(e.path, "config."+rel)
		case hasExact(g.configPos, rel):
			p, f = lookup(g.configPos, rel, g.pos), join(g.path, "config."+rel)
		}
	}
	if p == (position{}) { // set nowhere: the machine's NodeConfig lacks it
		d.fail(e.pos, e.path, "machine %s: NodeConfig %s: %s", quote(m.Name), fe.Field, fe.Detail)
		return
	}
	msg := fe.Detail
	if p.File != e.pos.File || !strings.HasPrefix(f, e.path+".") && f != e.path {
		msg += fmt.Sprintf(" (NodeConfig of machine %s)", quote(m.Name))
	}
	for _, old := range d.errs { // a group's value is wrong for all its machines: say it once
		if old.File == p.File && old.Line == p.Line && old.Field == f && strings.HasPrefix(old.Msg, fe.Detail) {
			return
		}
	}
	d.fail(p, f, "%s", msg)
}

// mergeNodes merges two mappings, over's fields over base's (mappings merged field by field,
// anything else replaced). A null or missing side leaves the other.
func mergeNodes(base, over *yaml.Node, depth int) *yaml.Node {
	base, over = deref(base), deref(over)
	switch {
	case isNull(over):
		if base == nil {
			return &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		}
		return base
	case isNull(base):
		return over
	case base.Kind != yaml.MappingNode || over.Kind != yaml.MappingNode || depth > maxDepth:
		return over
	}
	out := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: over.Line, Column: over.Column}
	idx := map[string]int{}
	for i := 0; i+1 < len(base.Content); i += 2 {
		idx[deref(base.Content[i]).Value] = len(out.Content)
		out.Content = append(out.Content, base.Content[i], base.Content[i+1])
	}
	for i := 0; i+1 < len(over.Content); i += 2 {
		k := deref(over.Content[i]).Value
		if j, ok := idx[k]; ok {
			out.Content[j+1] = mergeNodes(out.Content[j+1], over.Content[i+1], depth+1)
			continue
		}
		out.Content = append(out.Content, over.Content[i], over.Content[i+1])
	}
	return out
}
