// Package importsnap turns a raw disk into an EBS snapshot the way accounts without the EBS
// direct APIs can: an S3 multipart upload of the expanded disk, then EC2 ImportSnapshot,
// waited for. It is the `--method import-snapshot` fallback of `imgctl publish ami`; the
// default, images/ebssnap, is faster and incremental.
package importsnap

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/layers/backoff"
	"github.com/imgctl/imgctl/layers/progress"
)

// Options of Upload.
type Options struct {
	Bucket string // S3 bucket in the upload's region (required); the vmimport role must read it
	Key    string // object key ("" = imgctl/import/TIME-RANDOM.raw)
	// Tags go on the snapshot once the import completed (with publication.TagState set to
	// complete: the snapshot only exists then) and on the import task.
	Tags        map[string]string
	Description string // of the import task and the snapshot ("" = none)
	Encrypted   bool
	KMSKeyID    string // needs Encrypted; "" = the account's default EBS key
	PartSize    int64  // bytes per part (default 8 MiB, at least 5 MiB; raised to fit 10,000 parts)
	Concurrency int    // parts in flight (default 8); memory stays a few KiB per part
	// RequestTimeout bounds each attempt to send a part (default 5 m): a hung request is cut
	// and sent again alone. MaxAttempts bounds the attempts per part (default 8); throttling,
	// 5xx and dropped connections are retried with backoff and jitter, errors that cannot
	// succeed (access denied, a bad request) fail at once.
	RequestTimeout time.Duration
	MaxAttempts    int
	// Wait bounds the wait for the import task (default 45 m); Poll is the interval between
	// DescribeImportSnapshotTasks calls (default 10 s).
	Wait, Poll time.Duration
	Keep       bool // keep the object after the import (default: delete it)
	Logger     *slog.Logger
}

// Result of Upload.
type Result struct {
	SnapshotID string
	Bytes      int64 // uploaded to S3
	Duration   time.Duration
}

// S3's multipart limits.
const (
	minPartSize     = 5 << 20
	defaultPartSize = 8 << 20
	maxParts        = 10000
	maxObject       = 5 << 40
)

// Upload writes the size bytes of disk to s3://Bucket/Key with a multipart upload (parts in
// parallel, each with its sha256; the upload is aborted when anything fails), imports the
// object as a snapshot (format RAW) and waits, at most Wait, for the import task to complete.
// A task that ends in another state fails with its status message. The object is deleted
// afterwards unless Keep, or unless the task may still be reading it (the wait timed out or
// was cancelled; the error then names the object).
func Upload(ctx context.Context, c *awsclient.Clients, region string, disk io.ReaderAt, size int64, o Options) (Result, error) {
	start := time.Now()
	if err := o.check(region, size); err != nil {
		return Result{}, err
	}
	o = o.withDefaults()
	u := &upload{s3: c.S3(region), ec2: c.EC2(region), region: region, disk: disk, size: size, o: o,
		object: "s3://" + o.Bucket + "/" + o.Key, log: o.Logger.With("region", region, "object", "s3://"+o.Bucket+"/"+o.Key)}
	if err := u.multipart(ctx); err != nil {
		return Result{}, err
	}
	snap, keep, err := u.importSnapshot(ctx)
	if !keep && !o.Keep {
		u.deleteObject(ctx)
	}
	if err != nil {
		return Result{}, err
	}
	if err := u.tag(ctx, snap); err != nil {
		return Result{}, err
	}
	return Result{SnapshotID: snap, Bytes: size, Duration: time.Since(start)}, nil
}

