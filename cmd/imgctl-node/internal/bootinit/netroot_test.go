package bootinit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/fetch"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
)

func TestRefuseUnverifiedRoot(t *testing.T) {
	cfg, err := cmdline.Parse("console=ttyS0 imgctl.root=http://10.0.2.2/rootfs.squashfs")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := refuseUnverified(steplog.New(&out), cfg); err == nil {
		t.Fatal("a root URL without a digest was accepted")
	}
	want := `step=fetch-root status=fail latency=0ms url=http://10.0.2.2/rootfs.squashfs err="no digest for http://10.0.2.2/rootfs.squashfs: an unverified root never boots`
	if !strings.Contains(out.String(), want) {
		t.Errorf("step line %q, want %q", out.String(), want)
	}
}

// fetchServer serves data; the first response is cut off halfway when drop is set.
func fetchServer(t *testing.T, data []byte, drop bool) string {
	var n atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 && drop {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(data[:len(data)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		http.ServeContent(w, r, "root", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(s.Close)
	return s.URL
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestFetchRootStepLines(t *testing.T) {
	data := bytes.Repeat([]byte("squashfs root "), 100000)
	opts := func(t *testing.T) fetch.Options {
		return fetch.Options{Dest: filepath.Join(t.TempDir(), "root.img"), Backoff: time.Millisecond,
			Available: func() (int64, error) { return 1 << 30, nil }}
	}
	t.Run("resumed", func(t *testing.T) {
		url := fetchServer(t, data, true) + "/blobs/" + digest(data)
		cfg, err := cmdline.Parse("imgctl.root=" + url)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		o := opts(t)
		if err := fetchRoot(context.Background(), steplog.New(&out), cfg, o); err != nil {
			t.Fatal(err)
		}
		line := out.String()
		t.Log(line)
		for _, want := range []string{"step=fetch-root status=ok", "url=" + url, "bytes=" + strconv.Itoa(len(data)), "mb-per-s=", "attempts=2", "resumed-from=", "digest=" + digest(data)} {
			if !strings.Contains(line, want) {
				t.Errorf("step line %q lacks %q", line, want)
			}
		}
		if b, err := os.ReadFile(o.Dest); err != nil || !bytes.Equal(b, data) {
			t.Errorf("image: %v", err)
		}
	})
	t.Run("corrupted", func(t *testing.T) {
		bad := bytes.Clone(data)
		bad[12345] ^= 0x20
		url := fetchServer(t, bad, false) + "/blobs/" + digest(data)
		cfg, err := cmdline.Parse("imgctl.root=" + url)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		o := opts(t)
		if err := fetchRoot(context.Background(), steplog.New(&out), cfg, o); err == nil {
			t.Fatal("a corrupted root was accepted")
		}
		line := out.String()
		t.Log(line)
		for _, want := range []string{"step=fetch-root status=fail", "attempts=1", "digest mismatch: want " + digest(data) + ", got " + digest(bad)} {
			if !strings.Contains(line, want) {
				t.Errorf("step line %q lacks %q", line, want)
			}
		}
		if _, err := os.Stat(o.Dest); err == nil {
			t.Error("the corrupted image was left for mounting")
		}
	})
}
