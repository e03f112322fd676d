package bootauth_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/bootauth"
	digest "github.com/opencontainers/go-digest"
)

// clock is an injected clock that tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var (
	seeds  atomic.Int32
	imgOld = digest.FromString("old image")
	imgNew = digest.FromString("new image")
	ctx    = context.Background()
)

// fixture is one store's serve directory with an Authority on an injected clock, rand and a
// logger writing to logs.
type fixture struct {
	dir   string
	clock *clock
	logs  *bytes.Buffer
	opts  bootauth.Options
	a     *bootauth.Authority
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		dir:   filepath.Join(t.TempDir(), "serve"),
		clock: &clock{t: time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)},
		logs:  &bytes.Buffer{},
	}
	f.opts = bootauth.Options{
		Now:    f.clock.Now,
		Rand:   rand.NewChaCha8([32]byte{byte(seeds.Add(1))}), // each fixture its own key
		Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: f.logs}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	f.a = f.open(t)
	return f
}

// open opens another Authority (a replica) on the fixture's directory and clock.
func (f *fixture) open(t *testing.T) *bootauth.Authority {
	t.Helper()
	a, err := bootauth.Open(f.dir, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func issue(t *testing.T, a *bootauth.Authority, node string, img digest.Digest) (string, bootauth.Boot) {
	t.Helper()
	tok, b, err := a.Issue(ctx, bootauth.Boot{Node: node, MAC: "52:54:00:12:34:56", Channel: "stable", Image: img})
	if err != nil {
		t.Fatal(err)
	}
	return tok, b
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestAuthorize runs sequences of issues, clock moves and uses against the rules: the first use
// binds, retries from the bound address work until expiry, other addresses and older boots of
// a node whose newer boot was used are refused.
func TestAuthorize(t *testing.T) {
	type step struct {
		advance time.Duration
		issue   string // issue a new token for this node (tokens are numbered in issue order)
		use     int    // else: use token number use
		from    string
		want    error // nil: authorized
	}
	const A, B = "10.0.0.1", "10.0.0.2"
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"first use binds, retries from the same address work", []step{
			{issue: "web-1"}, {use: 0, from: A}, {advance: 10 * time.Minute, use: 0, from: A}, {advance: 19 * time.Minute, use: 0, from: A},
		}},
		{"another address is refused, the bound one still works", []step{
			{issue: "web-1"}, {use: 0, from: A}, {use: 0, from: B, want: bootauth.ErrAddressMismatch}, {use: 0, from: A},
		}},
		{"an IPv4-mapped IPv6 address is the IPv4 address", []step{
			{issue: "web-1"}, {use: 0, from: A}, {use: 0, from: "::ffff:" + A}, {use: 0, from: "::ffff:" + B, want: bootauth.ErrAddressMismatch},
		}},
		{"IPv6 callers bind too", []step{
			{issue: "web-1"}, {use: 0, from: "fd00::1"}, {use: 0, from: "fd00::1"}, {use: 0, from: "fd00::2", want: bootauth.ErrAddressMismatch},
		}},
		{"expired before first use", []step{
			{issue: "web-1"}, {advance: 30 * time.Minute, use: 0, from: A, want: bootauth.ErrExpired},
		}},
		{"expired after binding", []step{
			{issue: "web-1"}, {use: 0, from: A}, {advance: 30*time.Minute - time.Microsecond, use: 0, from: A},
			{advance: time.Microsecond, use: 0, from: A, want: bootauth.ErrExpired},
		}},
		{"a used newer boot supersedes an older one, from any address", []step{
			{issue: "web-1"}, {advance: time.Second, issue: "web-1"}, {use: 1, from: B},
			{use: 0, from: A, want: bootauth.ErrSuperseded}, {use: 0, from: B, want: bootauth.ErrSuperseded}, {use: 1, from: B},
		}},
		{"an older boot works until the newer one is used", []step{
			{issue: "web-1"}, {advance: time.Second, issue: "web-1"}, {use: 0, from: A}, {use: 0, from: A},
			{use: 1, from: A}, {use: 0, from: A, want: bootauth.ErrSuperseded},
		}},
		{"a newer boot binds afresh (a new DHCP lease)", []step{
			{issue: "web-1"}, {use: 0, from: A}, {advance: time.Minute, issue: "web-1"}, {use: 1, from: B},
			{use: 1, from: A, want: bootauth.ErrAddressMismatch}, {use: 0, from: A, want: bootauth.ErrSuperseded},
		}},
		{"nodes are independent", []step{
			{issue: "web-1"}, {issue: "web-2"}, {use: 0, from: A}, {use: 1, from: B},
			{advance: time.Second, issue: "web-2"}, {use: 2, from: B}, {use: 0, from: A},
			{use: 1, from: B, want: bootauth.ErrSuperseded},
		}},
		{"expiry beats the record", []step{
			{issue: "web-1"}, {advance: time.Second, issue: "web-1"}, {use: 1, from: A},
			{advance: time.Hour, use: 0, from: A, want: bootauth.ErrExpired},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			var toks []string
			var boots []bootauth.Boot
			for i, s := range c.steps {
				f.clock.Add(s.advance)
				if s.issue != "" {
					tok, b := issue(t, f.a, s.issue, imgOld)
					toks, boots = append(toks, tok), append(boots, b)
					continue
				}
				got, err := f.a.Authorize(ctx, toks[s.use], addr(s.from))
				if s.want == nil {
					want := boots[s.use]
					want.Addr = addr(s.from).Unmap().String()
					if err != nil || got != want {
						t.Fatalf("step %d: Authorize(token %d, %s) = %+v, %v; want %+v", i, s.use, s.from, got, err, want)
					}
					continue
				}
				if !errors.Is(err, s.want) {
					t.Fatalf("step %d: Authorize(token %d, %s) = %+v, %v; want %v", i, s.use, s.from, got, err, s.want)
				}
				if got != (bootauth.Boot{}) {
					t.Errorf("step %d: refused Authorize returned a boot: %+v", i, got)
				}
			}
		})
	}
}

// TestIssue checks what a token looks like and what Issue fills in.
func TestIssue(t *testing.T) {
	f := newFixture(t)
	in := bootauth.Boot{Node: "rack1.web-1", MAC: "52:54:00:12:34:56", Channel: "stable", Image: imgOld,
		ID: "ignored", Addr: "10.9.9.9", Issued: time.Unix(1, 0)}
	tok, b, err := f.a.Issue(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(b.ID) {
		t.Errorf("ID = %q, want 32 hex digits", b.ID)
	}
	now := f.clock.Now()
	if !b.Issued.Equal(now) || !b.Expires.Equal(now.Add(bootauth.DefaultTTL)) || b.Addr != "" {
		t.Errorf("issued %v expires %v addr %q; want %v, %v, empty", b.Issued, b.Expires, b.Addr, now, now.Add(bootauth.DefaultTTL))
	}
	if b.Node != in.Node || b.MAC != in.MAC || b.Channel != in.Channel || b.Image != in.Image {
		t.Errorf("Issue changed the boot's identity: %+v", b)
	}
	// Safe on a kernel command line, in an iPXE script and in an HTTP header: no '$', space,
	// quote, ';', '%', '&', '#', '=' or '\'.
	if !regexp.MustCompile(`^v1_[a-z0-9._:_-]+$`).MatchString(tok) || len(tok) > bootauth.MaxTokenLen {
		t.Errorf("token %q has unsafe characters or is longer than %d", tok, bootauth.MaxTokenLen)
	}
	// Not derivable from the node's identity: the same boot issued again is another token.
	tok2, b2, err := f.a.Issue(ctx, in)
	if err != nil || tok2 == tok || b2.ID == b.ID {
		t.Errorf("second Issue of the same boot: %v; same token %v, same ID %v", err, tok2 == tok, b2.ID == b.ID)
	}
	// A pinned image has no channel, and a machine known by UUID alone may have no MAC.
	pinned := bootauth.Boot{Node: "db-1", Image: imgNew}
	tok3, b3, err := f.a.Issue(ctx, pinned)
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.a.Authorize(ctx, tok3, addr("10.0.0.3"))
	b3.Addr = "10.0.0.3"
	if err != nil || got != b3 {
		t.Errorf("Authorize(pinned) = %+v, %v; want %+v", got, err, b3)
	}
	// A custom TTL.
	o := f.opts
	o.TTL = 2 * time.Minute
	short, err := bootauth.Open(f.dir, o)
	if err != nil {
		t.Fatal(err)
	}
	if _, b, _ := short.Issue(ctx, pinned); !b.Expires.Equal(now.Add(2 * time.Minute)) {
		t.Errorf("TTL 2m: expires %v", b.Expires)
	}
}

// TestIssueWritesNothing: Issue needs no file system (the bench renders scripts at 60k/s).
func TestIssueWritesNothing(t *testing.T) {
	f := newFixture(t)
	if err := os.RemoveAll(f.dir); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.a.Issue(ctx, bootauth.Boot{Node: "web-1", Image: imgOld}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Issue touched the file system: %v", err)
	}
}

func TestIssueRejects(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct {
		name string
		b    bootauth.Boot
		want string
	}{
		{"no node", bootauth.Boot{Image: imgOld}, "node"},
		{"path in node", bootauth.Boot{Node: "../x", Image: imgOld}, `node: "../x"`},
		{"upper-case node", bootauth.Boot{Node: "Web", Image: imgOld}, "node"},
		{"underscore node", bootauth.Boot{Node: "a_b", Image: imgOld}, "node"},
		{"bad MAC", bootauth.Boot{Node: "a", MAC: "52:54:00:12:34", Image: imgOld}, `MAC "52:54:00:12:34"`},
		{"upper-case MAC", bootauth.Boot{Node: "a", MAC: "52:54:00:AB:34:56", Image: imgOld}, "MAC"},
		{"bad channel", bootauth.Boot{Node: "a", Channel: "a_b", Image: imgOld}, "channel"},
		{"no image", bootauth.Boot{Node: "a"}, "image"},
		{"bad image", bootauth.Boot{Node: "a", Image: "sha256:xyz"}, "image"},
		{"upper-case image", bootauth.Boot{Node: "a", Image: digest.Digest(strings.ToUpper(string(imgOld)))}, "image"},
		{"upper-case hex", bootauth.Boot{Node: "a", Image: digest.Digest("sha256:" + strings.ToUpper(imgOld.Encoded()))}, "image"},
		{"long image", bootauth.Boot{Node: "a", Image: imgOld + "0"}, "image"},
		{"sha512 image", bootauth.Boot{Node: "a", Image: digest.Digest("sha512:" + strings.Repeat("a", 128))}, "image"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tok, _, err := f.a.Issue(ctx, c.b)
			if err == nil || tok != "" || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Issue(%+v) = %q, %v; want an error naming %q", c.b, tok, err, c.want)
			}
		})
	}
}

