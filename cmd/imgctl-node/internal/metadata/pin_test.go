package metadata

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
)

// certPin is the imgctl.metadata-pin value of a test server's certificate.
func certPin(srv *httptest.Server) string {
	sum := sha256.Sum256(srv.Certificate().Raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TestImgctlPin: with imgctl.metadata-pin the node accepts exactly the pinned leaf certificate,
// whatever signed it (the test server's CA is in no trust store the client knows), and refuses
// any other certificate before a request is sent, even one its client's CA list trusts.
func TestImgctlPin(t *testing.T) {
	srv, n := countingImgctl(t, "s3cret", true)
	good, bad := certPin(srv), "sha256:"+strings.Repeat("ab", 32)
	base := "imgctl.metadata=" + srv.URL + "/boot imgctl.credential=s3cret "

	t.Run("match", func(t *testing.T) {
		n.Store(0)
		for _, pin := range []string{good, "SHA256:" + strings.ToUpper(strings.TrimPrefix(good, "sha256:"))} {
			c, src, err := Fetch(context.Background(), []Provider{ImgctlFromCmdline(base + "imgctl.metadata-pin=" + pin)}, fast)
			if err != nil || c.Metadata.Name != "node-7" || src != "imgctl "+srv.URL+"/boot/v1/nodeconfig" {
				t.Fatalf("pin %s: got %v from %q, %v", pin, c, src, err)
			}
		}
		if n.Load() != 2 {
			t.Fatalf("server saw %d requests, want 2", n.Load())
		}
	})

	t.Run("mismatch", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			trust bool // the client trusts the server's CA: the pin still decides
		}{{"unknown CA", false}, {"trusted CA", true}} {
			t.Run(tc.name, func(t *testing.T) {
				n.Store(0)
				p := ImgctlFromCmdline(base + "imgctl.metadata-pin=" + bad)
				if tc.trust {
					p.Client = srv.Client()
				}
				_, _, err := Fetch(context.Background(), []Provider{p}, fast)
				want := "certificate " + good + " does not match imgctl.metadata-pin=" + bad
				if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "attempts") {
					t.Fatalf("err = %v, want %q (not retried)", err, want)
				}
				if !IsPermanent(errors.Unwrap(err.(*FetchError).Failures[0])) {
					t.Errorf("err = %v: not permanent", err)
				}
				if n.Load() != 0 {
					t.Errorf("server saw %d requests, want none", n.Load())
				}
			})
		}
	})

	t.Run("needs https", func(t *testing.T) {
		plain, pn := countingImgctl(t, "s3cret", false)
		for _, extra := range []string{"", " imgctl.metadata-insecure=1"} {
			line := "imgctl.metadata=" + plain.URL + "/boot imgctl.credential=s3cret imgctl.metadata-pin=" + good + extra
			_, _, err := Fetch(context.Background(), []Provider{ImgctlFromCmdline(line)}, fast)
			want := "imgctl.metadata-pin is set: the metadata server must be an https:// URL, not " + plain.URL + "/boot/v1/nodeconfig"
			if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "attempts") {
				t.Errorf("%s:\n err = %v\nwant %q", line, err, want)
			}
		}
		if pn.Load() != 0 {
			t.Errorf("server saw %d requests, want none", pn.Load())
		}
	})

	t.Run("bad form", func(t *testing.T) {
		n.Store(0)
		for _, pin := range []string{"sha256:zz", "md5:" + strings.Repeat("a", 32), strings.TrimPrefix(good, "sha256:"), ""} {
			_, _, err := Fetch(context.Background(), []Provider{ImgctlFromCmdline(base + "imgctl.metadata-pin=" + pin)}, fast)
			want := "imgctl.metadata-pin=" + pin + ": expected sha256: and 64 hex digits"
			if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "attempts") {
				t.Errorf("pin %q: err = %v, want %q", pin, err, want)
			}
		}
		if n.Load() != 0 {
			t.Errorf("server saw %d requests, want none", n.Load())
		}
	})
}
