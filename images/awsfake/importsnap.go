package awsfake

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// ImportSnapshot serves EC2's ImportSnapshot and DescribeImportSnapshotTasks (query
// protocol), which moto lacks. A RAW import really happens: the object is read from the
// upstream's S3 and written block by block to a new upstream snapshot through the EBS direct
// APIs, so the snapshot's blocks hold the disk (every 512 KiB block is written, zeros too, so
// a test can read each one back). Zero value plus Upstream is ready to use; safe for
// concurrent use.
//
// A task is "active" on ImportSnapshot's reply and on the first DescribeImportSnapshotTasks
// reply that names it (which converts it), then "completed" with its SnapshotId, or "deleted"
// with a StatusMessage when the conversion failed or FailMessage is set.
type ImportSnapshot struct {
	// Upstream is the moto_server URL whose S3 holds the objects and whose EBS direct APIs
	// receive the snapshots.
	Upstream string

	// Fault injection, read when a request arrives (set before, or hold no request in flight).
	FailMessage string // every task ends "deleted" with this StatusMessage
	Stuck       bool   // every task stays "active" ("pending") forever
	NoRole      bool   // ImportSnapshot fails as AWS does when the vmimport service role is missing

	mu       sync.Mutex
	tasks    map[string]*importTask
	order    []string
	requests []ImportRequest
}

// ImportRequest is what one ImportSnapshot call asked for.
type ImportRequest struct {
	Region       string
	Format       string // DiskContainer.Format
	Bucket, Key  string // DiskContainer.UserBucket
	URL          string // DiskContainer.Url
	Description  string
	RoleName     string
	Encrypted    bool
	KMSKeyID     string
	ClientToken  string
	TaskTags     map[string]string // TagSpecification of resource type import-snapshot-task
	ResourceType []string          // every TagSpecification's ResourceType
}

type importTask struct {
	id        string
	req       ImportRequest
	status    string // active, completed, deleted
	message   string
	progress  string
	snapshot  string
	size      int64
	describes int
}

// Requests returns the ImportSnapshot calls so far, in order.
func (f *ImportSnapshot) Requests() []ImportRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

// ServeAWS implements Handler.
func (f *ImportSnapshot) ServeAWS(w http.ResponseWriter, r *http.Request, body []byte) bool {
	if r.Method != http.MethodPost {
		return false
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/x-www-form-urlencoded" {
		return false
	}
	q, err := url.ParseQuery(string(body))
	if err != nil {
		return false
	}
	switch q.Get("Action") {
	case "ImportSnapshot":
		f.importSnapshot(w, r, q)
	case "DescribeImportSnapshotTasks":
		f.describe(w, r, q)
	default:
		return false
	}
	return true
}

// importCredentialRegion reads the region from a SigV4 Authorization header's credential scope
// (Credential=AKID/DATE/REGION/SERVICE/aws4_request).
var importCredentialRegion = regexp.MustCompile(`Credential=[^/,]+/[0-9]+/([a-z0-9-]+)/`)

func importRegion(r *http.Request) string {
	if m := importCredentialRegion.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		return m[1]
	}
	return "us-east-1"
}

func (f *ImportSnapshot) importSnapshot(w http.ResponseWriter, r *http.Request, q url.Values) {
	req := ImportRequest{
		Region:      importRegion(r),
		Format:      q.Get("DiskContainer.Format"),
		Bucket:      q.Get("DiskContainer.UserBucket.S3Bucket"),
		Key:         q.Get("DiskContainer.UserBucket.S3Key"),
		URL:         q.Get("DiskContainer.Url"),
		Description: q.Get("Description"),
		RoleName:    q.Get("RoleName"),
		Encrypted:   q.Get("Encrypted") == "true",
		KMSKeyID:    q.Get("KmsKeyId"),
		ClientToken: q.Get("ClientToken"),
		TaskTags:    map[string]string{},
	}
	for i := 1; q.Has(fmt.Sprintf("TagSpecification.%d.ResourceType", i)); i++ {
		rt := q.Get(fmt.Sprintf("TagSpecification.%d.ResourceType", i))
		req.ResourceType = append(req.ResourceType, rt)
		for j := 1; q.Has(fmt.Sprintf("TagSpecification.%d.Tag.%d.Key", i, j)); j++ {
			if rt == "import-snapshot-task" {
				req.TaskTags[q.Get(fmt.Sprintf("TagSpecification.%d.Tag.%d.Key", i, j))] = q.Get(fmt.Sprintf("TagSpecification.%d.Tag.%d.Value", i, j))
			}
		}
	}
	f.mu.Lock()
	f.requests = append(f.requests, req)
	noRole := f.NoRole
	f.mu.Unlock()
	role := req.RoleName
	if role == "" {
		role = "vmimport"
	}
	switch {
	case noRole:
		importError(w, http.StatusBadRequest, "InvalidParameter", "The service role "+role+" provided does not exist or does not have sufficient permissions")
		return
	case req.Format == "" || req.Bucket == "" || req.Key == "":
		importError(w, http.StatusBadRequest, "InvalidParameter", "DiskContainer needs Format and UserBucket (S3Bucket, S3Key)")
		return
	case !strings.EqualFold(req.Format, "raw"):
		importError(w, http.StatusBadRequest, "InvalidParameter", "awsfake converts only RAW disks, not "+req.Format)
		return
	case req.KMSKeyID != "" && !req.Encrypted:
		importError(w, http.StatusBadRequest, "InvalidParameter", "KmsKeyId requires Encrypted")
		return
	}
	t := &importTask{id: "import-snap-" + importHex(8), req: req, status: "active", message: "pending", progress: "0"}
	f.mu.Lock()
	if f.tasks == nil {
		f.tasks = map[string]*importTask{}
	}
	f.tasks[t.id] = t
	f.order = append(f.order, t.id)
	reply := importSnapshotResponse{RequestID: importHex(8), importTaskXML: t.xml()}
	f.mu.Unlock()
	importWriteXML(w, reply)
}