// TestTampered: a token that was changed, or signed with another store's key, is invalid.
func TestTampered(t *testing.T) {
	f := newFixture(t)
	tok, _ := issue(t, f.a, "web-1", imgOld)
	other := newFixture(t) // another store: another key
	foreign, _ := issue(t, other.a, "web-1", imgOld)
	fields := strings.Split(tok, "_")
	with := func(i int, v string) string {
		g := append([]string(nil), fields...)
		g[i] = v
		return strings.Join(g, "_")
	}
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == '0' {
			b[i] = '1'
		} else {
			b[i] = '0'
		}
		return string(b)
	}
	last := len(fields) - 1
	for _, c := range []struct{ name, tok string }{
		{"empty", ""},
		{"garbage", "hello"},
		{"node", with(1, "web-2")},
		{"boot ID", with(2, flip(fields[2], 0))},
		{"issued", with(3, flip(fields[3], len(fields[3])-1))},
		{"expiry", with(4, fields[4]+"0")},
		{"MAC", with(5, "52:54:00:12:34:57")},
		{"channel", with(6, "beta")},
		{"image", with(7, imgNew.String())},
		{"signature", with(last, flip(fields[last], 10))},
		{"short signature", with(last, fields[last][:63])},
		{"upper-case signature", with(last, strings.ToUpper(fields[last]))},
		{"no signature", strings.Join(fields[:last], "_")},
		{"version", with(0, "v2")},
		{"extra field", strings.Join(append(fields[:last:last], "x", fields[last]), "_")},
		{"too long", tok + strings.Repeat("0", bootauth.MaxTokenLen)},
		{"another store's key", foreign},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.tok == tok {
				t.Fatal("the tampered token is the token")
			}
			got, err := f.a.Authorize(ctx, c.tok, addr("10.0.0.1"))
			if !errors.Is(err, bootauth.ErrInvalidToken) || got != (bootauth.Boot{}) {
				t.Fatalf("Authorize = %+v, %v; want ErrInvalidToken", got, err)
			}
		})
	}
	// The untouched token still works: the failures above bound nothing.
	if _, err := f.a.Authorize(ctx, tok, addr("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.a.Authorize(ctx, tok, netip.Addr{}); err == nil {
		t.Error("Authorize without a caller address succeeded")
	}
}

