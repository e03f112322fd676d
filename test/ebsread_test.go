package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/imgctl/imgctl/images/publication"
)

// listBlocksPath is the EBS direct API's ListSnapshotBlocks route: GET /snapshots/ID/blocks.
var listBlocksPath = regexp.MustCompile(`^/snapshots/[^/]+/blocks$`)

// motoBlockList mends moto 5.2.1's ListSnapshotBlocks reply for the SDK: moto sends each
// BlockIndex as a JSON string ("BlockIndex": "5"), which the SDK's decoder refuses
// ("deserialization failed, expected number, got \"5\""). It rewrites such a reply's block
// indexes to numbers before the SDK reads it; every other request and reply passes untouched.
type motoBlockList struct{ next ebs.HTTPClient }

func (m motoBlockList) Do(r *http.Request) (*http.Response, error) {
	resp, err := m.next.Do(r)
	if err != nil || r.Method != http.MethodGet || !listBlocksPath.MatchString(r.URL.Path) || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	fixed, err := numericBlockIndexes(body)
	if err != nil {
		return nil, fmt.Errorf("ListSnapshotBlocks reply %.200q: %w", body, err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(fixed))
	resp.ContentLength = int64(len(fixed))
	resp.Header.Set("Content-Length", strconv.Itoa(len(fixed)))
	return resp, nil
}

// numericBlockIndexes turns "BlockIndex": "N" into "BlockIndex": N in a ListSnapshotBlocks
// reply; numbers stay numbers.
func numericBlockIndexes(body []byte) ([]byte, error) {
	var reply map[string]json.RawMessage
	if err := json.Unmarshal(body, &reply); err != nil {
		return nil, err
	}
	var blocks []map[string]json.RawMessage
	if raw, ok := reply["Blocks"]; ok {
		if err := json.Unmarshal(raw, &blocks); err != nil {
			return nil, fmt.Errorf("Blocks: %w", err)
		}
	}
	for i, b := range blocks {
		var s string
		if json.Unmarshal(b["BlockIndex"], &s) != nil {
			continue // already a number (what AWS sends)
		}
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("block %d: BlockIndex %q: %w", i, s, err)
		}
		b["BlockIndex"] = json.RawMessage(strconv.FormatInt(n, 10))
	}
	if blocks != nil {
		raw, err := json.Marshal(blocks)
		if err != nil {
			return nil, err
		}
		reply["Blocks"] = raw
	}
	return json.Marshal(reply)
}

// readBackEBS returns an EBS client like c that can read moto's block lists.
func readBackEBS(c *ebs.Client) *ebs.Client {
	return ebs.New(c.Options(), func(o *ebs.Options) { o.HTTPClient = motoBlockList{next: o.HTTPClient} })
}

// snapshotBlocks are the blocks a snapshot itself holds, as GetSnapshotBlock returns them.
type snapshotBlocks struct {
	ID         string
	VolumeSize int64 // GiB
	Blocks     map[int32][]byte
}

// readSnapshot reads every block ListSnapshotBlocks names for snapshot id with GetSnapshotBlock,
// a few at a time, and checks each block's length and its sha256 against the checksum the
// service returns with it.
func readSnapshot(ctx context.Context, c *ebs.Client, id string) (snapshotBlocks, error) {
	type block struct {
		index int32
		token string
	}
	var list []block
	out := snapshotBlocks{ID: id, Blocks: map[int32][]byte{}}
	var next *string
	for {
		l, err := c.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String(id), NextToken: next})
		if err != nil {
			return out, fmt.Errorf("ListSnapshotBlocks %s: %w", id, err)
		}
		out.VolumeSize = aws.ToInt64(l.VolumeSize)
		for _, b := range l.Blocks {
			list = append(list, block{aws.ToInt32(b.BlockIndex), aws.ToString(b.BlockToken)})
		}
		if aws.ToString(l.NextToken) == "" {
			break
		}
		next = l.NextToken
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		work = make(chan block)
	)
	for range 8 {
		wg.Go(func() {
			for b := range work {
				data, err := getBlock(ctx, c, id, b.index, b.token)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					out.Blocks[b.index] = data
				}
				mu.Unlock()
			}
		})
	}
	for _, b := range list {
		work <- b
	}
	close(work)
	wg.Wait()
	return out, errors.Join(errs...)
}