func (o Options) check(region string, size int64) error {
	if err := awsclient.CheckRegion(region); err != nil {
		return err
	}
	switch {
	case o.Bucket == "":
		return errors.New("import-snapshot needs an S3 bucket (--s3-bucket) in the region, readable by the vmimport service role")
	case size <= 0:
		return fmt.Errorf("import-snapshot: empty disk (%d bytes)", size)
	case size > maxObject:
		return fmt.Errorf("import-snapshot: the disk's %d bytes exceed S3's 5 TiB object limit", size)
	case o.KMSKeyID != "" && !o.Encrypted:
		return fmt.Errorf("import-snapshot: a KMS key needs Encrypted (--encrypted with --kms-key-id %s)", o.KMSKeyID)
	case o.PartSize != 0 && o.PartSize < minPartSize:
		return fmt.Errorf("import-snapshot: part size %d: S3 parts are at least 5 MiB (%d bytes)", o.PartSize, minPartSize)
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.Key == "" {
		o.Key = "imgctl/import/" + time.Now().UTC().Format("20060102T150405Z") + "-" + randomHex(4) + ".raw"
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.Wait <= 0 {
		o.Wait = 45 * time.Minute
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 5 * time.Minute
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 8
	}
	if o.Poll <= 0 {
		o.Poll = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// partSize is asked (or the default) raised so that size fits in S3's 10,000 parts, rounded
// up to a whole MiB.
func partSize(size, asked int64) int64 {
	ps := asked
	if ps <= 0 {
		ps = defaultPartSize
	}
	if need := (size + maxParts - 1) / maxParts; need > ps {
		ps = (need + 1<<20 - 1) &^ (1<<20 - 1)
	}
	return ps
}

type upload struct {
	s3     *s3.Client
	ec2    *ec2.Client
	region string
	disk   io.ReaderAt
	size   int64
	o      Options
	object string // s3://BUCKET/KEY
	log    *slog.Logger
}

// multipart uploads the disk; on any failure it aborts the multipart upload, so no parts
// are left (and billed) in the bucket.
func (u *upload) multipart(ctx context.Context) (err error) {
	step := progress.Start(ctx, "upload s3 "+u.region)
	step.SetTotal(u.size)
	defer func() { step.Done(err) }()
	created, err := u.s3.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: &u.o.Bucket, Key: &u.o.Key, ChecksumAlgorithm: s3types.ChecksumAlgorithmSha256,
		ContentType: aws.String("application/octet-stream"),
	})
	if err != nil {
		return u.s3Error("CreateMultipartUpload", "s3:PutObject", err)
	}
	id := aws.ToString(created.UploadId)
	ps := partSize(u.size, u.o.PartSize)
	u.log.Info("uploading the disk to S3", "bytes", u.size, "part_size", ps, "upload_id", id)
	parts, err := u.parts(ctx, id, ps, step)
	if err == nil {
		_, err = u.s3.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket: &u.o.Bucket, Key: &u.o.Key, UploadId: &id, MultipartUpload: &s3types.CompletedMultipartUpload{Parts: parts},
		})
		if err != nil {
			err = u.s3Error("CompleteMultipartUpload", "s3:PutObject", err)
		}
	}
	if err != nil {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if _, aerr := u.s3.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: &u.o.Bucket, Key: &u.o.Key, UploadId: &id}); aerr != nil {
			return errors.Join(err, fmt.Errorf("the incomplete upload %s of %s is left in the bucket (remove it, or let a lifecycle rule with AbortIncompleteMultipartUpload do it): %w",
				id, u.object, u.s3Error("AbortMultipartUpload", "s3:AbortMultipartUpload", aerr)))
		}
		u.log.Info("aborted the multipart upload", "upload_id", id)
		return err
	}
	return nil
}

// parts uploads every part, Concurrency at a time; the first failure cancels the others.
func (u *upload) parts(ctx context.Context, id string, ps int64, step *progress.Step) ([]s3types.CompletedPart, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := (u.size + ps - 1) / ps
	parts := make([]s3types.CompletedPart, n)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		sem   = make(chan struct{}, u.o.Concurrency)
	)
	fail := func(err error) {
		once.Do(func() { first = err })
		cancel()
	}