// TestNoTokenInErrorsOrLogs drives every refusal and checks that neither a token nor its
// signature shows up in an error or a log line, and that the refusals that may mean a
// duplicate or spoofed node are logged at WARN naming the node and both addresses.
func TestNoTokenInErrorsOrLogs(t *testing.T) {
	f := newFixture(t)
	t0, b0 := issue(t, f.a, "web-1", imgOld)
	f.clock.Add(time.Second)
	t1, _ := issue(t, f.a, "web-1", imgOld)
	var errs []error
	use := func(tok, from string, want error) {
		_, err := f.a.Authorize(ctx, tok, addr(from))
		if !errors.Is(err, want) {
			t.Fatalf("Authorize from %s = %v, want %v", from, err, want)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	use(t0, "10.0.0.1", nil)
	use(t0, "10.0.0.66", bootauth.ErrAddressMismatch)
	use(t1, "10.0.0.1", nil)
	use(t0, "10.0.0.1", bootauth.ErrSuperseded)
	use(t1[:len(t1)-1]+"x", "10.0.0.1", bootauth.ErrInvalidToken)
	use(strings.Replace(t1, "web-1", "web-2", 1), "10.0.0.1", bootauth.ErrInvalidToken)
	f.clock.Add(time.Hour)
	use(t1, "10.0.0.1", bootauth.ErrExpired)

	logs := f.logs.String()
	for _, tok := range []string{t0, t1} {
		sig := tok[strings.LastIndexByte(tok, '_')+1:]
		for _, err := range errs {
			if strings.Contains(err.Error(), sig) {
				t.Errorf("error contains a token signature: %v", err)
			}
		}
		if strings.Contains(logs, sig) {
			t.Errorf("logs contain a token signature:\n%s", logs)
		}
	}
	if msg := errs[0].Error(); !strings.Contains(msg, "web-1") || !strings.Contains(msg, "10.0.0.1") || !strings.Contains(msg, "10.0.0.66") {
		t.Errorf("address mismatch error %q does not name the node, the bound and the calling address", msg)
	}
	if msg := errs[1].Error(); !strings.Contains(msg, "web-1") || !strings.Contains(msg, b0.ID) {
		t.Errorf("superseded error %q does not name the node and the boot", msg)
	}
	warns := regexp.MustCompile(`(?m)^.*level=WARN.*possible duplicate or spoofed node.*$`).FindAllString(logs, -1)
	if len(warns) != 2 || !strings.Contains(warns[0], "node=web-1") || !strings.Contains(warns[0], "bound=10.0.0.1") ||
		!strings.Contains(warns[0], "caller=10.0.0.66") || !strings.Contains(warns[1], "node=web-1") {
		t.Errorf("want 2 WARN lines (address mismatch, superseded) naming node and addresses, got:\n%s", logs)
	}
}

// TestReplicasAgree: two Authority values on one directory (two replicas of imgctl serve on one
// store) accept each other's tokens and share the per-node records.
func TestReplicasAgree(t *testing.T) {
	f := newFixture(t)
	r1, r2 := f.a, f.open(t)
	tok, _ := issue(t, r1, "web-1", imgOld)
	if _, err := r2.Authorize(ctx, tok, addr("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Authorize(ctx, tok, addr("10.0.0.1")); err != nil {
		t.Fatalf("retry on the other replica: %v", err)
	}
	if _, err := r1.Authorize(ctx, tok, addr("10.0.0.2")); !errors.Is(err, bootauth.ErrAddressMismatch) {
		t.Fatalf("other address on the other replica: %v", err)
	}
	f.clock.Add(time.Second)
	newer, _ := issue(t, r2, "web-1", imgNew)
	if b, err := r1.Authorize(ctx, newer, addr("10.0.0.3")); err != nil || b.Image != imgNew {
		t.Fatalf("newer boot on r1: %+v, %v", b, err)
	}
	if _, err := r2.Authorize(ctx, tok, addr("10.0.0.1")); !errors.Is(err, bootauth.ErrSuperseded) {
		t.Fatalf("older boot on r2 after the newer was used on r1: %v", err)
	}
}

// TestFirstUseRace: many first uses of one token from different addresses, spread over two
// replicas, race; exactly one wins and every other is refused as an address mismatch.
func TestFirstUseRace(t *testing.T) {
	f := newFixture(t)
	replicas := []*bootauth.Authority{f.a, f.open(t)}
	for round := range 4 {
		node := fmt.Sprintf("web-%d", round)
		tok, _ := issue(t, f.a, node, imgOld)
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winners []string
			start   = make(chan struct{})
		)
		for i := range 24 {
			from := fmt.Sprintf("10.0.%d.%d", round, i+1)
			wg.Go(func() {
				<-start
				b, err := replicas[i%2].Authorize(ctx, tok, addr(from))
				switch {
				case err == nil:
					mu.Lock()
					winners = append(winners, from)
					mu.Unlock()
					if b.Addr != from {
						t.Errorf("won from %s but bound to %s", from, b.Addr)
					}
				case !errors.Is(err, bootauth.ErrAddressMismatch):
					t.Errorf("from %s: %v", from, err)
				}
			})
		}
		close(start)
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("round %d: %d winners: %v", round, len(winners), winners)
		}
		for _, r := range replicas {
			if _, err := r.Authorize(ctx, tok, addr(winners[0])); err != nil {
				t.Errorf("the winner's retry: %v", err)
			}
		}
	}
}

// TestKeyRace: replicas starting at once on a fresh store all end up with the one key.
func TestKeyRace(t *testing.T) {
	for round := range 5 {
		dir := filepath.Join(t.TempDir(), "serve")
		as := make([]*bootauth.Authority, 12)
		var wg sync.WaitGroup
		for i := range as {
			wg.Go(func() {
				a, err := bootauth.Open(dir, bootauth.Options{}) // real randomness: racers make different keys
				if err != nil {
					t.Errorf("round %d: Open %d: %v", round, i, err)
				}
				as[i] = a
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		for i, a := range as {
			tok, _ := issue(t, a, fmt.Sprintf("web-%d", i), imgOld)
			if _, err := as[(i+1)%len(as)].Authorize(ctx, tok, addr("10.0.0.1")); err != nil {
				t.Fatalf("round %d: a token of replica %d on replica %d: %v", round, i, (i+1)%len(as), err)
			}
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if strings.Join(names, " ") != "boots token.key" {
			t.Errorf("round %d: serve directory holds %v, want boots and token.key", round, names)
		}
		if st, err := os.Stat(filepath.Join(dir, "token.key")); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("token.key: %v, %v; want mode 0600", st.Mode(), err)
		}
	}
}

// TestBadKeyFile: a key file that is not a key is an error naming it, and it is never replaced.
func TestBadKeyFile(t *testing.T) {
	good := strings.Repeat("0123456789abcdef", 4) + "\n"
	for _, c := range []struct {
		name, content string
		mode          os.FileMode
		want          string
	}{
		{"empty", "", 0o600, "expected 64 hex digits"},
		{"short", good[:40], 0o600, "expected 64 hex digits"},
		{"not hex", strings.Repeat("z", 64) + "\n", 0o600, "expected 64 hex digits"},
		{"trailing garbage", good + "x", 0o600, "expected 64 hex digits"},
		{"readable by others", good, 0o644, "chmod 600"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "serve")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, "token.key")
			if err := os.WriteFile(p, []byte(c.content), c.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, c.mode); err != nil {
				t.Fatal(err)
			}
			_, err := bootauth.Open(dir, bootauth.Options{})
			if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Open = %v, want an error naming %s and %q", err, p, c.want)
			}
			if got, _ := os.ReadFile(p); string(got) != c.content {
				t.Errorf("key file changed to %q", got)
			}
		})
	}
	// A good key file is read as it is.
	dir := filepath.Join(t.TempDir(), "serve")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "token.key"), []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := bootauth.Open(dir, bootauth.Options{}); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRejects(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-store", "serve")
	if _, err := bootauth.Open(missing, bootauth.Options{}); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Open in a missing store = %v, want an error naming %s", err, missing)
	}
	if _, err := bootauth.Open(filepath.Join(t.TempDir(), "serve"), bootauth.Options{TTL: -time.Second}); err == nil || !strings.Contains(err.Error(), "TTL") {
		t.Errorf("Open with a negative TTL = %v", err)
	}
}

