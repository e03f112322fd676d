package registry

import (
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgctl/imgctl/images/channel"
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

// TestPullTagMismatch: pulling REPO:TAG stores the image only if the tag names it: its
// version's tag, or a channel whose history points to it. A version tag moved to another
// image fails before any artifact is downloaded, unless AllowTagMismatch.
func TestPullTagMismatch(t *testing.T) {
	cr := newChannelRepo(t) // 1.0.0, 1.1.0, 1.2.0
	// Tag 1.0.0 (and latest) now serve image 1.1.0, as if moved by hand or by another tool.
	desc, err := remote.Get(mustRef(t, cr.repo+"@"+cr.b.Digest().String()))
	if err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{"1.0.0", "latest"} {
		if err := remote.Tag(mustRef(t, cr.repo+":"+tag).(name.Tag), desc); err != nil {
			t.Fatal(err)
		}
	}
	nightly := move(channel.History{SchemaVersion: 1, Channel: "nightly"}, channel.ActionPromote, cr.b, "ci")
	if err := PushChannel(t.Context(), cr.repo, nightly, testOptions(t)); err != nil {
		t.Fatal(err)
	}

	for _, tag := range []string{"1.0.0", "latest"} {
		dst := storetest.Open(t)
		cr.reg.take()
		_, err := Pull(t.Context(), dst, cr.repo+":"+tag, testOptions(t))
		t.Logf("pull %s: %v", tag, err)
		if !errors.Is(err, ErrTagMismatch) {
			t.Fatalf("Pull(%s) serving 1.1.0: err = %v, want ErrTagMismatch", tag, err)
		}
		for _, want := range []string{"tag " + tag + " serves version 1.1.0", cr.b.Digest().String(), "--allow-tag-mismatch"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not say %q: %v", want, err)
			}
		}
		if imgs, err := dst.List(t.Context()); err != nil || len(imgs) != 0 {
			t.Errorf("refused pull stored %d images (%v)", len(imgs), err)
		}
		if n := count(cr.reg.take(), "GET /v2/imgctl/node/blobs/"); n > 1 { // the config only
			t.Errorf("refused pull downloaded %d blobs", n)
		}

		o := testOptions(t)
		o.AllowTagMismatch = true
		img, err := Pull(t.Context(), dst, cr.repo+":"+tag, o)
		if err != nil || img.Digest() != cr.b.Digest() {
			t.Errorf("Pull(%s) with AllowTagMismatch = %v, %v; want 1.1.0", tag, img.Digest(), err)
		}
	}
	for _, tag := range []string{"1.1.0", "nightly", "1.2.0"} {
		if _, err := Pull(t.Context(), storetest.Open(t), cr.repo+":"+tag, testOptions(t)); err != nil {
			t.Errorf("Pull(%s): %v", tag, err)
		}
	}
	// A channel tag whose history says another head is refused too.
	cdesc, err := remote.Get(mustRef(t, cr.repo+"@"+cr.c.Digest().String()))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Tag(mustRef(t, cr.repo+":nightly").(name.Tag), cdesc); err != nil {
		t.Fatal(err)
	}
	if _, err := Pull(t.Context(), storetest.Open(t), cr.repo+":nightly", testOptions(t)); !errors.Is(err, ErrTagMismatch) || !strings.Contains(err.Error(), "history says its head is "+cr.b.Digest().String()) {
		t.Errorf("Pull(nightly) serving an image its history does not name: %v", err)
	}
}