send:
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			fail(ctx.Err())
			break send
		}
		wg.Go(func() {
			defer func() { <-sem }()
			off := i * ps
			ln := min(ps, u.size-off)
			p, err := u.part(ctx, id, int32(i+1), off, ln)
			if err != nil {
				fail(err)
				return
			}
			parts[i] = p
			step.Add(ln, 1)
		})
	}
	wg.Wait()
	return parts, first
}

// part uploads bytes [off, off+ln) as part number num: read once for its sha256, once per
// attempt to send it, so memory does not grow with the part size. Each attempt is bounded by
// RequestTimeout; the SDK's own retries are off here so that a hung attempt is retried too.
func (u *upload) part(ctx context.Context, id string, num int32, off, ln int64) (s3types.CompletedPart, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(u.disk, off, ln)); err != nil {
		return s3types.CompletedPart{}, fmt.Errorf("reading the disk at %d for part %d: %w", off, num, err)
	}
	sum := base64.StdEncoding.EncodeToString(h.Sum(nil))
	op := "UploadPart " + strconv.Itoa(int(num))
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, u.o.RequestTimeout)
		out, err := u.s3.UploadPart(actx, &s3.UploadPartInput{
			Bucket: &u.o.Bucket, Key: &u.o.Key, UploadId: &id, PartNumber: &num,
			Body: io.NewSectionReader(u.disk, off, ln), ContentLength: &ln,
			ChecksumAlgorithm: s3types.ChecksumAlgorithmSha256, ChecksumSHA256: &sum,
		}, func(o *s3.Options) { o.RetryMaxAttempts = 1 })
		hung := actx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil {
			if got := aws.ToString(out.ChecksumSHA256); got != "" && got != sum {
				return s3types.CompletedPart{}, fmt.Errorf("%s of %s: S3 computed sha256 %s, the disk's bytes have %s", op, u.object, got, sum)
			}
			if aws.ToString(out.ETag) == "" {
				err = errors.New("the reply has no ETag")
			} else {
				u.log.Debug("uploaded a part", "part", num, "bytes", ln, "attempts", attempt)
				return s3types.CompletedPart{PartNumber: &num, ETag: out.ETag, ChecksumSHA256: &sum}, nil
			}
		}
		if ctx.Err() != nil {
			return s3types.CompletedPart{}, fmt.Errorf("%s of %s: %w", op, u.object, ctx.Err())
		}
		if hung {
			err = fmt.Errorf("no answer within %s: %w", u.o.RequestTimeout, err)
		}
		if !hung && retryables.IsErrorRetryable(err) != aws.TrueTernary {
			return s3types.CompletedPart{}, u.s3Error(op, "s3:PutObject", err)
		}
		if attempt >= u.o.MaxAttempts {
			return s3types.CompletedPart{}, u.s3Error(fmt.Sprintf("%s (%d attempts)", op, attempt), "s3:PutObject", err)
		}
		wait := backoff.Delay(200*time.Millisecond, 20*time.Second, attempt) // parts throttled together do not come back together
		u.log.Warn("retrying a part", "part", num, "attempt", attempt, "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return s3types.CompletedPart{}, fmt.Errorf("%s of %s: %w", op, u.object, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// retryables are the errors worth sending a part again for: throttling, 5xx, dropped
// connections, as the SDK's standard retryer decides.
var retryables = retry.IsErrorRetryables(retry.DefaultRetryables)

// importSnapshot starts the import and waits for it. keep reports that the object must stay:
// the task may still read it.
func (u *upload) importSnapshot(ctx context.Context) (snap string, keep bool, err error) {
	step := progress.Start(ctx, "import snapshot "+u.region)
	step.SetTotal(100)
	defer func() { step.Done(err) }()
	in := &ec2.ImportSnapshotInput{
		ClientToken: aws.String(randomHex(16)),
		DiskContainer: &ec2types.SnapshotDiskContainer{
			Format:     aws.String("RAW"),
			UserBucket: &ec2types.UserBucket{S3Bucket: &u.o.Bucket, S3Key: &u.o.Key},
		},
	}
	if u.o.Description != "" {
		in.Description, in.DiskContainer.Description = &u.o.Description, &u.o.Description
	}
	if u.o.Encrypted {
		in.Encrypted = aws.Bool(true)
	}
	if u.o.KMSKeyID != "" {
		in.KmsKeyId = &u.o.KMSKeyID
	}
	if len(u.o.Tags) > 0 {
		in.TagSpecifications = []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeImportSnapshotTask, Tags: ec2Tags(u.o.Tags)}}
	}
	out, err := u.ec2.ImportSnapshot(ctx, in)
	if err != nil {
		return "", false, u.ec2Error("ImportSnapshot of "+u.object, "ec2:ImportSnapshot", err)
	}
	id := aws.ToString(out.ImportTaskId)
	u.log.Info("importing the snapshot", "task", id)
	wctx, cancel := context.WithTimeout(ctx, u.o.Wait)
	defer cancel()
	running := func(why error) (string, bool, error) {
		return "", true, fmt.Errorf("import snapshot task %s in %s %w; it may still read %s, which is kept (delete it once the task ended)", id, u.region, why, u.object)
	}
	status, message := "", ""
	for {
		d, err := u.describe(wctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return running(fmt.Errorf("was left: %w", ctx.Err()))
			}
			if wctx.Err() != nil {
				return running(fmt.Errorf("still %s after %s (status message %q)", or(status, "active"), u.o.Wait, message))
			}
			if retryables.IsErrorRetryable(err) != aws.TrueTernary {
				return running(fmt.Errorf("could not be followed: %w", err))
			}
			u.log.Warn("following the import task failed; polling on", "task", id, "err", err)
		} else {
			status, message = aws.ToString(d.Status), aws.ToString(d.StatusMessage)
		}
		switch {
		case d == nil: // a poll that failed for now: the next one may not
		case status == "completed":
			if d.SnapshotId == nil || *d.SnapshotId == "" {
				return "", false, fmt.Errorf("import snapshot task %s in %s completed without a snapshot ID", id, u.region)
			}
			u.log.Info("imported the snapshot", "task", id, "snapshot", *d.SnapshotId)
			return *d.SnapshotId, false, nil
		case status == "active" || status == "pending":
			if p, err := strconv.ParseInt(aws.ToString(d.Progress), 10, 64); err == nil {
				step.Set(p, 0)
			}
			u.log.Debug("import task running", "task", id, "progress", aws.ToString(d.Progress), "message", message)
		default:
			err := fmt.Errorf("import snapshot task %s in %s ended %s: %s", id, u.region, or(status, "without a status"), or(message, "(no status message)"))
			if mentionsRole(message) {
				err = fmt.Errorf("%w; %s", err, roleHint(u.o.Bucket))
			}
			return "", false, err
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return running(fmt.Errorf("was left: %w", ctx.Err()))
			}
			return running(fmt.Errorf("still %s after %s (status message %q)", or(status, "active"), u.o.Wait, message))
		case <-time.After(u.o.Poll):
		}
	}
}

