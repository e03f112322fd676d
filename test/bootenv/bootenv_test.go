package bootenv

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/imgctl/imgctl/images/nodeconfig"
)

// TestNodeConfigIsValidForRoleNode: the throwaway NodeConfig is what the node agent accepts for
// a role node joined with a pre-issued certificate (the schema's strict parse and validation).
func TestNodeConfigIsValidForRoleNode(t *testing.T) {
	const name = "node-e2e"
	doc, err := NodeConfig(name, map[string]string{"imgctl.dev/test": "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := nodeconfig.Parse("user-data", []byte(doc))
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	if c.Metadata.Name != name || c.Spec.Role != "node" || c.Spec.Credentials.ClientCertificate == "" ||
		c.Spec.Kubelet.NodeLabels["imgctl.dev/test"] != "e2e" {
		t.Errorf("NodeConfig = %+v", c)
	}
}

// TestFakeIMDSTokenFlow: user data only with the IMDSv2 session token, as EC2 serves it.
func TestFakeIMDSTokenFlow(t *testing.T) {
	srv := httptest.NewServer(&IMDS{UserData: "hello"})
	defer srv.Close()
	get := func(method, path string, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(http.MethodGet, "/latest/user-data", nil); code != http.StatusUnauthorized {
		t.Errorf("user data without a token: %d, want 401", code)
	}
	if code, _ := get(http.MethodPut, "/latest/api/token", nil); code != http.StatusBadRequest {
		t.Errorf("token without a TTL: %d, want 400", code)
	}
	code, tok := get(http.MethodPut, "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"})
	if code != http.StatusOK || tok == "" {
		t.Fatalf("token: %d %q", code, tok)
	}
	if code, body := get(http.MethodGet, "/latest/user-data", map[string]string{"X-aws-ec2-metadata-token": tok}); code != http.StatusOK || body != "hello" {
		t.Errorf("user data: %d %q", code, body)
	}
}

func TestIMDSv2Flow(t *testing.T) {
	for _, c := range []struct {
		reqs []string
		want bool
	}{
		{[]string{"PUT /latest/api/token", "GET /latest/user-data"}, true},
		{[]string{"PUT /latest/api/token", "GET /latest/user-data", "GET /latest/meta-data"}, true},
		{[]string{"GET /latest/user-data"}, false},
		{nil, false},
	} {
		if got := IMDSv2Flow(c.reqs); got != c.want {
			t.Errorf("IMDSv2Flow(%q) = %v", c.reqs, got)
		}
	}
}

// TestConsole: what goroutines write, whole writes in any order, reads back while they write.
func TestConsole(t *testing.T) {
	c := &Console{}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 100 {
				fmt.Fprintf(c, "line %d\n", i)
				_ = c.String()
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(c.String(), "\n"), "\n")
	if len(lines) != 800 {
		t.Fatalf("%d lines, want 800", len(lines))
	}
	for _, l := range lines {
		if len(l) != len("line 0") || !strings.HasPrefix(l, "line ") {
			t.Fatalf("a torn line %q", l)
		}
	}
}
