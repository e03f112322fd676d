// Package bootauth issues and checks per-boot node credentials for imgctl serve: a token that
// a node's iPXE script hands to the node agent, which presents it to read the node's secrets.
//
// A token is self-describing and signed (HMAC-SHA256) with a key kept in the store, so issuing
// one touches no file and every replica serving the same store accepts it. It carries the node,
// the MAC address that asked for the script, the channel and image the script served, a random
// 128-bit boot ID, and when it was issued and expires (Options.TTL, default 30 minutes). Nothing
// a machine can observe about another machine (MAC, UUID, serial, address) lets it derive that
// machine's token.
//
// Authorize binds a token to the caller's address at its first use, and keeps the newest used
// boot of each node in DIR/boots/NODE.json (written atomically under an flock, so replicas on
// one store agree):
//   - the recorded boot from its bound address is accepted until it expires, so a configuration
//     unit that restarts is not locked out;
//   - the recorded boot from another address is refused (ErrAddressMismatch);
//   - a boot issued before the recorded one is refused (ErrSuperseded);
//   - a boot issued after it replaces the record, bound to its caller;
//   - a boot its node has retired (Retire: the node reported it is configured) is refused
//     (ErrRetired): the credential sits in /proc/cmdline, readable by any process on the node.
//
// Issue writes nothing, so a newer boot supersedes the older credentials of its node once its
// own token has been used, not when it is issued: until then an older, unexpired token of the
// node still works. Ordering is by issue time (then boot ID), so replicas need clocks in step.
// Both refusals are logged at WARN as a possible duplicate or spoofed node. No error or log line
// contains a token.
package bootauth

import (
	"context"
	"crypto/hmac"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/layers/atomicfile"
	digest "github.com/opencontainers/go-digest"
)

const (
	// KeyFile is the signing key's file in the Authority's directory: 64 hex digits and a
	// newline (256 bits), mode 0600. Removing it invalidates every issued token.
	KeyFile = "token.key"
	// BootsDir holds NODE.json, the newest used boot of each node, and NODE.lock.
	BootsDir = "boots"
	// DefaultTTL is a token's lifetime when Options.TTL is zero.
	DefaultTTL = 30 * time.Minute
	// MaxTokenLen bounds a token's length; longer ones are refused before any other work.
	MaxTokenLen = 512

	version    = "v1"
	sep        = '_' // in no node name, MAC, channel name or registered digest
	nFields    = 9   // version node id issued expires mac channel image signature
	keyLen     = 32
	idLen      = 16
	sigHexLen  = 2 * sha256.Size
	recordVers = 1
)

// The refusals Authorize returns (test with errors.Is).
var (
	// ErrInvalidToken: malformed, or its signature (HMAC) does not match this store's key.
	ErrInvalidToken = errors.New("invalid boot credential")
	// ErrExpired: the token's lifetime is over.
	ErrExpired = errors.New("boot credential expired")
	// ErrSuperseded: a newer boot of the node was issued and its token used.
	ErrSuperseded = errors.New("boot credential superseded by a newer boot of the node")
	// ErrAddressMismatch: the token is bound to another address (duplicate or spoofed node).
	ErrAddressMismatch = errors.New("boot credential bound to another address")
	// ErrRetired: its node reported that it finished configuring (Retire); the credential,
	// which any process on the node can read in /proc/cmdline, opens nothing any more.
	ErrRetired = errors.New("boot credential retired: its node is configured")
)

// Options tune an Authority. The zero value is ready for production.
type Options struct {
	TTL    time.Duration    // a token's lifetime; 0: DefaultTTL
	Now    func() time.Time // the clock; nil: time.Now
	Rand   io.Reader        // boot IDs and a new key; nil: crypto/rand. Read under a lock.
	Logger *slog.Logger     // nil: discard
}

// Boot is one boot of one node: what a token says.
type Boot struct {
	ID      string        `json:"id"` // random, 128 bits, 32 hex digits
	Node    string        `json:"node"`
	MAC     string        `json:"mac,omitempty"`     // aa:bb:cc:dd:ee:ff that asked for the script, if any
	Channel string        `json:"channel,omitempty"` // "" for a pinned image
	Image   digest.Digest `json:"image"`             // the image the script served
	Issued  time.Time     `json:"issued"`            // microsecond precision, UTC
	Expires time.Time     `json:"expires"`
	Addr    string        `json:"addr,omitempty"` // the address the token is bound to; "" until first use
}

