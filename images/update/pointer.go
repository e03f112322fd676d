// Package update is the contract of in-place A/B updates between the servers that publish
// images (imgctl serve, or any HTTP server with the same paths) and the node agent that installs
// them: the channel pointer document, the URLs, what a node reads from an image manifest, and
// the block plan that lets the node reuse the blocks of its running root. It is a leaf: the
// standard library only (and images/boot's), so the node agent can import it.
//
// Trust: a pointer is untrusted; it only names a manifest digest. The manifest's bytes must hash
// to that digest (ParseManifest checks), its annotations name the root blob (digest and size)
// and the root's dm-verity root hash, the root's hash area is checked against that root hash, and
// every 4 KiB block against its level-0 hash before it is written.
package update

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
)

// Server paths, relative to a server's base URL.
const (
	// ChannelPathPrefix + CHANNEL answers GET with the channel's Pointer (PointerMediaType).
	ChannelPathPrefix = "/v1/channels/"
	// BlobsPathPrefix + sha256:HEX answers GET with the blob's bytes; Range requests (206 with
	// Content-Range) must work, the node fetches the blocks it lacks with them.
	BlobsPathPrefix = "/blobs/"
)

// PointerMediaType is the Content-Type of a pointer document.
const PointerMediaType = "application/vnd.imgctl.update-pointer.v1+json"

// PointerSchemaVersion is the only Pointer.SchemaVersion this package writes and accepts.
const PointerSchemaVersion = 1

// MaxPointerBytes bounds a pointer document: DecodePointer reads no more.
const MaxPointerBytes = 64 << 10

// Pointer is a channel's current image, as GET SERVER/v1/channels/CHANNEL returns it or a static
// file serves it. The node trusts only Image (a manifest digest it verifies the manifest
// against); the other fields are for people and a cheap early refusal.
type Pointer struct {
	SchemaVersion int    `json:"schemaVersion"` // PointerSchemaVersion
	MediaType     string `json:"mediaType"`     // PointerMediaType
	Channel       string `json:"channel"`
	Image         string `json:"image"` // the image's manifest digest, sha256:HEX
	Version       string `json:"version,omitempty"`
	Kubernetes    string `json:"kubernetes,omitempty"`
	Architecture  string `json:"architecture,omitempty"`
}

// ErrInvalid marks a pointer, URL or manifest this package refuses.
var ErrInvalid = errors.New("invalid update document")

// Validate reports the first rule p breaks, naming the field; the error wraps ErrInvalid.
func (p Pointer) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: pointer field %q: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
	}
	switch {
	case p.SchemaVersion != PointerSchemaVersion:
		return bad("schemaVersion", "%d, want %d", p.SchemaVersion, PointerSchemaVersion)
	case p.MediaType != PointerMediaType:
		return bad("mediaType", "%q, want %q", clip(p.MediaType), PointerMediaType)
	}
	if err := checkChannel(p.Channel); err != nil {
		return bad("channel", "%v", err)
	}
	if err := CheckDigest(p.Image); err != nil {
		return bad("image", "%v", err)
	}
	for _, f := range []struct{ name, v string }{{"version", p.Version}, {"kubernetes", p.Kubernetes}, {"architecture", p.Architecture}} {
		if len(f.v) > 128 || strings.ContainsFunc(f.v, isControl) {
			return bad(f.name, "%q: want at most 128 printable characters", clip(f.v))
		}
	}
	return nil
}

// DecodePointer reads one pointer document (at most MaxPointerBytes) and validates it. It is
// strict: an unknown field is refused (a misspelt field in a hand-written pointer file must not
// read as an absent one; a new field comes with a new schemaVersion), and so is anything after
// the document. Errors name the field and wrap ErrInvalid.
func DecodePointer(r io.Reader) (Pointer, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxPointerBytes+1))
	if err != nil {
		return Pointer{}, fmt.Errorf("reading pointer: %w", err)
	}
	if len(data) > MaxPointerBytes {
		return Pointer{}, fmt.Errorf("%w: pointer is larger than %d bytes", ErrInvalid, MaxPointerBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var p Pointer
	if err := dec.Decode(&p); err != nil {
		return Pointer{}, fmt.Errorf("%w: pointer: %w", ErrInvalid, jsonError(err))
	}
	if dec.More() {
		return Pointer{}, fmt.Errorf("%w: pointer: data after the JSON document", ErrInvalid)
	}
	if err := p.Validate(); err != nil {
		return Pointer{}, err
	}
	return p, nil
}

// EncodePointer validates p and returns its JSON document (indented, newline-terminated).
func EncodePointer(p Pointer) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// jsonError makes encoding/json's errors name the field in the pointer's terms.
func jsonError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("field %q: %s is not a %s", te.Field, te.Value, te.Type)
	}
	if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fmt.Errorf("unknown field %s (schemaVersion %d has schemaVersion, mediaType, channel, image, version, kubernetes, architecture)",
			msg, PointerSchemaVersion)
	}
	return err
}

// CheckDigest accepts sha256:HEX with 64 lower-case hex digits.
func CheckDigest(d string) error {
	hex, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hex) != 64 || strings.ContainsFunc(hex, func(r rune) bool { return !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') }) {
		return fmt.Errorf("%q is not a digest: want sha256: and 64 lower-case hex digits", clip(d))
	}
	return nil
}

// checkChannel accepts what can be one path element of a URL: the server's channel grammar is
// stricter (images/channel); this only keeps a name from changing the URL's path.
func checkChannel(c string) error {
	switch {
	case c == "":
		return errors.New("empty")
	case c == "." || c == ".." || len(c) > 253 || strings.ContainsFunc(c, func(r rune) bool { return r == '/' || r == '\\' || isControl(r) }):
		return fmt.Errorf("%q is not a channel name", clip(c))
	}
	return nil
}

// PointerURL is the URL of a channel's pointer on server (a base URL, see ServerURL).
func PointerURL(server, channel string) (string, error) {
	u, err := ServerURL(server)
	if err != nil {
		return "", err
	}
	if err := checkChannel(channel); err != nil {
		return "", fmt.Errorf("%w: channel: %w", ErrInvalid, err)
	}
	return u + ChannelPathPrefix + url.PathEscape(channel), nil
}

// BlobURL is the URL of a blob (sha256:HEX) on server (a base URL, see ServerURL).
func BlobURL(server, digest string) (string, error) {
	u, err := ServerURL(server)
	if err != nil {
		return "", err
	}
	if err := CheckDigest(digest); err != nil {
		return "", fmt.Errorf("%w: blob: %w", ErrInvalid, err)
	}
	return u + BlobsPathPrefix + digest, nil
}

// ServerURL checks an update server's base URL and returns it without a trailing slash: http or
// https, a host, no user info (a password would reach logs and the console), no query or
// fragment (paths are appended to it).
func ServerURL(server string) (string, error) {
	u, err := url.Parse(server)
	if err != nil {
		// url.Error repeats the whole URL, password included: keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("%w: update server: not a URL: %w", ErrInvalid, err)
	}
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("%w: update server %q: %s", ErrInvalid, clip(u.Redacted()), why)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return bad("want an http:// or https:// URL")
	case u.Host == "":
		return bad("no host")
	case u.User != nil:
		return bad("user info in the URL is not allowed")
	case u.RawQuery != "" || u.ForceQuery:
		return bad("a query is not allowed (paths are appended to this base URL)")
	case u.Fragment != "" || strings.Contains(server, "#"):
		return bad("a fragment is not allowed")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// clip shortens a quoted value in an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
