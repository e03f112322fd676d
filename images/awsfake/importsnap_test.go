package awsfake

import (
	"context"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// The fake's replies and errors decode in the Go SDK, and its faults show as AWS shows them.
// No upstream: a failed or stuck task never reads S3.
func TestImportSnapshotFaults(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := &ImportSnapshot{FailMessage: "ClientError: Disk validation failed"}
	s := &Server{}
	s.Use(f)
	base, err := s.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := ec2.NewFromConfig(aws.Config{
		Region: "eu-west-1", BaseEndpoint: aws.String(base),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "testing", SecretAccessKey: "testing"}, nil
		}),
	})
	in := &ec2.ImportSnapshotInput{
		DiskContainer: &types.SnapshotDiskContainer{Format: aws.String("RAW"), UserBucket: &types.UserBucket{S3Bucket: aws.String("b"), S3Key: aws.String("k")}},
		Encrypted:     aws.Bool(true), KmsKeyId: aws.String("alias/disks"), Description: aws.String("node"),
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeImportSnapshotTask, Tags: []types.Tag{{Key: aws.String("imgctl:image"), Value: aws.String("sha256:1")}}}},
	}
	out, err := c.ImportSnapshot(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(out.ImportTaskId)
	if d := out.SnapshotTaskDetail; d == nil || aws.ToString(d.Status) != "active" || !aws.ToBool(d.Encrypted) || aws.ToString(d.UserBucket.S3Key) != "k" || len(out.Tags) != 1 {
		t.Fatalf("ImportSnapshot reply %+v", out)
	}
	if r := f.Requests(); len(r) != 1 || r[0].Region != "eu-west-1" || r[0].KMSKeyID != "alias/disks" || r[0].TaskTags["imgctl:image"] != "sha256:1" {
		t.Fatalf("recorded %+v", r)
	}
	status := func() (string, string) {
		t.Helper()
		out, err := c.DescribeImportSnapshotTasks(ctx, &ec2.DescribeImportSnapshotTasksInput{ImportTaskIds: []string{id}})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.ImportSnapshotTasks) != 1 || aws.ToString(out.ImportSnapshotTasks[0].ImportTaskId) != id {
			t.Fatalf("Describe reply %+v", out)
		}
		d := out.ImportSnapshotTasks[0].SnapshotTaskDetail
		return aws.ToString(d.Status), aws.ToString(d.StatusMessage)
	}
	if st, _ := status(); st != "active" {
		t.Fatalf("first Describe: %s", st)
	}
	if st, msg := status(); st != "deleted" || msg != f.FailMessage {
		t.Fatalf("failed task: %s %q", st, msg)
	}

	f.FailMessage, f.Stuck = "", true
	out, err = c.ImportSnapshot(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	id = aws.ToString(out.ImportTaskId)
	for range 3 {
		if st, msg := status(); st != "active" || msg != "pending" {
			t.Fatalf("stuck task: %s %q", st, msg)
		}
	}

	expectError := func(code string, err error) {
		t.Helper()
		var api smithy.APIError
		if !errors.As(err, &api) || api.ErrorCode() != code {
			t.Fatalf("err = %v, want %s", err, code)
		}
	}
	_, err = c.DescribeImportSnapshotTasks(ctx, &ec2.DescribeImportSnapshotTasksInput{ImportTaskIds: []string{"import-snap-0000"}})
	expectError("InvalidConversionTaskId.Malformed", err)
	f.NoRole = true
	_, err = c.ImportSnapshot(ctx, in)
	expectError("InvalidParameter", err)
	f.NoRole = false
	in.DiskContainer.Format = aws.String("VMDK")
	_, err = c.ImportSnapshot(ctx, in)
	expectError("InvalidParameter", err)
}