// Authority issues and checks the tokens of one store. It is safe for concurrent use by
// goroutines and by processes sharing its directory.
type Authority struct {
	dir  string
	ttl  time.Duration
	now  func() time.Time
	log  *slog.Logger
	macs sync.Pool // of hash.Hash: HMAC-SHA256 with the key

	randMu sync.Mutex
	rand   io.Reader // nil: crypto/rand.Read, which needs no lock
}

// Open returns the Authority of dir (<store>/serve), creating dir, dir/boots and the signing
// key if missing. The parent of dir must exist. Of replicas creating the key at once, one wins
// and the others read its key; a key file that is not a key is an error, never replaced.
func Open(dir string, o Options) (*Authority, error) {
	if o.TTL < 0 {
		return nil, fmt.Errorf("boot credential TTL %v: expected a positive duration", o.TTL)
	}
	a := &Authority{dir: dir, ttl: o.TTL, now: o.Now, log: o.Logger, rand: o.Rand}
	if a.ttl == 0 {
		a.ttl = DefaultTTL
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{dir, filepath.Join(dir, BootsDir)} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("boot credentials: %w", err)
		}
	}
	key, err := a.loadKey()
	if err != nil {
		return nil, err
	}
	a.macs.New = func() any { return hmac.New(sha256.New, key) }
	return a, nil
}

func (a *Authority) random(p []byte) error {
	if a.rand == nil {
		_, err := crand.Read(p)
		return err
	}
	a.randMu.Lock()
	defer a.randMu.Unlock()
	_, err := io.ReadFull(a.rand, p)
	return err
}

