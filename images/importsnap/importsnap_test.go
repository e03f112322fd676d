package importsnap

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/sparse"
	"github.com/imgctl/imgctl/layers/progress/progresstest"
)

const (
	region = "us-east-1"
	bucket = "imgctl-import"
	block  = 512 << 10
)

// env is one moto_server behind an awsfake.Server that serves ImportSnapshot, with a bucket.
type env struct {
	ctx     context.Context
	moto    *awsfake.Moto
	imp     *awsfake.ImportSnapshot
	clients *awsclient.Clients
	// parts records each UploadPart's number and x-amz-checksum-sha256 header, attempts how
	// often each part number was sent. onPart, when set, sees each UploadPart first (attempt
	// counts from 1) and answers it itself by returning true.
	mu       sync.Mutex
	parts    map[string]string
	attempts map[string]int
	onPart   func(w http.ResponseWriter, r *http.Request, part string, attempt int) bool
	// calls counts EC2 query actions; onEC2, when set, may answer one itself.
	calls map[string]int
	onEC2 func(w http.ResponseWriter, action string, n int) bool
}

func TestMain(m *testing.M) {
	code := m.Run()
	awsfake.StopMoto()
	os.Exit(code)
}

func setup(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{ctx: ctx, parts: map[string]string{}, attempts: map[string]int{}, calls: map[string]int{}}
	a := awsfake.MotoForTest(t, region, awsfake.HandlerFunc(e.watchParts), awsfake.HandlerFunc(e.watchEC2))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("moto_server log:\n%s", a.Moto.Log())
		}
	})
	e.moto, e.clients = a.Moto, a.Clients
	e.imp = &awsfake.ImportSnapshot{Upstream: a.Moto.URL}
	a.Front.Use(e.imp) // after the EC2 recorder, which leaves ImportSnapshot's actions alone
	if _, err := e.clients.S3(region).CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) watchParts(w http.ResponseWriter, r *http.Request, body []byte) bool {
	q := r.URL.Query()
	if r.Method != http.MethodPut || !q.Has("partNumber") || !q.Has("uploadId") {
		return false
	}
	part := q.Get("partNumber")
	e.mu.Lock()
	e.parts[part] = r.Header.Get("X-Amz-Checksum-Sha256")
	e.attempts[part]++
	attempt, hook := e.attempts[part], e.onPart
	e.mu.Unlock()
	return hook != nil && hook(w, r, part, attempt)
}

func (e *env) watchEC2(w http.ResponseWriter, r *http.Request, body []byte) bool {
	if r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		return false
	}
	q, err := url.ParseQuery(string(body))
	if err != nil || q.Get("Action") == "" {
		return false
	}
	e.mu.Lock()
	e.calls[q.Get("Action")]++
	n, hook := e.calls[q.Get("Action")], e.onEC2
	e.mu.Unlock()
	return hook != nil && hook(w, q.Get("Action"), n)
}

