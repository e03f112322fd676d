package registry

import (
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/store/storetest"
)

// TestPullManifestCap: a registry that serves a 1 GiB manifest, with its size declared or
// streamed without one, makes Pull fail fast, naming the URL and the bound, after reading at
// most MaxManifest bytes (go-containerregistry alone reads 100 MiB, some 260 MB of memory).
func TestPullManifestCap(t *testing.T) {
	const huge = 1 << 30
	for _, declared := range []bool{true, false} {
		t.Run(fmt.Sprintf("declared=%v", declared), func(t *testing.T) {
			reg := newRegistry(t)
			var sent int64
			reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
				if !strings.Contains(r.URL.Path, "/manifests/") {
					return false
				}
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				if declared {
					w.Header().Set("Content-Length", fmt.Sprint(huge))
				}
				w.WriteHeader(http.StatusOK)
				if r.Method == http.MethodHead {
					return true
				}
				chunk := []byte(`{"a":"` + strings.Repeat("x", 64<<10) + `"}`)
				for sent < huge {
					n, err := w.Write(chunk)
					sent += int64(n)
					if err != nil {
						return true // the client hung up
					}
					if f, ok := w.(http.Flusher); ok && !declared {
						f.Flush()
					}
				}
				return true
			})
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := Pull(t.Context(), storetest.Open(t), reg.host+"/imgctl/node:1.0.0", testOptions(t))
			elapsed := time.Since(start)
			runtime.ReadMemStats(&after)
			t.Logf("error after %v, %d MiB allocated: %v", elapsed, (after.TotalAlloc-before.TotalAlloc)>>20, err)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Pull of a 1 GiB manifest: err = %v, want ErrTooLarge", err)
			}
			for _, want := range []string{"/v2/imgctl/node/manifests/1.0.0", "4194304 bytes"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not name %q: %v", want, err)
				}
			}
			if elapsed > 10*time.Second {
				t.Errorf("Pull took %v to refuse the manifest", elapsed)
			}
			if got := after.TotalAlloc - before.TotalAlloc; got > 48<<20 {
				t.Errorf("Pull allocated %d MiB refusing the manifest, want a few times MaxManifest at most", got>>20)
			}
		})
	}
}