func getBlock(ctx context.Context, c *ebs.Client, id string, index int32, token string) ([]byte, error) {
	g, err := c.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: aws.String(id), BlockIndex: aws.Int32(index), BlockToken: aws.String(token)})
	if err != nil {
		return nil, fmt.Errorf("GetSnapshotBlock %s block %d: %w", id, index, err)
	}
	defer g.BlockData.Close()
	data, err := io.ReadAll(g.BlockData)
	if err != nil {
		return nil, fmt.Errorf("GetSnapshotBlock %s block %d: reading: %w", id, index, err)
	}
	if len(data) != publication.BlockSize || aws.ToInt32(g.DataLength) != publication.BlockSize {
		return nil, fmt.Errorf("snapshot %s block %d: %d bytes (DataLength %d), want %d", id, index, len(data), aws.ToInt32(g.DataLength), publication.BlockSize)
	}
	sum := sha256.Sum256(data)
	if got := base64.StdEncoding.EncodeToString(sum[:]); got != aws.ToString(g.Checksum) {
		return nil, fmt.Errorf("snapshot %s block %d: sha256 %s, the service's checksum %s", id, index, got, aws.ToString(g.Checksum))
	}
	return data, nil
}

// snapshotChain returns id and its ancestors, id first, following each snapshot's
// publication.TagParent tag (moto keeps StartSnapshot's tags; it does not report
// ParentSnapshotId itself).
func snapshotChain(ctx context.Context, c *ec2.Client, id string) ([]string, error) {
	var chain []string
	for id != "" {
		if len(chain) > 64 {
			return nil, fmt.Errorf("snapshot chain %v: longer than 64", chain)
		}
		d, err := c.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{id}})
		if err != nil {
			return nil, fmt.Errorf("DescribeSnapshots %s: %w", id, err)
		}
		if len(d.Snapshots) != 1 {
			return nil, fmt.Errorf("DescribeSnapshots %s: %d snapshots", id, len(d.Snapshots))
		}
		chain = append(chain, id)
		id = ""
		for _, tag := range d.Snapshots[0].Tags {
			if aws.ToString(tag.Key) == publication.TagParent {
				id = aws.ToString(tag.Value)
			}
		}
	}
	return chain, nil
}

// reassemble writes the disk a snapshot chain (leaf first, as snapshotChain returns it) holds
// to a sparse file at path: the oldest ancestor's blocks, then each descendant's on top (an
// incremental snapshot may hold only the blocks it changed, as moto's do). It returns the
// blocks read from each snapshot, in the chain's order.
func reassemble(ctx context.Context, c *ebs.Client, chain []string, path string) ([]snapshotBlocks, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	read := make([]snapshotBlocks, len(chain))
	var size int64
	for i := len(chain) - 1; i >= 0; i-- {
		s, err := readSnapshot(ctx, c, chain[i])
		if err != nil {
			return nil, err
		}
		read[i] = s
		size = s.VolumeSize << 30
		if err := f.Truncate(size); err != nil {
			return nil, err
		}
		for idx, data := range s.Blocks {
			off := int64(idx) * publication.BlockSize
			if off+int64(len(data)) > size {
				return nil, fmt.Errorf("snapshot %s block %d lies past its %d GiB volume", s.ID, idx, s.VolumeSize)
			}
			if _, err := f.WriteAt(data, off); err != nil {
				return nil, err
			}
		}
	}
	return read, f.Close()
}

// diskDiff reports where got stops holding want's bytes followed only by zeros, or nil.
func diskDiff(got, want string) error {
	g, err := os.Open(got)
	if err != nil {
		return err
	}
	defer g.Close()
	w, err := os.Open(want)
	if err != nil {
		return err
	}
	defer w.Close()
	gi, err := g.Stat()
	if err != nil {
		return err
	}
	wi, err := w.Stat()
	if err != nil {
		return err
	}
	if gi.Size() < wi.Size() {
		return fmt.Errorf("%s: %d bytes, shorter than %s (%d)", got, gi.Size(), want, wi.Size())
	}
	const chunk = 1 << 20
	a, b := make([]byte, chunk), make([]byte, chunk)
	for off := int64(0); off < gi.Size(); off += chunk {
		n, err := g.ReadAt(a, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		m := 0
		if off < wi.Size() {
			if m, err = w.ReadAt(b[:n], off); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
		}
		clear(b[m:n])
		if !bytes.Equal(a[:n], b[:n]) {
			i := 0
			for a[i] == b[i] {
				i++
			}
			return fmt.Errorf("%s differs from %s at byte %d (512 KiB block %d)", got, want, off+int64(i), (off+int64(i))/publication.BlockSize)
		}
	}
	return nil
}