func (u *upload) describe(ctx context.Context, id string) (*ec2types.SnapshotTaskDetail, error) {
	out, err := u.ec2.DescribeImportSnapshotTasks(ctx, &ec2.DescribeImportSnapshotTasksInput{ImportTaskIds: []string{id}})
	if err != nil {
		return nil, u.ec2Error("DescribeImportSnapshotTasks "+id, "ec2:DescribeImportSnapshotTasks", err)
	}
	for _, t := range out.ImportSnapshotTasks {
		if aws.ToString(t.ImportTaskId) == id && t.SnapshotTaskDetail != nil {
			return t.SnapshotTaskDetail, nil
		}
	}
	return nil, fmt.Errorf("DescribeImportSnapshotTasks %s in %s: the task is not in the reply", id, u.region)
}

// tag puts Tags on the imported snapshot, marked complete.
func (u *upload) tag(ctx context.Context, snap string) error {
	tags := maps.Clone(u.o.Tags)
	if tags == nil {
		tags = map[string]string{}
	}
	tags[publication.TagState] = publication.TagStateComplete
	if _, err := u.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{snap}, Tags: ec2Tags(tags)}); err != nil {
		return u.ec2Error("CreateTags on snapshot "+snap+" (imported, but untagged: imgctl will not find it)", "ec2:CreateTags", err)
	}
	return nil
}