func s3Error(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>`+code+`</Code><Message>`+code+`</Message><RequestId>1</RequestId></Error>`)
}

// disk returns size bytes of random data with a zero stretch in the middle.
func disk(size int) []byte {
	b := make([]byte, size)
	r := rand.NewChaCha8([32]byte{1, 2, 3})
	r.Read(b)
	clear(b[size/3 : size/3+block+4096])
	return b
}

func (e *env) noMultipartUploads(t *testing.T) {
	t.Helper()
	out, err := e.clients.S3(region).ListMultipartUploads(e.ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Uploads) != 0 {
		t.Errorf("%d multipart uploads left in the bucket, first %s", len(out.Uploads), aws.ToString(out.Uploads[0].Key))
	}
}

func (e *env) objectExists(t *testing.T, key string) bool {
	t.Helper()
	_, err := e.clients.S3(region).HeadObject(e.ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	var api smithy.APIError
	if errors.As(err, &api) && (api.ErrorCode() == "NotFound" || api.ErrorCode() == "NoSuchKey") {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

func TestUploadSnapshotHoldsTheDisk(t *testing.T) {
	e := setup(t)
	data := disk(11<<20 + 4096) // three 5 MiB parts, the last short; not a whole 512 KiB block
	src := sparseDisk(t, data)  // what ami passes: the stored disk.simg's expanded view
	ctx, rec := progresstest.Context(e.ctx)
	tags := map[string]string{publication.TagImage: "sha256:" + strings.Repeat("ab", 32), publication.TagName: "node", publication.TagState: publication.TagStateUploading}
	kms := "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
	res, err := Upload(ctx, e.clients, region, src, src.Size(), Options{
		Bucket: bucket, Key: "disks/node.raw", Tags: tags, Encrypted: true, KMSKeyID: kms,
		PartSize: 5 << 20, Concurrency: 2, Wait: time.Minute, Poll: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.SnapshotID == "" || res.Bytes != int64(len(data)) || res.Duration <= 0 {
		t.Fatalf("result %+v", res)
	}

	// Per-part checksums: every part carried the sha256 of its bytes.
	e.mu.Lock()
	if len(e.parts) != 3 {
		t.Errorf("%d parts uploaded, want 3: %v", len(e.parts), e.parts)
	}
	for i, want := range []string{sum(data[:5<<20]), sum(data[5<<20 : 10<<20]), sum(data[10<<20:])} {
		if got := e.parts[string(rune('1'+i))]; got != want {
			t.Errorf("part %d checksum %q, want %q", i+1, got, want)
		}
	}
	e.mu.Unlock()

	// The import asked for what Upload was told.
	reqs := e.imp.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d ImportSnapshot calls", len(reqs))
	}
	if r := reqs[0]; r.Format != "RAW" || r.Bucket != bucket || r.Key != "disks/node.raw" || !r.Encrypted || r.KMSKeyID != kms || r.Region != region {
		t.Errorf("ImportSnapshot request %+v", r)
	}
	if r := reqs[0]; r.TaskTags[publication.TagImage] != tags[publication.TagImage] || len(r.ResourceType) != 1 || r.ResourceType[0] != "import-snapshot-task" {
		t.Errorf("the import task's tags: %v on %v", r.TaskTags, r.ResourceType)
	}

	// The snapshot's blocks are the disk.
	c := e.clients.EBS(region)
	for off := 0; off < len(data); off += block {
		out, err := c.GetSnapshotBlock(e.ctx, &ebs.GetSnapshotBlockInput{SnapshotId: &res.SnapshotID, BlockIndex: aws.Int32(int32(off / block)), BlockToken: aws.String("x")})
		if err != nil {
			t.Fatalf("block %d: %v", off/block, err)
		}
		got, err := io.ReadAll(out.BlockData)
		out.BlockData.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, block)
		copy(want, data[off:])
		if !bytes.Equal(got, want) {
			t.Fatalf("block %d differs from the disk", off/block)
		}
	}

	// The snapshot carries the tags, marked complete.
	snaps, err := e.clients.EC2(region).DescribeSnapshots(e.ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{res.SnapshotID}})
	if err != nil || len(snaps.Snapshots) != 1 {
		t.Fatalf("DescribeSnapshots: %v", err)
	}
	got := map[string]string{}
	for _, tg := range snaps.Snapshots[0].Tags {
		got[aws.ToString(tg.Key)] = aws.ToString(tg.Value)
	}
	if got[publication.TagImage] != tags[publication.TagImage] || got[publication.TagName] != "node" || got[publication.TagState] != publication.TagStateComplete {
		t.Errorf("snapshot tags %v", got)
	}

	if e.objectExists(t, "disks/node.raw") {
		t.Error("the uploaded object is still in the bucket after the import")
	}
	e.noMultipartUploads(t)
	if ev, ok := rec.Step("upload s3 " + region); !ok || ev.Bytes != int64(len(data)) || ev.Total != int64(len(data)) || ev.Err != nil {
		t.Errorf("progress of the upload: %+v (found %v)", ev, ok)
	}
	if ev, ok := rec.Step("import snapshot " + region); !ok || ev.Err != nil {
		t.Errorf("progress of the import: %+v (found %v)", ev, ok)
	}

	// Keep leaves the object, under a key Upload made up; default 8 MiB parts.
	small := disk(9 << 20)
	if _, err := Upload(e.ctx, e.clients, region, bytes.NewReader(small), int64(len(small)), Options{Bucket: bucket, Keep: true, Poll: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	list, err := e.clients.S3(region).ListObjectsV2(e.ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Contents) != 1 || !strings.HasPrefix(aws.ToString(list.Contents[0].Key), "imgctl/import/") || aws.ToInt64(list.Contents[0].Size) != int64(len(small)) {
		t.Errorf("Keep: the bucket holds %d objects, want the kept one under imgctl/import/", len(list.Contents))
	}
}

// sparseDisk stores data in the sparse format (as disk.simg is) and opens it.
func sparseDisk(t *testing.T, data []byte) *sparse.Reader {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	var simg bytes.Buffer
	if _, err := sparse.Write(context.Background(), &simg, f, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if simg.Len() >= len(data) {
		t.Fatalf("the sparse image (%d bytes) skipped no zeros of the %d-byte disk", simg.Len(), len(data))
	}
	r, err := sparse.Open(bytes.NewReader(simg.Bytes()), int64(simg.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if r.Size() != int64(len(data)) {
		t.Fatalf("sparse image of %d bytes expands to %d", len(data), r.Size())
	}
	return r
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return base64.StdEncoding.EncodeToString(s[:])
}

func TestUploadFailedTask(t *testing.T) {
	e := setup(t)
	e.imp.FailMessage = "ClientError: Disk validation failed [Unsupported specified file format]"
	// The first polls are throttled (more often than the SDK retries one call): polling goes on.
	e.onEC2 = func(w http.ResponseWriter, action string, n int) bool {
		if action != "DescribeImportSnapshotTasks" || n > 4 {
			return false
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>1</RequestID></Response>`)
		return true
	}
	data := disk(1 << 20)
	_, err := Upload(e.ctx, e.clients, region, bytes.NewReader(data), int64(len(data)), Options{Bucket: bucket, Key: "bad.raw", Wait: 20 * time.Second, Poll: 10 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "Disk validation failed [Unsupported specified file format]") || !strings.Contains(err.Error(), "import-snap-") {
		t.Fatalf("err = %v, want the task's status message", err)
	}
	t.Log(err)
	if e.objectExists(t, "bad.raw") {
		t.Error("the object of a failed import is still in the bucket")
	}
}

