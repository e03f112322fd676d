package serve

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
	"github.com/imgctl/imgctl/images/update"
)

// The pointer route answers only for a channel of the store whose image it serves and nodes
// can install; otherwise 404 or 409 with the channel and why. Pointer (imgctl channel pointer)
// refuses the same cases.
func TestChannelPointerRefusals(t *testing.T) {
	st := storetest.Open(t)
	// A netboot image without a dm-verity tree or architecture: nodes cannot install it in place.
	pxe := putPXE(t, st, "1.0.0", 1700000000, 0, "")
	f := newFixture(t, st, Options{})
	f.promote(t, pxe.Digest().String(), "prod")
	for _, c := range []struct {
		channel string
		code    int
		want    string
		is      error
	}{
		{"Not_A_Name", 404, `not found: channel name "Not_A_Name": want 1 to 63 lower-case letters`, channel.ErrUnknownChannel},
		{"canary", 404, "not found: channel canary is not a channel of the store (its channels: [nightly staging prod])", channel.ErrUnknownChannel},
		{"staging", 404, "channel staging: points to no image yet (promote one)", channel.ErrEmpty},
		{"prod", 409, "channel prod points to image " + pxe.Digest().String() + ", which nodes cannot install in place: invalid update document: manifest " +
			pxe.Digest().String() + ": annotation dev.imgctl.architecture", ErrNotInstallable},
	} {
		w := f.do(t, "GET", "/v1/channels/"+c.channel, "10.0.0.1:1000", false, "")
		if w.Code != c.code || !strings.Contains(w.Body.String(), c.want) {
			t.Errorf("GET /v1/channels/%s: %d %q, want %d with %q", c.channel, w.Code, w.Body, c.code, c.want)
		}
		if ct := w.Header().Get("Content-Type"); ct == update.PointerMediaType {
			t.Errorf("GET /v1/channels/%s: a refusal with Content-Type %s", c.channel, ct)
		}
		if c.channel == "Not_A_Name" {
			continue // imgctl channel pointer's channel.Log names it an unknown channel
		}
		_, err := Pointer(context.Background(), st, f.ch, c.channel)
		if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.channel) {
			t.Errorf("Pointer(%s) = %v, want an error naming the channel and wrapping %v", c.channel, err, c.is)
		}
	}
	metrics := f.do(t, "GET", "/metrics", "10.0.0.1:1000", false, "").Body.String()
	if want := `imgctl_serve_requests_total{code="409",route="channels"} 1`; !strings.Contains(metrics, want) {
		t.Errorf("metrics have no %s:\n%s", want, metrics)
	}
}

// Under the store's trust policy, a channel pointing at an unsigned image gets no pointer.
func TestChannelPointerUnsignedImage(t *testing.T) {
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
	f := newFixture(t, st, Options{})
	f.promote(t, unsigned.Digest().String(), "prod")
	if _, _, err := sign.AddStoreKey(context.Background(), st.Dir(), pubKey); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * DefaultRefresh)
	w := f.do(t, "GET", "/v1/channels/prod", "10.0.0.1:1000", false, "")
	want := "channel prod points to image " + unsigned.Digest().String() + ", which the trust policy of the store refuses"
	if w.Code != 409 || !strings.Contains(w.Body.String(), want) {
		t.Errorf("unsigned image under a trust policy: %d %q, want 409 with %q", w.Code, w.Body, want)
	}
	_, err = Pointer(context.Background(), st, f.ch, "prod")
	if !errors.Is(err, ErrNotInstallable) || !strings.Contains(err.Error(), "channel prod points to image 2.0.0 ("+unsigned.Digest().String()+"), which the trust policy of the store refuses") {
		t.Errorf("Pointer under a trust policy: %v", err)
	}
}

// GET /v1/channels/CHANNEL answers the pointer to the channel's image, the same document
// Pointer (imgctl channel pointer) makes, and follows a promotion within Refresh.
func TestChannelPointer(t *testing.T) {
	st := storetest.Open(t)
	v1 := storetest.PutUpdatable(t, st, "1.0.0", 1700000000)
	v2 := storetest.PutUpdatable(t, st, "1.0.1", 1700000100)
	f := newFixture(t, st, Options{})
	f.promote(t, v1.Digest().String(), "prod")
	for _, img := range []store.Image{v1, v2} {
		if img.Digest() == v2.Digest() {
			f.promote(t, v2.Digest().String(), "prod")
		}
		w := f.do(t, "GET", "/v1/channels/prod", "10.0.0.1:1000", false, "")
		if w.Code != 200 || w.Header().Get("Content-Type") != update.PointerMediaType || w.Header().Get("Cache-Control") != "no-store" {
			t.Fatalf("GET /v1/channels/prod: %d %v %q", w.Code, w.Header(), w.Body)
		}
		p, err := update.DecodePointer(bytes.NewReader(w.Body.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		want := update.Pointer{SchemaVersion: 1, MediaType: update.PointerMediaType, Channel: "prod", Image: img.Digest().String(),
			Version: img.Config.Version, Kubernetes: "1.21.13", Architecture: "amd64"}
		if p != want {
			t.Errorf("pointer %+v, want %+v", p, want)
		}
		doc, err := Pointer(context.Background(), st, f.ch, "prod")
		if err != nil || !bytes.Equal(doc, w.Body.Bytes()) {
			t.Errorf("Pointer = %q, %v; the route answered %q", doc, err, w.Body)
		}
	}
	metrics := f.do(t, "GET", "/metrics", "10.0.0.1:1000", false, "").Body.String()
	if want := `imgctl_serve_requests_total{code="200",route="channels"} 2`; !strings.Contains(metrics, want) {
		t.Errorf("metrics have no %s", want)
	}
}