// TestBadBootRecord: a damaged boots/NODE.json refuses that node's credentials, naming the file,
// and is left for the operator (never silently replaced).
func TestBadBootRecord(t *testing.T) {
	f := newFixture(t)
	tok, _ := issue(t, f.a, "web-1", imgOld)
	p := filepath.Join(f.dir, "boots", "web-1.json")
	if err := os.WriteFile(p, []byte(`{"schemaVersion":1,"boot":{"node":"web-2"`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.a.Authorize(ctx, tok, addr("10.0.0.1")); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("Authorize with a damaged record = %v, want an error naming %s", err, p)
	}
	if err := os.WriteFile(p, []byte(`{"schemaVersion":1,"boot":{"id":"00000000000000000000000000000000","node":"web-2","image":"`+imgOld.String()+`","issued":"2026-12-05T00:00:00Z","expires":"2026-12-05T00:30:00Z","addr":"10.0.0.1"},"bound":"2026-12-05T00:00:00Z"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.a.Authorize(ctx, tok, addr("10.0.0.1")); err == nil || !strings.Contains(err.Error(), `"web-2"`) {
		t.Fatalf("Authorize with another node's record = %v, want an error naming the node", err)
	}
	if got, _ := os.ReadFile(p); !strings.Contains(string(got), "web-2") {
		t.Errorf("record replaced: %s", got)
	}
}

func BenchmarkIssue(b *testing.B) {
	a, err := bootauth.Open(filepath.Join(b.TempDir(), "serve"), bootauth.Options{})
	if err != nil {
		b.Fatal(err)
	}
	in := bootauth.Boot{Node: "rack12.web-123", MAC: "52:54:00:12:34:56", Channel: "stable", Image: imgOld}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := a.Issue(ctx, in); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestRetire: once its node reports it is configured, a boot's credential is retired: every
// later use is refused, on every replica, and logged; retiring another boot changes nothing.
func TestRetire(t *testing.T) {
	f := newFixture(t)
	r1, r2 := f.a, f.open(t)
	tok, _ := issue(t, r1, "web-1", imgOld)
	b, err := r1.Authorize(ctx, tok, addr("10.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := issue(t, r1, "web-2", imgOld)
	ob, err := r1.Authorize(ctx, other, addr("10.0.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Retire(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Authorize(ctx, tok, addr("10.0.0.1")); !errors.Is(err, bootauth.ErrRetired) {
		t.Fatalf("use after retirement: %v, want ErrRetired", err)
	}
	if _, err := r2.Authorize(ctx, tok, addr("10.0.0.1")); !errors.Is(err, bootauth.ErrRetired) {
		t.Fatalf("use after retirement on the other replica: %v, want ErrRetired", err)
	}
	if _, err := r1.Authorize(ctx, other, addr("10.0.0.2")); err != nil {
		t.Fatalf("another node's credential after web-1's retirement: %v", err)
	}
	// Retiring a boot that is no longer the node's newest does nothing to the newer one.
	f.clock.Add(time.Second)
	newer, _ := issue(t, r1, "web-2", imgNew)
	if _, err := r1.Authorize(ctx, newer, addr("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	if err := r1.Retire(ctx, ob); err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Authorize(ctx, newer, addr("10.0.0.2")); err != nil {
		t.Fatalf("newer boot after retiring the older one: %v", err)
	}
	if !strings.Contains(f.logs.String(), "after its node was configured") {
		t.Errorf("no WARN line for a retired credential:\n%s", f.logs)
	}
	if strings.Contains(f.logs.String(), tok) {
		t.Errorf("a log line shows the token")
	}
}