func TestUploadStuckTask(t *testing.T) {
	e := setup(t)
	e.imp.Stuck = true
	data := disk(1 << 20)
	start := time.Now()
	_, err := Upload(e.ctx, e.clients, region, bytes.NewReader(data), int64(len(data)), Options{Bucket: bucket, Key: "slow.raw", Wait: 300 * time.Millisecond, Poll: 20 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "still active after 300ms") || !strings.Contains(err.Error(), "s3://"+bucket+"/slow.raw") {
		t.Fatalf("err = %v, want a bounded wait naming the kept object", err)
	}
	t.Log(err)
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the bounded wait took %s", d)
	}
	if !e.objectExists(t, "slow.raw") {
		t.Error("the object of a still-running import was deleted")
	}
}

func TestUploadAbortsOnAFailingPart(t *testing.T) {
	e := setup(t)
	e.onPart = func(w http.ResponseWriter, r *http.Request, part string, attempt int) bool {
		if part != "2" {
			return false
		}
		s3Error(w, http.StatusForbidden, "AccessDenied")
		return true
	}
	data := disk(11 << 20)
	_, err := Upload(e.ctx, e.clients, region, bytes.NewReader(data), int64(len(data)), Options{Bucket: bucket, Key: "denied.raw", PartSize: 5 << 20, Concurrency: 1, Poll: 10 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "s3:PutObject") || !strings.Contains(err.Error(), "s3://"+bucket+"/denied.raw") {
		t.Fatalf("err = %v, want access denied naming s3:PutObject and the object", err)
	}
	t.Log(err)
	e.noMultipartUploads(t)
	if n := len(e.imp.Requests()); n != 0 {
		t.Errorf("%d ImportSnapshot calls after a failed upload", n)
	}
	if n := e.attempts["2"]; n != 1 {
		t.Errorf("the denied part was sent %d times, want once (access denied never succeeds)", n)
	}

	// Cancelled while parts are in flight: the multipart upload is still aborted.
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	e.onPart = func(w http.ResponseWriter, r *http.Request, part string, attempt int) bool {
		if part == "2" {
			cancel()
		}
		return false
	}
	_, err = Upload(ctx, e.clients, region, bytes.NewReader(data), int64(len(data)), Options{Bucket: bucket, Key: "cancelled.raw", PartSize: 5 << 20, Concurrency: 1})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: err = %v", err)
	}
	e.noMultipartUploads(t)
}

