package serve

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/bootauth"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/inventory"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/update"
)

// Paths of the boot routes.
const (
	// ChainScriptPath is the static script to point DHCP (or an iPXE build) at: it chains to
	// NodeScriptPath with the machine's identity.
	ChainScriptPath = "/boot.ipxe"
	// NodeScriptPath answers a machine's own script: ?mac=&uuid=&serial=.
	NodeScriptPath = "/ipxe"
	// BlobsPath is the prefix of blob URLs: /blobs/sha256:HEX.
	BlobsPath = update.BlobsPathPrefix
)

// Retry delays of the scripts (seconds).
const (
	retryUnknown = 30 // an unknown machine: someone has to add it
	retryError   = 60 // the server cannot boot it: someone has to fix a channel or the store
	retryFailed  = 10 // a download or the boot failed
)

// netbootImage is what a node's script needs from an image, or why the image cannot netboot.
type netbootImage struct {
	Version              string
	Kernel, Initrd, Root digest.Digest
	Cmdline              string // the spec's kernel command line (the root artifact's annotation)
	Err                  error
}

// netbootOf finds img's netboot artifacts (the pxe target's vmlinuz, initrd.img and
// rootfs.squashfs).
func netbootOf(img store.Image) netbootImage {
	nb := netbootImage{Version: img.Config.Version}
	var missing []string
	for _, want := range []struct {
		name string
		d    *digest.Digest
	}{{manifest.KernelArtifact, &nb.Kernel}, {manifest.InitrdArtifact, &nb.Initrd}, {manifest.RootSquashfsArtifact, &nb.Root}} {
		found := false
		for _, a := range manifest.Artifacts(img.Manifest) {
			if a.Name == want.name {
				*want.d, found = a.Digest, true
				if want.name == manifest.RootSquashfsArtifact {
					nb.Cmdline = a.Annotations[manifest.AnnotationKernelCmdline]
				}
			}
		}
		if !found {
			missing = append(missing, want.name)
		}
	}
	if len(missing) > 0 {
		nb.Err = fmt.Errorf("it has no %s (build it with the pxe target)", strings.Join(missing, ", "))
	}
	return nb
}

// CertificatePin is the imgctl.metadata-pin value of a certificate: sha256:HEX of its leaf's DER.
func CertificatePin(cert tls.Certificate) (string, error) {
	if len(cert.Certificate) == 0 {
		return "", errors.New("certificate has no leaf")
	}
	sum := sha256.Sum256(cert.Certificate[0])
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// validHost reports whether h may appear in a script as a Host: a name or IPv4 address
// (letters, digits, '.', '-'; 1 to 253) or a bracketed IPv6 address (hex digits, ':', '.'; 2 to
// 45), then optionally ':' and 1 to 5 digits. A loop, not a regular expression: it runs for
// every node script.
func validHost(h string) bool {
	name, port := h, ""
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return false
		}
		ip := h[1:end]
		if len(ip) < 2 || len(ip) > 45 || !allBytes(ip, func(c byte) bool { return isHex(c) || c == ':' || c == '.' }) {
			return false
		}
		name, port = "", h[end+1:]
	} else if i := strings.IndexByte(h, ':'); i >= 0 {
		name, port = h[:i], h[i:]
	}
	if !strings.HasPrefix(h, "[") && (len(name) < 1 || len(name) > 253 ||
		!allBytes(name, func(c byte) bool { return isAlnum(c) || c == '.' || c == '-' })) {
		return false
	}
	if port == "" {
		return true
	}
	digits, ok := strings.CutPrefix(port, ":")
	return ok && len(digits) >= 1 && len(digits) <= 5 && allBytes(digits, func(c byte) bool { return c >= '0' && c <= '9' })
}

