package awsfake

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestEBSDiscard: with Discard the fake still checks and counts blocks and completes the
// snapshot, but keeps no data.
func TestEBSDiscard(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, discard := range []bool{false, true} {
		f := &EBS{Discard: discard}
		s := &Server{}
		s.Use(f)
		base, err := s.Start(ctx)
		if err != nil {
			t.Fatal(err)
		}
		do := func(method, path string, body []byte, hdr map[string]string) (int, string) {
			req, _ := http.NewRequest(method, base+path, bytes.NewReader(body))
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
		if code, out := do("POST", "/snapshots", []byte(`{"VolumeSize":1}`), nil); code != http.StatusCreated || !strings.Contains(out, "snap-00000000000000001") {
			t.Fatalf("StartSnapshot: %d %s", code, out)
		}
		block := bytes.Repeat([]byte{3}, EBSBlockSize)
		sum := sha256.Sum256(block)
		b64 := base64.StdEncoding.EncodeToString(sum[:])
		if code, out := do("PUT", "/snapshots/snap-00000000000000001/blocks/4", block, map[string]string{
			"x-amz-Data-Length": fmt.Sprint(EBSBlockSize), "x-amz-Checksum": b64, "x-amz-Checksum-Algorithm": "SHA256",
		}); code != http.StatusCreated {
			t.Fatalf("PutSnapshotBlock: %d %s", code, out)
		}
		agg := sha256.Sum256(sum[:])
		if code, out := do("POST", "/snapshots/completion/snap-00000000000000001", nil, map[string]string{
			"x-amz-ChangedBlocksCount": "1", "x-amz-Checksum": base64.StdEncoding.EncodeToString(agg[:]),
			"x-amz-Checksum-Algorithm": "SHA256", "x-amz-Checksum-Aggregation-Method": "LINEAR",
		}); code != http.StatusAccepted {
			t.Fatalf("CompleteSnapshot: %d %s", code, out)
		}
		n := f.Counters()
		if n.Blocks != 1 || n.Bytes != EBSBlockSize || f.Snapshot("snap-00000000000000001").Status != "completed" {
			t.Errorf("discard %v: counters %+v", discard, n)
		}
		if got := f.Block("snap-00000000000000001", 4); bytes.Equal(got, block) == discard {
			t.Errorf("discard %v: block kept: %v", discard, got != nil)
		}
		s.Close()
		f.Close()
	}
}
