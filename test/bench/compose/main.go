// Command compose times compose.Compose on layer tars the way a build runs it: the rootfs
// stream goes through a sha256 hasher into a file (like the store's blob writer), without
// fsync. scripts/bench-compose.sh drives it; it prints one line of JSON.
//
//	go run ./test/bench/compose -out /tmp/rootfs.tar -runs 5 layer1.tar layer2.tar ...
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/imgctl/imgctl/layers/compose"
)

type result struct {
	Seconds       float64   `json:"seconds"` // best run
	MedianSeconds float64   `json:"median_seconds"`
	Runs          []float64 `json:"runs"`
	Bytes         int64     `json:"bytes"`         // size of the rootfs tar
	ContentBytes  int64     `json:"content_bytes"` // regular file content in it
	Entries       int       `json:"entries"`
	SHA256        string    `json:"sha256"`
}

func main() {
	out := flag.String("out", "", "write the rootfs tar to `FILE` (overwritten by every run)")
	runs := flag.Int("runs", 1, "number of timed runs")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of all runs to `FILE`")
	var generated []compose.Generated
	flag.Func("generated", "add `PATH=FILE` to the rootfs as compose's finalize step does (imgctl build adds etc/imgctl/image.json so)", func(v string) error {
		p, file, ok := strings.Cut(v, "=")
		if !ok || p == "" {
			return fmt.Errorf("expected PATH=FILE")
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		generated = append(generated, compose.Generated{Path: p, Mode: 0o644, Data: data})
		return nil
	})
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s -out FILE [-runs N] [-cpuprofile FILE] LAYER.tar...\n", filepath.Base(os.Args[0]))
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || flag.NArg() == 0 || *runs < 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(context.Background(), *out, *runs, *cpuprofile, generated, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "compose bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out string, runs int, cpuprofile string, generated []compose.Generated, layers []string) error {
	var inputs []compose.Input
	for _, p := range layers {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		inputs = append(inputs, compose.Input{Name: filepath.Base(p), Reader: f, Size: fi.Size()})
	}
	if cpuprofile != "" {
		pf, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var res result
	for range runs {
		secs, r, err := once(ctx, out, inputs, generated)
		if err != nil {
			return err
		}
		if res.SHA256 != "" && r.SHA256 != res.SHA256 {
			return fmt.Errorf("output differs between runs: sha256 %s, then %s", res.SHA256, r.SHA256)
		}
		res.Bytes, res.ContentBytes, res.Entries, res.SHA256 = r.Bytes, r.ContentBytes, r.Entries, r.SHA256
		res.Runs = append(res.Runs, secs)
	}
	sorted := slices.Sorted(slices.Values(res.Runs))
	res.Seconds, res.MedianSeconds = sorted[0], sorted[len(sorted)/2]
	if len(sorted)%2 == 0 {
		res.MedianSeconds = (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// once composes inputs into out and returns the wall time from opening out to closing it.
func once(ctx context.Context, out string, inputs []compose.Input, generated []compose.Generated) (float64, result, error) {
	// A new file every run, like the store's blob writer: rewriting a truncated file makes ext4
	// start writeback on close (auto_da_alloc), which would slow every run after the first.
	if err := os.Remove(out); err != nil && !os.IsNotExist(err) {
		return 0, result{}, err
	}
	start := time.Now()
	f, err := os.Create(out)
	if err != nil {
		return 0, result{}, err
	}
	defer f.Close()
	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(f, h)}
	cres, err := compose.Compose(ctx, cw, inputs, compose.Options{Mode: compose.Rootfs, MTime: time.Unix(1700000000, 0),
		Finalize: func(context.Context, *compose.Files) ([]compose.Generated, error) { return generated, nil }})
	if err != nil {
		return 0, result{}, err
	}
	if err := f.Close(); err != nil {
		return 0, result{}, err
	}
	secs := time.Since(start).Seconds()
	return secs, result{Bytes: cw.n, ContentBytes: cres.Bytes, Entries: cres.Entries, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
