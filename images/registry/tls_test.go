package registry

import (
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/imgctl/imgctl/images/store/storetest"
)

// A registry whose certificate this machine does not trust: the error says so and how to
// trust its CA, instead of go-containerregistry's raw x509 text.
func TestUntrustedCertificateSaysHow(t *testing.T) {
	reg := httptest.NewTLSServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	repo := strings.TrimPrefix(reg.URL, "https://") + "/imgctl/node"
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 1795651200)
	_, err := Push(t.Context(), st, img, repo, testOptions(t))
	t.Logf("push: %v", err)
	if err == nil || !strings.Contains(err.Error(), "SSL_CERT_FILE") || !strings.Contains(err.Error(), strings.TrimPrefix(reg.URL, "https://")) {
		t.Fatalf("push to a registry with an untrusted certificate: %v", err)
	}
	_, err = Pull(t.Context(), storetest.Open(t), repo+":1.0.0", testOptions(t))
	if err == nil || !strings.Contains(err.Error(), "SSL_CERT_FILE") {
		t.Fatalf("pull from a registry with an untrusted certificate: %v", err)
	}
}