func (f *ImportSnapshot) describe(w http.ResponseWriter, r *http.Request, q url.Values) {
	region := importRegion(r)
	var ids []string
	for i := 1; q.Has("ImportTaskId." + strconv.Itoa(i)); i++ {
		ids = append(ids, q.Get("ImportTaskId."+strconv.Itoa(i)))
	}
	f.mu.Lock()
	if len(ids) == 0 {
		for _, id := range f.order {
			if f.tasks[id].req.Region == region {
				ids = append(ids, id)
			}
		}
	}
	var tasks []*importTask
	for _, id := range ids {
		t, ok := f.tasks[id]
		if !ok || t.req.Region != region {
			f.mu.Unlock()
			importError(w, http.StatusBadRequest, "InvalidConversionTaskId.Malformed", "import task "+id+" does not exist")
			return
		}
		tasks = append(tasks, t)
	}
	fail, stuck := f.FailMessage, f.Stuck
	var convert []*importTask
	for _, t := range tasks {
		if t.status != "active" || stuck {
			continue
		}
		t.describes++
		if t.describes == 2 { // the first Describe shows the task converting, the next one its end
			convert = append(convert, t)
		}
		if t.describes == 1 {
			t.message, t.progress = "converting", "30"
		}
	}
	f.mu.Unlock()
	for _, t := range convert {
		var snap string
		var size int64
		var err error
		if fail == "" {
			snap, size, err = f.convert(r.Context(), t.req, t.id)
		}
		f.mu.Lock()
		switch {
		case fail != "":
			t.status, t.message, t.progress = "deleted", fail, ""
		case err != nil:
			t.status, t.message, t.progress = "deleted", "ClientError: "+err.Error(), ""
		default:
			t.status, t.message, t.progress, t.snapshot, t.size = "completed", "", "", snap, size
		}
		f.mu.Unlock()
	}
	f.mu.Lock()
	reply := describeImportSnapshotTasksResponse{RequestID: importHex(8)}
	for _, t := range tasks {
		reply.Tasks = append(reply.Tasks, t.xml())
	}
	f.mu.Unlock()
	importWriteXML(w, reply)
}

// convert copies the task's object into a new snapshot of the upstream, 512 KiB at a time.
func (f *ImportSnapshot) convert(ctx context.Context, req ImportRequest, id string) (string, int64, error) {
	if f.Upstream == "" {
		return "", 0, errors.New("awsfake.ImportSnapshot has no Upstream")
	}
	cfg := aws.Config{
		Region:       req.Region,
		BaseEndpoint: aws.String(f.Upstream),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "testing", SecretAccessKey: "testing", Source: "awsfake"}, nil
		}),
	}
	obj, err := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true }).GetObject(ctx, &s3.GetObjectInput{Bucket: &req.Bucket, Key: &req.Key})
	if err != nil {
		return "", 0, fmt.Errorf("reading s3://%s/%s: %w", req.Bucket, req.Key, err)
	}
	defer obj.Body.Close()
	size := aws.ToInt64(obj.ContentLength)
	if size <= 0 {
		return "", 0, fmt.Errorf("s3://%s/%s is empty", req.Bucket, req.Key)
	}
	const block = 512 << 10
	gib := max(1, (size+(1<<30)-1)>>30)
	c := ebs.NewFromConfig(cfg)
	desc := req.Description
	if desc == "" {
		desc = "Created by AWS-VMImport service for " + id
	}
	start := &ebs.StartSnapshotInput{VolumeSize: aws.Int64(gib), Description: &desc, Encrypted: aws.Bool(req.Encrypted)}
	if req.KMSKeyID != "" {
		start.KmsKeyArn = &req.KMSKeyID
	}
	snap, err := c.StartSnapshot(ctx, start)
	if err != nil {
		return "", 0, fmt.Errorf("StartSnapshot: %w", err)
	}
	buf := make([]byte, block)
	var n int32
	for off := int64(0); off < size; off += block {
		got, err := io.ReadFull(obj.Body, buf[:min(block, size-off)])
		if err != nil {
			return "", 0, fmt.Errorf("reading s3://%s/%s at %d: %w", req.Bucket, req.Key, off+int64(got), err)
		}
		clear(buf[got:])
		sum := sha256.Sum256(buf)
		_, err = c.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{
			SnapshotId: snap.SnapshotId, BlockIndex: aws.Int32(int32(off / block)), BlockData: bytes.NewReader(buf),
			DataLength: aws.Int32(block), Checksum: aws.String(base64.StdEncoding.EncodeToString(sum[:])),
			ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
		})
		if err != nil {
			return "", 0, fmt.Errorf("PutSnapshotBlock %d: %w", off/block, err)
		}
		n++
	}
	if _, err := c.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{SnapshotId: snap.SnapshotId, ChangedBlocksCount: aws.Int32(n)}); err != nil {
		return "", 0, fmt.Errorf("CompleteSnapshot: %w", err)
	}
	return aws.ToString(snap.SnapshotId), size, nil
}

