package metadata

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/layers/testenv"
)

// cannedTransport answers every request in process: the token PUT with tokStatus and tok, any
// other request with status and body.
type cannedTransport struct {
	tokStatus, status int
	tok, body         []byte
}

func (c cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	status, body := c.status, c.body
	if r.Method == http.MethodPut {
		status, body = c.tokStatus, c.tok
	}
	return &http.Response{
		Status:     http.StatusText(status),
		StatusCode: status,
		Header:     http.Header{},
		Body:       io.NopCloser(bytes.NewReader(body)),
		Request:    r,
	}, nil
}

var fuzzStatuses = []int{http.StatusOK, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusInternalServerError}

func gz(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// fetchAlloc bounds what one Fetch may allocate, whatever the response: documents are cut at
// maxDoc (also after gunzip), and parsing a maxDoc document stays well under this.
const fetchAlloc = 256 << 20

// FuzzFetch: a NodeConfig from the imgctl server or from IMDS user data (plain or gzip) is
// accepted only from 200 answers (and for IMDS a non-empty token), and then is valid and
// the document the server sent; every refusal names the provider; memory stays bounded
// however the response is shaped (a gzip bomb is cut at 1 MiB).
func FuzzFetch(f *testing.F) {
	js, err := json.Marshal(map[string]any{"apiVersion": nodeconfig.APIVersion, "kind": nodeconfig.Kind,
		"spec": map[string]any{"role": "master", "cluster": map[string]any{"name": "prod"}}})
	if err != nil {
		f.Fatal(err)
	}
	for _, doc := range [][]byte{[]byte(nodeDoc), []byte(publicDoc), gz(f, []byte(nodeDoc)), js} {
		f.Add(doc, []byte("token"), uint8(0), false)
		f.Add(doc, []byte(""), uint8(0), true)
	}
	f.Add(gz(f, make([]byte, 2<<20)), []byte("t"), uint8(0), false)
	f.Add([]byte("\x1f\x8b"), []byte("t"), uint8(0), false)
	f.Add([]byte("spec: {role: worker}"), []byte("t"), uint8(0), true)
	f.Add([]byte(nodeDoc), []byte(" \n"), uint8(1), false)
	f.Add([]byte(nodeDoc), []byte("t"), uint8(7), true)
	f.Fuzz(func(t *testing.T, body, tok []byte, sel uint8, imgctl bool) {
		tr := cannedTransport{tokStatus: fuzzStatuses[int(sel/5)%len(fuzzStatuses)], status: fuzzStatuses[int(sel)%len(fuzzStatuses)], tok: tok, body: body}
		var p Provider = &IMDS{BaseURL: "http://imds.test", Client: &http.Client{Transport: tr}}
		if imgctl {
			p = &Imgctl{URL: "http://meta.test/", Credential: "c", Client: &http.Client{Transport: tr}}
		}
		var c *nodeconfig.NodeConfig
		var src string
		var err error
		testenv.MaxAlloc(t, fetchAlloc, "Fetch", func() {
			c, src, err = Fetch(context.Background(), []Provider{p}, Options{Attempts: 1})
		})
		if err != nil {
			if c != nil || !strings.Contains(err.Error(), p.Name()) {
				t.Fatalf("error does not name provider %s (or came with a config): %v", p.Name(), err)
			}
			return
		}
		if tr.status != http.StatusOK || (!imgctl && (tr.tokStatus != http.StatusOK || strings.TrimSpace(string(tok)) == "")) {
			t.Fatalf("config accepted from status %d (token status %d, token %q)", tr.status, tr.tokStatus, tok)
		}
		if !strings.HasPrefix(src, p.Name()+" http://") {
			t.Fatalf("source %q does not name provider and URL", src)
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Fetch returned an invalid config: %v", err)
		}
		doc := body
		if !imgctl {
			if doc, err = gunzip(body); err != nil {
				t.Fatalf("accepted user data that does not gunzip: %v", err)
			}
		}
		want, err := nodeconfig.Parse("sent", doc)
		if err != nil {
			t.Fatalf("accepted a document that does not parse: %v", err)
		}
		want.Defaults()
		if a, b := mustJSON(t, want), mustJSON(t, c); a != b {
			t.Fatalf("Fetch returned another config than the one sent:\n%s\n%s", b, a)
		}
	})
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
