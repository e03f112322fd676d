package serve

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store/storetest"
)

func TestChainScript(t *testing.T) {
	f := newFixture(t, storetest.Open(t), Options{})
	w := f.do(t, "GET", "/boot.ipxe", "10.0.0.1:1000", false, "")
	if w.Code != 200 || w.Header().Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("%d %s", w.Code, w.Header())
	}
	golden(t, "boot.ipxe", w.Body.String())

	f2 := newFixture(t, storetest.Open(t), Options{AdvertiseURL: "http://10.1.2.3:8080/netboot/"})
	golden(t, "boot-advertise.ipxe", f2.do(t, "GET", "/boot.ipxe", "10.0.0.1:1000", false, "").Body.String())

	// A hostile Host header never reaches a script.
	w = f.do(t, "GET", "/boot.ipxe", "10.0.0.1:1000", false, "", "Host", "x${evil}")
	r := w.Body.String()
	if strings.Contains(r, "evil") && w.Code == 200 {
		t.Errorf("Host header in the script: %s", r)
	}
}

// Node scripts, golden: from a channel with TLS (credential + pin), a pinned image with
// --insecure-secrets, and plain HTTP without it (no credential).
func TestNodeScriptGolden(t *testing.T) {
	st := storetest.Open(t)
	putPXE(t, st, "1.0.0", 1700000000, 0, "console=tty0 quiet")
	img2 := putPXE(t, st, "2.0.0", 1700000100, 0, "console=tty0")
	cert := selfSigned(t)

	f := newFixture(t, st, Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	f.promote(t, string(img2.Digest()), "prod")
	script, token := f.boot(t, "52:54:00:00:00:0a", "10.0.0.1:1000")
	if token == "" {
		t.Fatal("no credential in the script")
	}
	pin, _ := CertificatePin(cert)
	script = strings.ReplaceAll(script, token, "TOKEN")
	script = strings.ReplaceAll(script, pin, "PIN")
	golden(t, "node-channel-tls.ipxe", script)

	f = newFixture(t, st, Options{InsecureSecrets: true})
	script, token = f.boot(t, "52:54:00:00:00:0b", "10.0.0.2:1000")
	golden(t, "node-pinned-insecure.ipxe", strings.ReplaceAll(script, token, "TOKEN"))

	f = newFixture(t, st, Options{})
	f.promote(t, string(img2.Digest()), "prod")
	script, token = f.boot(t, "52:54:00:00:00:0a", "10.0.0.1:1000")
	if token != "" {
		t.Errorf("a credential in a plain-http script without --insecure-secrets")
	}
	golden(t, "node-channel-plain.ipxe", script)
}

// The script follows the channel at request time: a promotion reaches the next boot.
func TestNodeScriptFollowsChannel(t *testing.T) {
	st := storetest.Open(t)
	img1 := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	img2 := putPXE(t, st, "2.0.0", 1700000100, 0, "")
	f := newFixture(t, st, Options{})
	f.promote(t, img1.Digest().String(), "prod")
	script, _ := f.boot(t, "52:54:00:00:00:0a", "10.0.0.1:1000")
	if !strings.Contains(script, "imgctl.root-digest="+string(img1.Root)) {
		t.Fatalf("not img1:\n%s", script)
	}
	f.promote(t, img2.Digest().String(), "prod")
	script, _ = f.boot(t, "52:54:00:00:00:0a", "10.0.0.1:1000")
	if !strings.Contains(script, "imgctl.root-digest="+string(img2.Root)) || !strings.Contains(script, "/blobs/"+string(img2.Kernel)) {
		t.Fatalf("after the promotion, not img2:\n%s", script)
	}
	// The same machine by its UUID, or with an upper-case MAC.
	w := f.do(t, "GET", "/ipxe?mac=&uuid=4C4C4544-0042-3510-8052-B4C04F4E3131&serial=", "10.0.0.1:1000", false, "")
	if !strings.Contains(w.Body.String(), "booting node-a") {
		t.Errorf("by uuid:\n%s", w.Body)
	}
	w = f.do(t, "GET", "/ipxe?mac=52:54:00:00:00:0A", "10.0.0.1:1000", false, "")
	if !strings.Contains(w.Body.String(), "booting node-a") {
		t.Errorf("by upper-case mac:\n%s", w.Body)
	}
}

func TestUnknownMachine(t *testing.T) {
	st := storetest.Open(t)
	img := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	f := newFixture(t, st, Options{InsecureSecrets: true})
	f.promote(t, img.Digest().String(), "prod")
	for _, q := range []string{
		"mac=52:54:00:99:99:99&uuid=&serial=",
		"mac=&uuid=&serial=",
		"",
		"mac=${net0/mac}&uuid=${uuid}",
		"mac=52:54:00:00:00:0a%0Akernel%20http://evil/x",
		"serial=%24%7Bevil%7D",
		"mac=" + strings.Repeat("a", 5000),
	} {
		w := f.do(t, "GET", "/ipxe?"+q, "10.9.9.9:1000", false, "")
		body := w.Body.String()
		if w.Code != 200 || !strings.HasPrefix(body, "#!ipxe\n") {
			t.Errorf("%s: %d %q", q, w.Code, body)
		}
		for _, bad := range []string{"node-a", "node-b", "kernel ", "credential", "http://evil", "{evil", "${net0", "${uuid"} {
			if strings.Contains(body, bad) {
				t.Errorf("%s: the unknown machine's script has %q:\n%s", q, bad, body)
			}
		}
		if !strings.Contains(body, "sleep 30") || !strings.Contains(body, "chain --autofree http://boot.example:8080/boot.ipxe") {
			t.Errorf("%s: no retry:\n%s", q, body)
		}
	}
	w := f.do(t, "GET", "/ipxe?mac=52:54:00:99:99:99&uuid=&serial=", "10.9.9.9:1000", false, "")
	golden(t, "unknown.ipxe", w.Body.String())
	if !strings.Contains(f.logs.String(), `level=WARN msg="boot request from a machine not in the inventory" mac=52:54:00:99:99:99`) {
		t.Errorf("no WARN line for the unknown machine:\n%s", f.logs)
	}
}

// A machine whose image cannot be served gets an error script naming why, and an ERROR log.
func TestNodeScriptErrors(t *testing.T) {
	st := storetest.Open(t)
	noPXE := storetest.PutVersion(t, st, "9.0.0", 1700000900) // no netboot artifacts
	f := newFixture(t, st, Options{InsecureSecrets: true})
	check := func(mac, want string) {
		t.Helper()
		w := f.do(t, "GET", "/ipxe?mac="+mac, "10.0.0.1:1000", false, "")
		body := w.Body.String()
		if w.Code != 200 || !strings.Contains(body, want) || strings.Contains(body, "kernel ") || strings.Contains(body, "credential") {
			t.Errorf("%s: want %q in an error script:\n%s", mac, want, body)
		}
		if !strings.Contains(body, "sleep 60") {
			t.Errorf("%s: no retry:\n%s", mac, body)
		}
	}
	check("52:54:00:00:00:0a", "cannot boot node-a: its channel prod points to no image yet (promote one)")
	check("52:54:00:00:00:0b", "cannot boot node-b: its pinned image 1.0.0 is not in the store")
	check("52:54:00:00:00:0d", "cannot boot node-d: its channel nightly points to no image yet (promote one)")
	// A channel dropped from the store's order since the inventory was loaded.
	if err := f.ch.SetOrder(context.Background(), []string{"staging", "prod"}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * DefaultRefresh)
	check("52:54:00:00:00:0d", "cannot boot node-d: its channel nightly is not a channel of the store")

	f.promote(t, noPXE.Digest().String(), "prod")
	check("52:54:00:00:00:0a", "cannot boot node-a: channel prod points to image "+string(noPXE.Digest())+" (9.0.0), which cannot netboot: it has no initrd.img, rootfs.squashfs (build it with the pxe target)")

	// A channel pointing at an image the store does not have.
	missing := digest.FromString("gone")
	if _, err := f.ch.Move(context.Background(), "staging", "", channel.Entry{Action: channel.ActionPromote, To: missing}); err != nil {
		t.Fatal(err)
	}
	check("52:54:00:00:00:0c", "cannot boot node-c: channel staging points to image "+string(missing)+", which is not in the store")
	if n := strings.Count(f.logs.String(), `level=ERROR msg="cannot boot node"`); n != 6 {
		t.Errorf("%d ERROR lines, want 6:\n%s", n, f.logs)
	}
	_, body := getMetrics(t, f)
	if !strings.Contains(body, `imgctl_serve_boot_failures_total{channel="prod"} 2`) {
		t.Errorf("boot failures by channel not counted:\n%s", body)
	}
}

func getMetrics(t *testing.T, f *fixture) (int, string) {
	t.Helper()
	w := f.do(t, "GET", "/metrics", "127.0.0.1:1", false, "")
	return w.Code, w.Body.String()
}

// BenchmarkNodeScript is the cost of one node script through the handler (no network).
func BenchmarkNodeScript(b *testing.B) {
	t := &testing.T{}
	st := storetest.Open(b)
	img := putPXE(b, st, "1.0.0", 1700000000, 0, "console=tty0")
	f := newFixture(t, st, Options{InsecureSecrets: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	f.promote(t, img.Digest().String(), "prod")
	h := f.s.Handler()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := httptest.NewRequest("GET", "/ipxe?mac=52:54:00:00:00:0a&uuid=&serial=", nil)
			r.RemoteAddr = "10.0.0.1:1000"
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != 200 {
				b.Fatal(w.Code)
			}
		}
	})
}

// Under the store's trust policy, a channel pointing at an unsigned image boots nothing.
func TestNodeScriptUnsignedImage(t *testing.T) {
	st := storetest.Open(t)
	unsigned := putPXE(t, st, "2.0.0", 1700000100, 0, "")
	_, pub, err := sign.GenerateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pubKey, err := sign.LoadPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, st, Options{InsecureSecrets: true})
	f.promote(t, unsigned.Digest().String(), "prod") // before the policy: promote checks it too
	if _, _, err := sign.AddStoreKey(context.Background(), st.Dir(), pubKey); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * DefaultRefresh)
	w := f.do(t, "GET", "/ipxe?mac=52:54:00:00:00:0a", "10.0.0.1:1000", false, "")
	body := w.Body.String()
	if !strings.Contains(body, "cannot boot node-a: channel prod points to image "+string(unsigned.Digest())+", which the trust policy of the store refuses") ||
		strings.Contains(body, "kernel ") {
		t.Errorf("unsigned image under a trust policy:\n%s", body)
	}
}