func (t *importTask) xml() importTaskXML {
	d := snapshotTaskDetailXML{
		Description: t.req.Description, Format: strings.ToUpper(t.req.Format), Progress: t.progress,
		SnapshotID: t.snapshot, Status: t.status, StatusMessage: t.message,
		Encrypted: t.req.Encrypted, KMSKeyID: t.req.KMSKeyID,
		UserBucket: importUserBucketXML{Bucket: t.req.Bucket, Key: t.req.Key},
	}
	if t.size > 0 {
		d.DiskImageSize = strconv.FormatInt(t.size, 10)
	}
	x := importTaskXML{ID: t.id, Description: t.req.Description, Detail: d}
	keys := make([]string, 0, len(t.req.TaskTags))
	for k := range t.req.TaskTags {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		x.Tags = append(x.Tags, importTagXML{Key: k, Value: t.req.TaskTags[k]})
	}
	return x
}

const importXMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"

type importSnapshotResponse struct {
	XMLName   xml.Name `xml:"ImportSnapshotResponse"`
	XMLNS     string   `xml:"xmlns,attr"`
	RequestID string   `xml:"requestId"`
	importTaskXML
}

type describeImportSnapshotTasksResponse struct {
	XMLName   xml.Name        `xml:"DescribeImportSnapshotTasksResponse"`
	XMLNS     string          `xml:"xmlns,attr"`
	RequestID string          `xml:"requestId"`
	Tasks     []importTaskXML `xml:"importSnapshotTaskSet>item"`
}

type importTaskXML struct {
	ID          string                `xml:"importTaskId"`
	Description string                `xml:"description,omitempty"`
	Detail      snapshotTaskDetailXML `xml:"snapshotTaskDetail"`
	Tags        []importTagXML        `xml:"tagSet>item"`
}

type snapshotTaskDetailXML struct {
	Description   string              `xml:"description,omitempty"`
	DiskImageSize string              `xml:"diskImageSize,omitempty"`
	Encrypted     bool                `xml:"encrypted"`
	Format        string              `xml:"format"`
	KMSKeyID      string              `xml:"kmsKeyId,omitempty"`
	Progress      string              `xml:"progress,omitempty"`
	SnapshotID    string              `xml:"snapshotId,omitempty"`
	Status        string              `xml:"status"`
	StatusMessage string              `xml:"statusMessage,omitempty"`
	UserBucket    importUserBucketXML `xml:"userBucket"`
}

type importUserBucketXML struct {
	Bucket string `xml:"s3Bucket"`
	Key    string `xml:"s3Key"`
}

type importTagXML struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type importErrorResponse struct {
	XMLName   xml.Name `xml:"Response"`
	Code      string   `xml:"Errors>Error>Code"`
	Message   string   `xml:"Errors>Error>Message"`
	RequestID string   `xml:"RequestID"`
}

func importWriteXML(w http.ResponseWriter, v any) {
	switch r := v.(type) {
	case importSnapshotResponse:
		r.XMLNS = importXMLNS
		v = r
	case describeImportSnapshotTasksResponse:
		r.XMLNS = importXMLNS
		v = r
	}
	importWriteXMLStatus(w, http.StatusOK, v)
}

func importWriteXMLStatus(w http.ResponseWriter, code int, v any) {
	b, err := xml.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Header().Set("Date", time.Now().UTC().Format(http.TimeFormat))
	w.WriteHeader(code)
	io.WriteString(w, xml.Header)
	w.Write(b)
}

// importError writes an EC2 query-protocol error the SDK decodes into a smithy.APIError.
func importError(w http.ResponseWriter, status int, code, msg string) {
	importWriteXMLStatus(w, status, importErrorResponse{Code: code, Message: msg, RequestID: importHex(8)})
}

func importHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