// A hung part request times out and is sent again alone; a throttled one is retried with
// backoff; the object holds the disk.
func TestUploadRetriesAPartAlone(t *testing.T) {
	e := setup(t)
	e.onPart = func(w http.ResponseWriter, r *http.Request, part string, attempt int) bool {
		switch {
		case part == "1" && attempt == 1:
			select { // hang until the client gives up
			case <-r.Context().Done():
			case <-time.After(30 * time.Second):
			}
			return true
		case part == "2" && attempt <= 2:
			s3Error(w, http.StatusServiceUnavailable, "SlowDown")
			return true
		}
		return false
	}
	data := disk(11 << 20)
	start := time.Now()
	if _, err := Upload(e.ctx, e.clients, region, bytes.NewReader(data), int64(len(data)), Options{
		Bucket: bucket, Key: "retried.raw", PartSize: 5 << 20, Concurrency: 3, RequestTimeout: time.Second, Keep: true, Poll: 10 * time.Millisecond,
	}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the upload took %s: the hung request was not cut short", d)
	}
	e.mu.Lock()
	if e.attempts["1"] != 2 || e.attempts["2"] != 3 || e.attempts["3"] != 1 {
		t.Errorf("attempts per part %v, want 1:2 2:3 3:1", e.attempts)
	}
	e.mu.Unlock()
	obj, err := e.clients.S3(region).GetObject(e.ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("retried.raw")})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Body.Close()
	got, err := io.ReadAll(obj.Body)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the object differs from the disk (%d bytes, %v)", len(got), err)
	}
	e.noMultipartUploads(t)
}

func TestUploadWithoutTheServiceRole(t *testing.T) {
	e := setup(t)
	e.imp.NoRole = true
	data := disk(1 << 20)
	_, err := Upload(e.ctx, e.clients, region, bytes.NewReader(data), int64(len(data)), Options{Bucket: bucket, Key: "norole.raw", Wait: 20 * time.Second, Poll: 10 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "ImportSnapshot of s3://"+bucket+"/norole.raw") || !strings.Contains(err.Error(), "an IAM role named vmimport that vmie.amazonaws.com may assume") {
		t.Fatalf("err = %v, want the vmimport role explained", err)
	}
	t.Log(err)
	if e.objectExists(t, "norole.raw") {
		t.Error("the object of a refused import is still in the bucket")
	}

	e.imp.NoRole = false
	e.onEC2 = func(w http.ResponseWriter, action string, n int) bool {
		if action != "ImportSnapshot" {
			return false
		}
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation.</Message></Error></Errors><RequestID>1</RequestID></Response>`)
		return true
	}
	_, err = Upload(e.ctx, e.clients, region, bytes.NewReader(data), int64(len(data)), Options{Bucket: bucket, Key: "denied.raw", Wait: 20 * time.Second, Poll: 10 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "access denied (the caller needs ec2:ImportSnapshot)") {
		t.Fatalf("err = %v, want access denied naming ec2:ImportSnapshot", err)
	}
	t.Log(err)
	if e.objectExists(t, "denied.raw") {
		t.Error("the object of a denied import is still in the bucket")
	}
}

func TestUploadChecksOptions(t *testing.T) {
	c := awsclient.NewClients(aws.Config{Region: region})
	r := bytes.NewReader(make([]byte, 1024))
	for _, tc := range []struct {
		o    Options
		size int64
		want string
	}{
		{Options{}, 1024, "needs an S3 bucket"},
		{Options{Bucket: bucket}, 0, "empty disk"},
		{Options{Bucket: bucket, KMSKeyID: "k"}, 1024, "KMS key needs Encrypted"},
		{Options{Bucket: bucket, PartSize: 1 << 20}, 1024, "part size 1048576"},
	} {
		if _, err := Upload(context.Background(), c, region, r, tc.size, tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v size %d: err = %v, want %q", tc.o, tc.size, err, tc.want)
		}
	}
	if _, err := Upload(context.Background(), c, "nowhere", r, 1024, Options{Bucket: bucket}); err == nil || !strings.Contains(err.Error(), "not an AWS region") {
		t.Errorf("bad region: %v", err)
	}
}

func TestPartSize(t *testing.T) {
	for _, tc := range []struct{ size, asked, want int64 }{
		{1 << 30, 0, 8 << 20},
		{1 << 30, 16 << 20, 16 << 20},
		{1 << 40, 8 << 20, 105 << 20}, // 1 TiB in at most 10,000 parts, rounded up to a MiB
		{5 << 40, 0, 525 << 20},       // S3's largest object
		{3 << 20, 5 << 20, 5 << 20},   // one short part
		{10000 * (8 << 20), 0, 8 << 20},
		{10000*(8<<20) + 1, 0, 9 << 20},
	} {
		if got := partSize(tc.size, tc.asked); got != tc.want {
			t.Errorf("partSize(%d, %d) = %d, want %d", tc.size, tc.asked, got, tc.want)
		}
	}
}
