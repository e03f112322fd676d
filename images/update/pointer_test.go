package update

import (
	"errors"
	"strings"
	"testing"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func goodPointer() Pointer {
	return Pointer{SchemaVersion: 1, MediaType: PointerMediaType, Channel: "prod", Image: testDigest,
		Version: "1.21.13-6.1.0-20261205", Kubernetes: "1.21.13", Architecture: "amd64"}
}

func TestPointerRoundTrip(t *testing.T) {
	data, err := EncodePointer(goodPointer())
	if err != nil {
		t.Fatal(err)
	}
	p, err := DecodePointer(strings.NewReader(string(data)))
	if err != nil {
		t.Fatalf("DecodePointer(%s): %v", data, err)
	}
	if p != goodPointer() {
		t.Errorf("round trip: %+v, want %+v", p, goodPointer())
	}
	// The optional fields may be absent.
	min := `{"schemaVersion":1,"mediaType":"` + PointerMediaType + `","channel":"prod","image":"` + testDigest + `"}`
	if p, err := DecodePointer(strings.NewReader(min)); err != nil || p.Image != testDigest {
		t.Errorf("minimal pointer: %+v, %v", p, err)
	}
}

func TestDecodePointerRefuses(t *testing.T) {
	const mt = `"mediaType":"` + PointerMediaType + `"`
	const img = `"image":"` + testDigest + `"`
	for _, c := range []struct {
		name, doc, want string
	}{
		{"empty", ``, "EOF"},
		{"not JSON", `image: sha256:…`, "invalid character"},
		{"schema 2", `{"schemaVersion":2,` + mt + `,"channel":"prod",` + img + `}`, `field "schemaVersion": 2, want 1`},
		{"no schema", `{` + mt + `,"channel":"prod",` + img + `}`, `field "schemaVersion": 0, want 1`},
		{"media type", `{"schemaVersion":1,"mediaType":"application/json","channel":"prod",` + img + `}`, `field "mediaType": "application/json"`},
		{"no channel", `{"schemaVersion":1,` + mt + `,` + img + `}`, `field "channel": empty`},
		{"channel with slash", `{"schemaVersion":1,` + mt + `,"channel":"../x",` + img + `}`, `field "channel": "../x" is not a channel name`},
		{"no image", `{"schemaVersion":1,` + mt + `,"channel":"prod"}`, `field "image": "" is not a digest`},
		{"short image", `{"schemaVersion":1,` + mt + `,"channel":"prod","image":"sha256:abc"}`, `field "image": "sha256:abc" is not a digest`},
		{"upper-case image", `{"schemaVersion":1,` + mt + `,"channel":"prod","image":"` + strings.ToUpper(testDigest) + `"}`, `field "image"`},
		{"image type", `{"schemaVersion":1,` + mt + `,"channel":"prod","image":5}`, `field "image": number is not a string`},
		{"unknown field", `{"schemaVersion":1,` + mt + `,"channel":"prod",` + img + `,"imagee":"x"}`, `unknown field "imagee"`},
		{"control character", `{"schemaVersion":1,` + mt + `,"channel":"prod",` + img + `,"version":"a\u001b[2J"}`, `field "version"`},
		{"trailing data", `{"schemaVersion":1,` + mt + `,"channel":"prod",` + img + `} {}`, "data after the JSON document"},
		{"too large", `{"schemaVersion":1,` + mt + `,"channel":"prod",` + img + `,"version":"` + strings.Repeat("x", MaxPointerBytes) + `"}`, "larger than 65536 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := DecodePointer(strings.NewReader(c.doc))
			if err == nil {
				t.Fatalf("accepted: %+v", p)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
			if c.name != "empty" && !errors.Is(err, ErrInvalid) {
				t.Errorf("error %q does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestURLs(t *testing.T) {
	for _, c := range []struct {
		server, channel, want string
	}{
		{"http://10.0.2.100", "prod", "http://10.0.2.100/v1/channels/prod"},
		{"https://updates.example.com/fleet/", "prod", "https://updates.example.com/fleet/v1/channels/prod"},
		{"http://[::1]:8080", "a b", "http://[::1]:8080/v1/channels/a%20b"},
	} {
		got, err := PointerURL(c.server, c.channel)
		if err != nil || got != c.want {
			t.Errorf("PointerURL(%q, %q) = %q, %v; want %q", c.server, c.channel, got, err, c.want)
		}
	}
	if got, err := BlobURL("http://10.0.2.100/", testDigest); err != nil || got != "http://10.0.2.100/blobs/"+testDigest {
		t.Errorf("BlobURL = %q, %v", got, err)
	}
	for _, c := range []struct {
		server, want string
	}{
		{"", "want an http:// or https:// URL"},
		{"ftp://host", "want an http:// or https:// URL"},
		{"10.0.2.100", "want an http:// or https:// URL"},
		{"http://", "no host"},
		{"http://user:secret@host", "user info"},
		{"http://host/?channel=x", "a query is not allowed"},
		{"http://host/?", "a query is not allowed"},
		{"http://host/#x", "a fragment is not allowed"},
		{"http://host/#", "a fragment is not allowed"},
		{"http://host:port", "invalid port"},
		{"http://user:secret@host:port/", "invalid port"},
	} {
		_, err := PointerURL(c.server, "prod")
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrInvalid) {
			t.Errorf("PointerURL(%q): %v, want an error containing %q", c.server, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("PointerURL(%q): the error shows the password: %v", c.server, err)
		}
		if _, err := BlobURL(c.server, testDigest); err == nil {
			t.Errorf("BlobURL(%q) accepted", c.server)
		}
	}
	for _, ch := range []string{"", ".", "..", "a/b", "a\nb"} {
		if _, err := PointerURL("http://host", ch); err == nil {
			t.Errorf("PointerURL(channel %q) accepted", ch)
		}
	}
	for _, d := range []string{"", "sha256:", "sha512:" + strings.Repeat("0", 128), "sha256:../../etc/passwd", testDigest + "0"} {
		if _, err := BlobURL("http://host", d); err == nil {
			t.Errorf("BlobURL(digest %q) accepted", d)
		}
	}
}