// loadKey reads dir/token.key, or creates it: the new key goes to a temp file that is synced
// and then hard-linked to the name, so the name appears with its whole content or not at all,
// and exactly one racing replica's link succeeds; the losers read the winner's key.
func (a *Authority) loadKey() ([]byte, error) {
	path := filepath.Join(a.dir, KeyFile)
	key, err := readKey(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, err
	}
	key = make([]byte, keyLen)
	if err := a.random(key); err != nil {
		return nil, fmt.Errorf("making %s: %w", path, err)
	}
	f, err := os.CreateTemp(a.dir, ".tmp-"+KeyFile+"-*") // mode 0600
	if err != nil {
		return nil, fmt.Errorf("making %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }()
	_, err = f.WriteString(hex.EncodeToString(key) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("making %s: %w", path, err)
	}
	switch err := os.Link(tmp, path); {
	case err == nil:
		if err := atomicfile.SyncDir(a.dir); err != nil {
			return nil, err
		}
		a.log.Info("made a new boot credential key", "file", path)
		return key, nil
	case errors.Is(err, fs.ErrExist):
		return readKey(path) // another replica won
	default:
		return nil, fmt.Errorf("making %s: %w", path, err)
	}
}

func readKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s: mode %v lets others read or change the boot credential key (expected 0600: chmod 600 %s)", path, st.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 2*keyLen+2))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	text, _ := strings.CutSuffix(string(data), "\n")
	key, err := hex.DecodeString(text)
	if err != nil || len(key) != keyLen || strings.ToLower(text) != text {
		return nil, fmt.Errorf("%s: not a boot credential key (expected 64 hex digits and a newline); "+
			"it is left as it is: restore it, or remove it to make a new key, which invalidates every issued credential", path)
	}
	return key, nil
}

// sum is the HMAC-SHA256 of payload under the key.
func (a *Authority) sum(payload []byte) [sha256.Size]byte {
	h := a.macs.Get().(hash.Hash)
	h.Reset()
	h.Write(payload)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	a.macs.Put(h)
	return sum
}

// Issue makes a token for boot b of a node, filling in b's ID, Issued and Expires (and clearing
// Addr). It touches no file. Node must be a node name, MAC empty or aa:bb:cc:dd:ee:ff in lower
// case, Channel empty or a channel name, Image a digest.
func (a *Authority) Issue(ctx context.Context, b Boot) (token string, issued Boot, err error) {
	if err := checkBoot(&b); err != nil {
		return "", Boot{}, fmt.Errorf("issuing a boot credential: %w", err)
	}
	var id [idLen]byte
	if err := a.random(id[:]); err != nil {
		return "", Boot{}, fmt.Errorf("issuing a boot credential for node %s: %w", b.Node, err)
	}
	now := a.now()
	b.ID = hex.EncodeToString(id[:])
	b.Issued = time.UnixMicro(now.UnixMicro()).UTC()
	b.Expires = time.UnixMicro(now.Add(a.ttl).UnixMicro()).UTC()
	b.Addr = ""
	buf := make([]byte, 0, 128+len(b.Node)+len(b.Channel)+len(b.Image))
	buf = append(buf, version...)
	for _, s := range []string{b.Node, b.ID} {
		buf = append(append(buf, sep), s...)
	}
	buf = strconv.AppendInt(append(buf, sep), b.Issued.UnixMicro(), 10)
	buf = strconv.AppendInt(append(buf, sep), b.Expires.UnixMicro(), 10)
	for _, s := range []string{b.MAC, b.Channel, string(b.Image)} {
		buf = append(append(buf, sep), s...)
	}
	buf = append(buf, sep)
	sum := a.sum(buf)
	return string(hex.AppendEncode(buf, sum[:])), b, nil
}

// checkBoot validates the fields a token carries.
func checkBoot(b *Boot) error {
	if err := nodeconfig.CheckNodeName(b.Node); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if b.MAC != "" {
		hw, err := net.ParseMAC(b.MAC)
		if err != nil || len(hw) != 6 || hw.String() != b.MAC {
			return fmt.Errorf("node %s: MAC %q: expected six lower-case hex pairs separated by ':'", b.Node, b.MAC)
		}
	}
	if b.Channel != "" {
		if err := channel.ValidateName(b.Channel); err != nil {
			return fmt.Errorf("node %s: %w", b.Node, err)
		}
	}
	if !isSHA256(b.Image) {
		return fmt.Errorf("node %s: image %q: expected sha256: and 64 lower-case hex digits", b.Node, b.Image)
	}
	return nil
}

// isSHA256 reports whether d is sha256:HEX with 64 lower-case hex digits: what the store's
// images are. A loop, not go-digest's regular expression: Issue runs for every node script.
func isSHA256(d digest.Digest) bool {
	hex, ok := strings.CutPrefix(string(d), "sha256:")
	if !ok || len(hex) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(hex); i++ {
		if c := hex[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// parse checks a token's signature, then its fields. Its errors never quote the token or any
// part of it: an unsigned token's fields are the sender's words.
func (a *Authority) parse(token string) (Boot, error) {
	bad := func(what string) (Boot, error) { return Boot{}, fmt.Errorf("%w: %s", ErrInvalidToken, what) }
	if len(token) > MaxTokenLen {
		return bad(fmt.Sprintf("%d bytes (expected at most %d)", len(token), MaxTokenLen))
	}
	i := strings.LastIndexByte(token, sep)
	if i < 0 || len(token)-i-1 != sigHexLen {
		return bad("malformed")
	}
	var got [sha256.Size]byte
	if n, err := hex.Decode(got[:], []byte(token[i+1:])); err != nil || n != len(got) {
		return bad("malformed signature")
	}
	sum := a.sum([]byte(token[:i+1]))
	ok := hmac.Equal(sum[:], got[:]) && strings.ToLower(token[i+1:]) == token[i+1:]
	if !ok {
		return bad("signature does not match this store's key")
	}
	f := strings.Split(token[:i], string(sep))
	if len(f) != nFields-1 || f[0] != version {
		return bad(fmt.Sprintf("signed, but not a %s token with %d fields", version, nFields))
	}
	b := Boot{Node: f[1], ID: f[2], MAC: f[5], Channel: f[6], Image: digest.Digest(f[7])}
	issued, err1 := strconv.ParseInt(f[3], 10, 64)
	expires, err2 := strconv.ParseInt(f[4], 10, 64)
	id, err3 := hex.DecodeString(b.ID)
	if err := errors.Join(err1, err2, err3, checkBoot(&b)); err != nil || len(id) != idLen || expires < issued {
		return bad(fmt.Sprintf("signed, but its fields are not valid: %v", err))
	}
	b.Issued, b.Expires = time.UnixMicro(issued).UTC(), time.UnixMicro(expires).UTC()
	return b, nil
}
