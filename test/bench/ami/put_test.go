package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The baseline sends exactly the listed blocks, the disk's last one short, at any concurrency.
func TestPutBlocks(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, url, err := startSink(ctx)
	if err != nil {
		t.Fatal(err)
	}
	disk := bytes.Repeat([]byte("0123456789"), 105) // 1050 bytes: blocks 0..10, the last 50 bytes
	blocks := []int64{0, 3, 4, 10}
	for _, n := range []int{1, 3, 16} {
		before := s.bytes.Load()
		sent, d, err := putBlocks(ctx, url, bytes.NewReader(disk), int64(len(disk)), 100, blocks, n)
		if err != nil {
			t.Fatalf("concurrency %d: %v", n, err)
		}
		if sent != 350 || s.bytes.Load()-before != 350 {
			t.Fatalf("concurrency %d: sent %d, server read %d, want 350 each", n, sent, s.bytes.Load()-before)
		}
		if d <= 0 {
			t.Fatalf("concurrency %d: duration %v", n, d)
		}
	}
	if got := s.requests.Load(); got != 12 {
		t.Fatalf("%d requests, want 12", got)
	}
}

func TestPutBlocksFails(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	defer srv.Close()
	disk := make([]byte, 1000)
	_, _, err := putBlocks(context.Background(), srv.URL, bytes.NewReader(disk), 1000, 100, []int64{0, 1, 2, 3, 4, 5}, 2)
	if err == nil || !strings.Contains(err.Error(), "/block/") || !strings.Contains(err.Error(), "500") {
		t.Fatalf("err = %v, want the block's URL and the status", err)
	}
	if _, _, err := putBlocks(context.Background(), srv.URL, bytes.NewReader(disk), 1000, 100, nil, 0); err == nil {
		t.Fatal("concurrency 0 accepted")
	}
}
