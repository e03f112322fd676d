package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// sink is the trivial server of the baseline: it reads every PUT body and drops it, counting
// requests and bytes.
type sink struct {
	requests, bytes atomic.Int64
}

func (s *sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		http.Error(w, "PUT only", http.StatusMethodNotAllowed)
		return
	}
	n, err := io.Copy(io.Discard, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.requests.Add(1)
	s.bytes.Add(n)
	w.WriteHeader(http.StatusCreated)
}

// startSink serves a sink on 127.0.0.1 until ctx ends.
func startSink(ctx context.Context) (*sink, string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	s := &sink{}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	context.AfterFunc(ctx, func() { srv.Close() })
	return s, "http://" + l.Addr().String(), nil
}

// putResult is one baseline measurement.
type putResult struct {
	Concurrency int     `json:"concurrency"`
	Blocks      int64   `json:"blocks"`
	Bytes       int64   `json:"bytes"`
	Received    int64   `json:"received"` // bytes the server read: equal to Bytes
	Seconds     float64 `json:"seconds"`
	MBps        float64 `json:"mbps"` // 10^6 bytes per second
	// CPUSeconds is the process's user + system time while putting: client and server.
	CPUSeconds float64 `json:"cpu_seconds"`
}

// putBlocks PUTs blocks (block indexes of r, blockSize bytes each, the last one of the disk
// possibly shorter) to base+"/block/INDEX" with n requests in flight, each worker reading its
// block with ReadAt into its own buffer: what an uploader does, without its protocol. It
// returns the bytes sent and the time from the first request to the last answer.
func putBlocks(ctx context.Context, base string, r io.ReaderAt, size, blockSize int64, blocks []int64, n int) (int64, time.Duration, error) {
	if n < 1 {
		return 0, 0, fmt.Errorf("concurrency %d: want at least 1", n)
	}
	tr := &http.Transport{MaxIdleConns: n, MaxIdleConnsPerHost: n, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan int64)
	var (
		sent     atomic.Int64
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	fail := func(err error) {
		once.Do(func() { firstErr = err; cancel() })
	}
	start := time.Now()
	for range n {
		wg.Go(func() {
			buf := make([]byte, blockSize)
			for i := range next {
				b := buf[:min(blockSize, size-i*blockSize)]
				if _, err := r.ReadAt(b, i*blockSize); err != nil && !errors.Is(err, io.EOF) {
					fail(fmt.Errorf("reading block %d: %w", i, err))
					return
				}
				if err := put(ctx, client, base+"/block/"+strconv.FormatInt(i, 10), b); err != nil {
					fail(err)
					return
				}
				sent.Add(int64(len(b)))
			}
		})
	}
feed:
	for _, i := range blocks {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	d := time.Since(start)
	if firstErr != nil {
		return sent.Load(), d, firstErr
	}
	return sent.Load(), d, ctx.Err()
}

func put(ctx context.Context, c *http.Client, url string, b []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("PUT %s: %w", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("PUT %s: %s", url, resp.Status)
	}
	return nil
}