func allBytes(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// bases returns the base URL of blobs and scripts as a node reaches this server, and the
// metadata base URL (https when the server has TLS).
func (s *Server) bases(r *http.Request) (blobBase, metaBase string, err error) {
	if s.advertise != nil {
		u := *s.advertise
		blobBase = strings.TrimSuffix(u.String(), "/")
		if s.o.TLS != nil {
			u.Scheme = "https"
		}
		return blobBase, strings.TrimSuffix(u.String(), "/"), nil
	}
	if !validHost(r.Host) {
		return "", "", fmt.Errorf("the request's Host header is not a host[:port]")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	blobBase = scheme + "://" + r.Host
	metaBase = blobBase
	if s.o.TLS != nil {
		metaBase = "https://" + r.Host
	}
	return blobBase, metaBase, nil
}

// chainScript serves GET /boot.ipxe: the same script for every machine, which asks for the
// machine's own by its boot NIC's MAC, SMBIOS UUID and serial.
func (s *Server) chainScript(w http.ResponseWriter, r *http.Request) {
	base, _, err := s.bases(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	b.WriteString("# imgctl serve: ask for the boot script of this machine\n")
	fmt.Fprintf(&b, "chain --autofree %s%s?mac=${netX/mac}&uuid=${uuid}&serial=${serial:uristring} || goto retry\n", base, NodeScriptPath)
	b.WriteString(":retry\n")
	fmt.Fprintf(&b, "echo imgctl: could not fetch the boot script of this machine from %s, retrying in %d seconds\n", base, retryFailed)
	fmt.Fprintf(&b, "sleep %d\n", retryFailed)
	fmt.Fprintf(&b, "chain --autofree %s%s\n", base, ChainScriptPath)
	writeScript(w, b.String())
}

// nodeScript serves GET /ipxe?mac=&uuid=&serial=: the machine's script for the image its
// channel points to now (or its pinned image), with a fresh boot credential; a script that
// says why and retries for an unknown machine or an image that cannot be served.
func (s *Server) nodeScript(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	base, metaBase, err := s.bases(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	id, err := inventory.ParseIdentity(q.Get("mac"), q.Get("uuid"), q.Get("serial"))
	if err != nil {
		s.log.Warn("boot request with a malformed machine identity", "remote", r.RemoteAddr, "err", err)
		writeScript(w, unknownScript(base, inventory.Identity{}, "its identity is malformed"))
		return
	}
	m, ok := s.o.Inventory().Lookup(id)
	if !ok {
		s.log.Warn("boot request from a machine not in the inventory", "mac", id.MAC, "uuid", id.UUID, "serial", id.Serial, "remote", r.RemoteAddr)
		writeScript(w, unknownScript(base, id, "it is not in the inventory"))
		return
	}
	if remote := remoteAddr(r); !m.AllowsAddr(remote) {
		s.m.bootFailures.WithLabelValues(m.Channel).Inc()
		s.log.Warn("boot request for a machine from outside its addresses: a spoofed identity?", "node", m.Name,
			"mac", id.MAC, "uuid", id.UUID, "serial", id.Serial, "remote", r.RemoteAddr)
		writeScript(w, errorScript(base, m.Name, "this address is not allowed to boot it (see the addresses of the machine in the inventory)"))
		return
	}
	nb, imgDigest, err := s.nodeImage(ctx, m)
	if err != nil {
		s.m.bootFailures.WithLabelValues(m.Channel).Inc()
		s.log.Error("cannot boot node", "node", m.Name, "channel", m.Channel, "image", m.Image, "remote", r.RemoteAddr, "err", err)
		writeScript(w, errorScript(base, m.Name, err.Error()))
		return
	}
	mac := id.MAC
	if mac == "" && len(m.MACs) > 0 {
		mac = m.MACs[0]
	}
	token, issued, err := s.o.Auth.Issue(ctx, bootauth.Boot{Node: m.Name, MAC: mac, Channel: m.Channel, Image: imgDigest})
	if err != nil {
		s.m.bootFailures.WithLabelValues(m.Channel).Inc()
		s.log.Error("issuing a boot credential", "node", m.Name, "err", err)
		writeScript(w, errorScript(base, m.Name, "the server could not issue a boot credential (see its log)"))
		return
	}
	s.m.boots.WithLabelValues(m.Channel).Inc()
	s.log.LogAttrs(ctx, slog.LevelInfo, "boot", slog.String("node", m.Name), slog.String("channel", m.Channel),
		slog.String("image", string(imgDigest)), slog.String("version", nb.Version), slog.String("boot", issued.ID),
		slog.String("remote", r.RemoteAddr))
	writeScript(w, s.scripts.render(s, base, metaBase, id, m, nb, imgDigest, token))
}

// scriptCache keeps node scripts rendered up to their credential: all but the token is the
// same for every boot of a machine into one image through one host name, and rendering is
// most of a script's cost. Keys hold the machine pointer, so a reloaded inventory misses and
// renders anew; the cache is dropped whole when it grows past maxScripts.
type scriptCache struct {
	m atomic.Pointer[sync.Map]
	n atomic.Int64
}

const maxScripts = 4096

type scriptKey struct {
	m                     *inventory.Machine
	img                   digest.Digest
	base, metaBase, query string
}

// scriptParts are a script cut at its credential: head + token + tail.
type scriptParts struct{ head, tail string }

// tokenMark stands for the credential while rendering: no script text holds a NUL.
const tokenMark = "\x00"

func (c *scriptCache) render(s *Server, base, metaBase string, id inventory.Identity, m *inventory.Machine, nb netbootImage, img digest.Digest, token string) string {
	k := scriptKey{m: m, img: img, base: base, metaBase: metaBase, query: identityQuery(id, m)}
	mp := c.m.Load()
	if mp == nil {
		mp = &sync.Map{}
		if !c.m.CompareAndSwap(nil, mp) {
			mp = c.m.Load()
		}
	}
	var parts scriptParts
	if v, ok := mp.Load(k); ok {
		parts = v.(scriptParts)
	} else {
		full := s.renderNode(base, metaBase, k.query, m, nb, img)
		head, tail, _ := strings.Cut(full, tokenMark)
		parts = scriptParts{head: head, tail: tail}
		if c.n.Add(1) > maxScripts {
			c.m.Store(&sync.Map{})
			c.n.Store(0)
		} else {
			mp.Store(k, parts)
		}
	}
	if !s.credentials {
		return parts.head
	}
	return parts.head + token + parts.tail
}

// renderNode is a node's script, with tokenMark for its credential.
func (s *Server) renderNode(base, metaBase, query string, m *inventory.Machine, nb netbootImage, img digest.Digest) string {
	var b strings.Builder
	b.Grow(1024)
	from := "pinned image"
	if m.Channel != "" {
		from = "channel " + m.Channel
	}
	b.WriteString("#!ipxe\n")
	fmt.Fprintf(&b, "# imgctl serve: node %s (%s), %s: %s %s\n", m.Name, m.Role, from, nb.Version, img)
	fmt.Fprintf(&b, "echo imgctl: booting %s (%s) from %s: %s\n", m.Name, m.Role, from, nb.Version)
	args := make([]string, 0, 16)
	args = append(args, "initrd="+manifest.InitrdArtifact)
	args = append(args, strings.Fields(nb.Cmdline)...)
	args = append(args, m.KernelArgs...)
	args = append(args,
		boot.Param(boot.KeyRoot, base+BlobsPath+string(nb.Root)),
		boot.Param(boot.KeyRootDigest, string(nb.Root)),
		boot.Param(boot.KeyBootIF, "01-${netX/mac:hexhyp}"),
		boot.Param(boot.KeyMetadata, metaBase+"/?"+query))
	if s.credentials {
		args = append(args, boot.Param(boot.KeyCredential, tokenMark))
		switch {
		case s.pin != "":
			args = append(args, boot.Param(boot.KeyMetadataPin, s.pin))
		case s.o.InsecureSecrets:
			args = append(args, boot.KeyMetadataInsecure)
		}
	}
	fmt.Fprintf(&b, "kernel %s%s%s %s || goto failed\n", base, BlobsPath, nb.Kernel, strings.Join(args, " "))
	fmt.Fprintf(&b, "initrd --name %s %s%s%s || goto failed\n", manifest.InitrdArtifact, base, BlobsPath, nb.Initrd)
	b.WriteString("boot || goto failed\n")
	b.WriteString(":failed\n")
	fmt.Fprintf(&b, "echo imgctl: netboot of %s failed, retrying in %d seconds\n", m.Name, retryFailed)
	fmt.Fprintf(&b, "sleep %d\n", retryFailed)
	fmt.Fprintf(&b, "chain --autofree %s%s\n", base, ChainScriptPath)
	return b.String()
}

// identityQuery is the query the node's metadata URL carries, so that a node without a
// credential can ask for its public config: the identity it booted with, the inventory's
// first MAC if none.
func identityQuery(id inventory.Identity, m *inventory.Machine) string {
	switch {
	case id.MAC != "":
		return "mac=" + id.MAC // normalized: hex digits and ':'
	case id.UUID != "":
		return "uuid=" + id.UUID // normalized: hex digits and '-'
	case id.Serial != "":
		return "serial=" + url.QueryEscape(id.Serial)
	case len(m.MACs) > 0:
		return "mac=" + m.MACs[0]
	}
	return ""
}

// unknownScript tells a machine the server will not boot it, and retries.
func unknownScript(base string, id inventory.Identity, why string) string {
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	fmt.Fprintf(&b, "echo imgctl: this machine cannot boot from %s: %s\n", base, why)
	fmt.Fprintf(&b, "echo imgctl: mac %s, uuid %s, serial %s: add one of them to the inventory\n",
		scriptSafe(id.MAC), scriptSafe(id.UUID), scriptSafe(id.Serial))
	fmt.Fprintf(&b, "echo imgctl: retrying in %d seconds\n", retryUnknown)
	fmt.Fprintf(&b, "sleep %d\n", retryUnknown)
	fmt.Fprintf(&b, "chain --autofree %s%s\n", base, ChainScriptPath)
	return b.String()
}

// errorScript tells a known machine why the server cannot boot it now, and retries.
func errorScript(base, node, why string) string {
	var b strings.Builder
	b.WriteString("#!ipxe\n")
	fmt.Fprintf(&b, "echo imgctl: cannot boot %s: %s\n", node, scriptSafe(why))
	fmt.Fprintf(&b, "echo imgctl: retrying in %d seconds\n", retryError)
	fmt.Fprintf(&b, "sleep %d\n", retryError)
	fmt.Fprintf(&b, "chain --autofree %s%s\n", base, ChainScriptPath)
	return b.String()
}

// scriptSafe is v as an echo line may show it: iPXE expands ${…}, a newline ends a command and
// || && are operators, so only a conservative set of characters passes (others become '_');
// "-" for an empty value.
func scriptSafe(v string) string {
	if v == "" {
		return "-"
	}
	if len(v) > 300 {
		v = v[:300] + "..."
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		case strings.ContainsRune(" .,:;_-+/()=@%!?", r):
			return r
		}
		return '_'
	}, v)
}

func writeScript(w http.ResponseWriter, script string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	_, _ = io.WriteString(w, script)
}

// nodeImage is the image m boots now: its channel's head or its pinned image, servable and
// with netboot artifacts.
func (s *Server) nodeImage(ctx context.Context, m *inventory.Machine) (netbootImage, digest.Digest, error) {
	nb, d, err := s.tryNodeImage(ctx, m, false)
	var ce channelError
	if err != nil && !errors.As(err, &ce) {
		// Perhaps an image stored since the server last looked: look again once.
		nb, d, err = s.tryNodeImage(ctx, m, true)
	}
	return nb, d, err
}

// channelError is why a channel gives no image: looking at the store again does not help.
// msg is for a node's script ("its channel prod ..."), why for the pointer route's answer with
// its status.
type channelError struct {
	msg, why string
	status   int
}

func (e channelError) Error() string { return e.msg }

func (s *Server) tryNodeImage(ctx context.Context, m *inventory.Machine, force bool) (netbootImage, digest.Digest, error) {
	cat, err := s.cat.get(ctx, force)
	if err != nil {
		return netbootImage{}, "", fmt.Errorf("the store cannot be read (see the server's log)")
	}
	var d digest.Digest
	what := ""
	if m.Channel != "" {
		if d, err = s.heads.get(ctx, m.Channel); err != nil {
			return netbootImage{}, "", err
		}
		what = fmt.Sprintf("channel %s points to image %s", m.Channel, d)
	} else {
		if pd, ok := parseBlobDigest(m.Image); ok {
			d = pd
		} else if vd, ok := cat.versions[m.Image]; ok {
			d = vd
		} else {
			return netbootImage{}, "", fmt.Errorf("its pinned image %s is not in the store", m.Image)
		}
		what = fmt.Sprintf("its pinned image %s", d)
	}
	nb, ok := cat.netboot[d]
	if !ok {
		if why, refused := cat.refused[d]; refused {
			var u store.UnreadableImage
			if errors.As(why, &u) {
				return netbootImage{}, "", fmt.Errorf("%s, which cannot be read (run imgctl store verify)", what)
			}
			return netbootImage{}, "", fmt.Errorf("%s, which the trust policy of the store refuses (%v)", what, why)
		}
		return netbootImage{}, "", fmt.Errorf("%s, which is not in the store", what)
	}
	if nb.Err != nil {
		return netbootImage{}, "", fmt.Errorf("%s (%s), which cannot netboot: %w", what, nb.Version, nb.Err)
	}
	return nb, d, nil
}

// heads caches channel heads for Options.Refresh: reading a channel's history per boot would
// cost a file read and a parse each time, and a promotion still reaches the next boot within
// Refresh.
type heads struct {
	s  *Server
	m  sync.Map // channel → *headEntry
	mu sync.Mutex
}

type headEntry struct {
	d   digest.Digest
	err error
	at  atomic.Int64
}

func (h *heads) get(ctx context.Context, ch string) (digest.Digest, error) {
	now := h.s.o.Now().UnixNano()
	if v, ok := h.m.Load(ch); ok {
		if e := v.(*headEntry); now-e.at.Load() < int64(h.s.o.Refresh) {
			return e.d, e.err
		}
	}
	// One goroutine reads the history; the others go on with the head they had meanwhile.
	if _, ok := h.m.Load(ch); ok {
		if !h.mu.TryLock() {
			v, _ := h.m.Load(ch)
			e := v.(*headEntry)
			return e.d, e.err
		}
	} else {
		h.mu.Lock()
	}
	defer h.mu.Unlock()
	if v, ok := h.m.Load(ch); ok {
		if e := v.(*headEntry); now-e.at.Load() < int64(h.s.o.Refresh) {
			return e.d, e.err
		}
	}
	e := &headEntry{}
	hist, err := h.s.o.Channels.History(context.WithoutCancel(ctx), ch)
	switch {
	case errors.Is(err, channel.ErrUnknownChannel):
		e.err = channelError{fmt.Sprintf("its channel %s is not a channel of the store", ch), "not a channel of the store", http.StatusNotFound}
	case err != nil:
		h.s.log.Error("reading a channel", "channel", ch, "err", err)
		e.err = channelError{fmt.Sprintf("its channel %s cannot be read (see the server's log)", ch), "cannot be read (see the server's log)", http.StatusServiceUnavailable}
	case hist.Head() == "":
		e.err = channelError{fmt.Sprintf("its channel %s points to no image yet (promote one)", ch), "points to no image yet (promote one)", http.StatusNotFound}
	default:
		e.d = hist.Head()
	}
	e.at.Store(now)
	h.m.Store(ch, e)
	return e.d, e.err
}
