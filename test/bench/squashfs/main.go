// Command squashfs times squashfs.Write on a rootfs tar the way the raw target runs it: the tar
// is read through an io.SectionReader and the image goes to a new file, without fsync.
// scripts/bench-raw.sh drives it; it prints one line of JSON.
//
//	go run ./test/bench/squashfs -out /tmp/root.sqfs -comp zstd -level 3 -workers 2 -runs 5 rootfs.tar
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
	"time"

	"github.com/imgctl/imgctl/builders/squashfs"
)

type result struct {
	Seconds        float64   `json:"seconds"` // best run
	MedianSeconds  float64   `json:"median_seconds"`
	Runs           []float64 `json:"runs"`
	InputBytes     int64     `json:"input_bytes"` // size of the rootfs tar
	Size           int64     `json:"size"`        // size of the image
	Inodes         int       `json:"inodes"`
	Fragments      int       `json:"fragments"`
	DuplicateFiles int       `json:"duplicate_files"`
	SHA256         string    `json:"sha256"` // of the image (computed after the timed part)
}

func main() {
	out := flag.String("out", "", "write the image to `FILE` (replaced by every run)")
	comp := flag.String("comp", "zstd", "compressor (zstd, xz, gzip, lz4)")
	level := flag.Int("level", 3, "compression level (0: the compressor's default)")
	workers := flag.Int("workers", 2, "parallel block compressors (0: all CPUs)")
	runs := flag.Int("runs", 1, "number of timed runs")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of all runs to `FILE`")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s -out FILE [-comp C] [-level N] [-workers N] [-runs N] [-cpuprofile FILE] ROOTFS.tar\n", filepath.Base(os.Args[0]))
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || flag.NArg() != 1 || *runs < 1 {
		flag.Usage()
		os.Exit(2)
	}
	opts := squashfs.Options{Compression: *comp, Level: *level, Workers: *workers, MTime: 1700000000}
	if err := run(context.Background(), *out, flag.Arg(0), *runs, *cpuprofile, opts); err != nil {
		fmt.Fprintln(os.Stderr, "squashfs bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, in string, runs int, cpuprofile string, opts squashfs.Options) error {
	f, err := os.Open(in)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
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
	res := result{InputBytes: fi.Size()}
	for range runs {
		secs, r, err := once(ctx, out, io.NewSectionReader(f, 0, fi.Size()), opts)
		if err != nil {
			return err
		}
		res.Size, res.Inodes, res.Fragments, res.DuplicateFiles = r.Size, r.Inodes, r.Fragments, r.DuplicateFiles
		res.Runs = append(res.Runs, secs)
	}
	sorted := slices.Sorted(slices.Values(res.Runs))
	res.Seconds, res.MedianSeconds = sorted[0], sorted[len(sorted)/2]
	if len(sorted)%2 == 0 {
		res.MedianSeconds = (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	}
	if res.SHA256, err = fileSHA256(out); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// once writes the image of src to a new file out and returns the wall time from creating out
// to closing it.
func once(ctx context.Context, out string, src io.Reader, opts squashfs.Options) (float64, squashfs.Result, error) {
	// A new file every run, like the raw target's work directory (see test/bench/compose).
	if err := os.Remove(out); err != nil && !os.IsNotExist(err) {
		return 0, squashfs.Result{}, err
	}
	start := time.Now()
	f, err := os.Create(out)
	if err != nil {
		return 0, squashfs.Result{}, err
	}
	defer f.Close()
	r, err := squashfs.Write(ctx, f, src, opts)
	if err != nil {
		return 0, squashfs.Result{}, err
	}
	if err := f.Close(); err != nil {
		return 0, squashfs.Result{}, err
	}
	return time.Since(start).Seconds(), r, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
