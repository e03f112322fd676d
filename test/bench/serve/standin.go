package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

var blobPath = regexp.MustCompile(`^/blobs/sha256:([0-9a-f]{64})$`)

// standin serves the bench URLs with nothing but net/http: /blobs/sha256:HEX through
// http.FileServer on the store's blobs directory (sendfile), /ipxe?mac= with a per-node script
// from a map and a random token, /healthz. It is the baseline of what Go's net/http does on
// its own, next to nginx and imgctl serve. It prints its address and serves until killed.
func standin(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("standin", flag.ContinueOnError)
	storeDir := fs.String("store", "", "the store whose blobs to serve")
	machinesFile := fs.String("machines", "", "machines.tsv written by setup")
	listen := fs.String("listen", "127.0.0.1:0", "address")
	size := fs.Int("size", 0, "pad each node script with a comment to this many bytes (the size of imgctl serve's)")
	if err := parse(fs, args, 0); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(*machinesFile)
	if err != nil {
		return nil, err
	}
	byMAC := map[string]string{}
	for line := range strings.Lines(string(data)) {
		f := strings.Split(strings.TrimSpace(line), "\t")
		if len(f) != 4 {
			return nil, fmt.Errorf("%s: malformed line %q: want NAME MAC UUID SERIAL", *machinesFile, line)
		}
		byMAC[f[1]] = f[0]
	}
	files := http.FileServer(http.Dir(filepath.Join(*storeDir, "blobs")))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /blobs/", func(w http.ResponseWriter, r *http.Request) {
		m := blobPath.FindStringSubmatch(r.URL.Path)
		if m == nil {
			http.NotFound(w, r)
			return
		}
		r.URL.Path = "/sha256/" + m[1]
		files.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /ipxe", func(w http.ResponseWriter, r *http.Request) {
		name, ok := byMAC[r.URL.Query().Get("mac")]
		if !ok {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprint(w, "#!ipxe\necho unknown machine\nsleep 30\nchain /boot.ipxe\n")
			return
		}
		var tok [16]byte
		_, _ = rand.Read(tok[:])
		b := fmt.Appendf(make([]byte, 0, max(*size, 512)), "#!ipxe\n# %s\nkernel http://%s/blobs/sha256:%064x initrd=initrd.img console=ttyS0 quiet imgctl.root=http://%s/blobs/sha256:%064x imgctl.credential=%s\ninitrd --name initrd.img http://%s/blobs/sha256:%064x\nboot\n",
			name, r.Host, 1, r.Host, 2, hex.EncodeToString(tok[:]), r.Host, 3)
		if pad := *size - len(b) - 3; pad > 0 {
			b = append(b, "# "...)
			b = append(b, strings.Repeat("-", pad)...)
			b = append(b, '\n')
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return nil, err
	}
	fmt.Println(ln.Addr().String())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return nil, err
	}
	return nil, nil
}