// deleteObject removes the uploaded object; the snapshot does not need it. A failure is
// logged, not returned: the work is done, and the object names itself in the log.
func (u *upload) deleteObject(ctx context.Context) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if _, err := u.s3.DeleteObject(dctx, &s3.DeleteObjectInput{Bucket: &u.o.Bucket, Key: &u.o.Key}); err != nil {
		u.log.Warn("could not delete the uploaded disk; delete it by hand", "err", u.s3Error("DeleteObject", "s3:DeleteObject", err))
		return
	}
	u.log.Debug("deleted the uploaded disk")
}

func ec2Tags(m map[string]string) []ec2types.Tag {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	tags := make([]ec2types.Tag, 0, len(keys))
	for _, k := range keys {
		tags = append(tags, ec2types.Tag{Key: aws.String(k), Value: aws.String(m[k])})
	}
	return tags
}

// accessDenied reports whether err is AWS refusing the caller a permission.
func accessDenied(err error) bool {
	var api smithy.APIError
	if !errors.As(err, &api) {
		return false
	}
	switch api.ErrorCode() {
	case "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Forbidden", "AllAccessDisabled":
		return true
	}
	return false
}

func (u *upload) s3Error(op, action string, err error) error {
	var api smithy.APIError
	switch {
	case accessDenied(err):
		return fmt.Errorf("%s of %s: access denied (the caller needs %s on the bucket): %w", op, u.object, action, err)
	case errors.As(err, &api) && api.ErrorCode() == "NoSuchBucket":
		return fmt.Errorf("%s of %s: bucket %s does not exist (create it in %s, or name another with --s3-bucket): %w", op, u.object, u.o.Bucket, u.region, err)
	}
	return fmt.Errorf("%s of %s: %w", op, u.object, err)
}

func (u *upload) ec2Error(op, action string, err error) error {
	var api smithy.APIError
	switch {
	case accessDenied(err):
		return fmt.Errorf("%s in %s: access denied (the caller needs %s): %w", op, u.region, action, err)
	case errors.As(err, &api) && mentionsRole(api.ErrorMessage()):
		return fmt.Errorf("%s in %s: %w; %s", op, u.region, err, roleHint(u.o.Bucket))
	}
	return fmt.Errorf("%s in %s: %w", op, u.region, err)
}

// mentionsRole reports whether an AWS message is about ImportSnapshot's service role.
func mentionsRole(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "vmimport") || strings.Contains(m, "service role")
}

func roleHint(bucket string) string {
	return "ImportSnapshot runs as the service role vmimport: an IAM role named vmimport that vmie.amazonaws.com may assume " +
		"(trust policy condition sts:Externalid = vmimport), allowed s3:GetBucketLocation, s3:GetObject and s3:ListBucket on bucket " + bucket +
		" (and kms:CreateGrant, kms:Decrypt, kms:DescribeKey, kms:Encrypt, kms:GenerateDataKey*, kms:ReEncrypt* on the KMS key when encrypting); " +
		"see https://docs.aws.amazon.com/vm-import/latest/userguide/required-permissions.html"
}

func or(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	crand.Read(b)
	return hex.EncodeToString(b)
}
