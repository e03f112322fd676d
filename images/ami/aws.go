package ami

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/aws/smithy-go"
	"github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/layers/progress"
)

// rootDevice is the AMI's root device: its one block device mapping holds the disk.
const rootDevice = "/dev/xvda"

// Find looks in region for the AMI and the completed snapshot of image img by their
// publication.TagImage tag. state is the AMI's (registered while pending, available, failed),
// else StateSnapshot when only a completed snapshot is there, StateUploading when only an
// unfinished upload is, and "" when nothing is. snapshotID is the tagged snapshot, else the
// one the AMI's root device names (a copy's).
func Find(ctx context.Context, c *awsclient.Clients, region string, img digest.Digest) (imageID, snapshotID string, state publication.State, err error) {
	e := c.EC2(region)
	im, err := findImage(ctx, e, region, img)
	if err != nil {
		return "", "", "", err
	}
	snap, snapState, err := findSnapshot(ctx, e, region, img)
	if err != nil {
		return "", "", "", err
	}
	if im == nil {
		return "", snap, snapState, nil
	}
	if snap == "" || snapState != publication.StateSnapshot {
		snap = rootSnapshot(*im)
	}
	return aws.ToString(im.ImageId), snap, imageState(im.State), nil
}

// findImage returns the best AMI of ours tagged with img in region (available, else pending,
// else failed), or nil.
func findImage(ctx context.Context, e *ec2.Client, region string, img digest.Digest) (*types.Image, error) {
	out, err := e.DescribeImages(ctx, &ec2.DescribeImagesInput{
		Owners:  []string{"self"},
		Filters: []types.Filter{{Name: aws.String("tag:" + publication.TagImage), Values: []string{img.String()}}},
	})
	if err != nil {
		return nil, fmt.Errorf("looking for the AMI of %s in %s (ec2:DescribeImages): %w", img, region, err)
	}
	var best *types.Image
	for i := range out.Images {
		im := &out.Images[i]
		if best == nil || imageRank(im.State) > imageRank(best.State) {
			best = im
		}
	}
	return best, nil
}

func imageRank(s types.ImageState) int {
	switch s {
	case types.ImageStateAvailable:
		return 3
	case types.ImageStatePending:
		return 2
	case types.ImageStateFailed, types.ImageStateError:
		return 1
	}
	return 0
}

func imageState(s types.ImageState) publication.State {
	switch s {
	case types.ImageStateAvailable:
		return publication.StateAvailable
	case types.ImageStatePending:
		return publication.StateRegistered
	}
	return publication.StateFailed
}

// findSnapshot returns our newest snapshot tagged with img in region that is completed
// (StateSnapshot), else one still being written (StateUploading), else "". Snapshots in
// error are left to gc --aws.
func findSnapshot(ctx context.Context, e *ec2.Client, region string, img digest.Digest) (string, publication.State, error) {
	p := ec2.NewDescribeSnapshotsPaginator(e, &ec2.DescribeSnapshotsInput{
		OwnerIds: []string{"self"},
		Filters:  []types.Filter{{Name: aws.String("tag:" + publication.TagImage), Values: []string{img.String()}}},
	})
	var done, writing *types.Snapshot
	newer := func(a, b *types.Snapshot) bool {
		return b == nil || aws.ToTime(a.StartTime).After(aws.ToTime(b.StartTime))
	}
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return "", "", fmt.Errorf("looking for the snapshot of %s in %s (ec2:DescribeSnapshots): %w", img, region, err)
		}
		for i := range out.Snapshots {
			s := &out.Snapshots[i]
			uploading := tagValue(s.Tags, publication.TagState) == publication.TagStateUploading
			switch {
			case s.State == types.SnapshotStateCompleted && !uploading:
				if newer(s, done) {
					done = s
				}
			case s.State == types.SnapshotStatePending || (s.State == types.SnapshotStateCompleted && uploading):
				if newer(s, writing) {
					writing = s
				}
			}
		}
	}
	switch {
	case done != nil:
		return aws.ToString(done.SnapshotId), publication.StateSnapshot, nil
	case writing != nil:
		return aws.ToString(writing.SnapshotId), publication.StateUploading, nil
	}
	return "", "", nil
}

func tagValue(tags []types.Tag, key string) string {
	for _, t := range tags {
		if aws.ToString(t.Key) == key {
			return aws.ToString(t.Value)
		}
	}
	return ""
}

func rootSnapshot(im types.Image) string {
	for _, m := range im.BlockDeviceMappings {
		if aws.ToString(m.DeviceName) == aws.ToString(im.RootDeviceName) && m.Ebs != nil {
			return aws.ToString(m.Ebs.SnapshotId)
		}
	}
	for _, m := range im.BlockDeviceMappings {
		if m.Ebs != nil {
			return aws.ToString(m.Ebs.SnapshotId)
		}
	}
	return ""
}

// ec2Tags returns tags as EC2 tags, by key.
func ec2Tags(tags map[string]string) []types.Tag {
	out := make([]types.Tag, 0, len(tags))
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		out = append(out, types.Tag{Key: aws.String(k), Value: aws.String(tags[k])})
	}
	return out
}

// tagResource puts tags on id. RegisterImage and CopyImage are given the same tags, which AWS
// applies atomically; moto ignores them there, and this makes the AMI findable either way.
func tagResource(ctx context.Context, e *ec2.Client, region, id string, tags map[string]string) error {
	_, err := e.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id}, Tags: ec2Tags(tags)})
	if err != nil {
		return fmt.Errorf("tagging %s in %s (ec2:CreateTags): %w", id, region, err)
	}
	return nil
}

// registration is what RegisterImage is given.
type registration struct {
	Name, Description string
	SnapshotID        string
	VolumeGiB         int64 // 0 = the snapshot's size
	Tags              map[string]string
}

// register makes an AMI of a completed snapshot: x86_64, UEFI boot, ENA, IMDSv2 only, the
// snapshot as the gp3 root volume (deleted with the instance).
func register(ctx context.Context, e *ec2.Client, region string, r registration) (string, error) {
	dev := &types.EbsBlockDevice{
		SnapshotId:          aws.String(r.SnapshotID),
		VolumeType:          types.VolumeTypeGp3,
		DeleteOnTermination: aws.Bool(true),
	}
	if r.VolumeGiB > 0 {
		dev.VolumeSize = aws.Int32(int32(r.VolumeGiB))
	}
	out, err := e.RegisterImage(ctx, &ec2.RegisterImageInput{
		Name:                aws.String(r.Name),
		Description:         aws.String(r.Description),
		Architecture:        types.ArchitectureValuesX8664,
		BootMode:            types.BootModeValuesUefi,
		EnaSupport:          aws.Bool(true),
		ImdsSupport:         types.ImdsSupportValuesV20,
		VirtualizationType:  aws.String("hvm"),
		RootDeviceName:      aws.String(rootDevice),
		BlockDeviceMappings: []types.BlockDeviceMapping{{DeviceName: aws.String(rootDevice), Ebs: dev}},
		TagSpecifications:   []types.TagSpecification{{ResourceType: types.ResourceTypeImage, Tags: ec2Tags(r.Tags)}},
	})
	if err != nil {
		if code(err) == "InvalidAMIName.Duplicate" {
			return "", fmt.Errorf("registering AMI %q in %s: the name is taken by an AMI not tagged with this image (choose another --name-prefix, or deregister it): %w", r.Name, region, err)
		}
		return "", fmt.Errorf("registering AMI %q of snapshot %s in %s (ec2:RegisterImage): %w", r.Name, r.SnapshotID, region, err)
	}
	id := aws.ToString(out.ImageId)
	if err := tagResource(ctx, e, region, id, r.Tags); err != nil {
		return id, err
	}
	return id, nil
}

// copyImage starts copying srcID from srcRegion with dst (a client of the target region). A
// token derived from the image and both regions makes a rerun's request return the copy an
// interrupted run started instead of a second one.
func copyImage(ctx context.Context, dst *ec2.Client, region, srcRegion, srcID, name, description string, encrypted bool, tags map[string]string) (string, error) {
	sum := sha256.Sum256([]byte(tags[publication.TagImage] + "\x00" + srcRegion + "\x00" + srcID + "\x00" + region))
	in := &ec2.CopyImageInput{
		Name:          aws.String(name),
		Description:   aws.String(description),
		SourceImageId: aws.String(srcID),
		SourceRegion:  aws.String(srcRegion),
		ClientToken:   aws.String("imgctl-" + hex.EncodeToString(sum[:24])),
		TagSpecifications: []types.TagSpecification{
			{ResourceType: types.ResourceTypeImage, Tags: ec2Tags(tags)},
			{ResourceType: types.ResourceTypeSnapshot, Tags: ec2Tags(tags)},
		},
	}
	if encrypted {
		// The KMS key of the source region does not exist in another: the copy is encrypted
		// with the target region's default EBS key.
		in.Encrypted = aws.Bool(true)
	}
	out, err := dst.CopyImage(ctx, in)
	if err != nil {
		return "", fmt.Errorf("copying AMI %s from %s to %s (ec2:CopyImage): %w", srcID, srcRegion, region, err)
	}
	id := aws.ToString(out.ImageId)
	if err := tagResource(ctx, dst, region, id, tags); err != nil {
		return id, err
	}
	return id, nil
}

// errWait marks a wait that ran out of time.
var errWait = errors.New("timed out")

// waitImage polls AMI id in region every poll until it is available, for at most wait. It
// returns the AMI's root snapshot. A failed AMI's error carries AWS's reason.
func waitImage(ctx context.Context, e *ec2.Client, region, id string, wait, poll time.Duration) (snapshotID string, err error) {
	step := progress.Start(ctx, "wait for AMI "+id+" in "+region)
	defer func() { step.Done(err) }()
	deadline := time.Now().Add(wait)
	state := "not visible yet"
	for {
		out, err := e.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{id}})
		switch {
		case err != nil && code(err) != "InvalidAMIID.NotFound": // a new AMI may not be listed at once
			return "", fmt.Errorf("waiting for AMI %s in %s (ec2:DescribeImages): %w", id, region, err)
		case err == nil && len(out.Images) == 1:
			im := out.Images[0]
			state = string(im.State)
			switch im.State {
			case types.ImageStateAvailable:
				return rootSnapshot(im), nil
			case types.ImageStatePending:
			default:
				msg := "no reason given"
				if im.StateReason != nil && aws.ToString(im.StateReason.Message) != "" {
					msg = aws.ToString(im.StateReason.Message)
				}
				what := "is " + state
				if im.State == types.ImageStateFailed {
					what = "failed"
				}
				return "", &stateError{region: region, id: id, state: state, msg: fmt.Sprintf("AMI %s in %s %s: %s", id, region, what, msg)}
			}
		}
		if !time.Now().Add(poll).Before(deadline) {
			return "", &stateError{region: region, id: id, state: state, timeout: true,
				msg: fmt.Sprintf("AMI %s in %s is still %s after %s (give it longer with --wait)", id, region, state, wait)}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(poll):
		}
	}
}

// stateError is an AMI that failed or did not become available in time.
type stateError struct {
	region, id, state, msg string
	timeout                bool
}

func (e *stateError) Error() string { return e.msg }

func (e *stateError) Unwrap() error {
	if e.timeout {
		return errWait
	}
	return nil
}

// share gives accounts launch permission on AMI id (and the group "all" if public), and
// accounts permission to create volumes from its snapshot (needed to copy it or launch with
// a changed root volume).
func share(ctx context.Context, e *ec2.Client, region, id, snapshotID string, accounts []string, public bool) error {
	var perms []types.LaunchPermission
	for _, a := range accounts {
		perms = append(perms, types.LaunchPermission{UserId: aws.String(a)})
	}
	if public {
		perms = append(perms, types.LaunchPermission{Group: types.PermissionGroupAll})
	}
	if len(perms) == 0 {
		return nil
	}
	_, err := e.ModifyImageAttribute(ctx, &ec2.ModifyImageAttributeInput{
		ImageId:          aws.String(id),
		LaunchPermission: &types.LaunchPermissionModifications{Add: perms},
	})
	if err != nil {
		return fmt.Errorf("sharing AMI %s in %s (ec2:ModifyImageAttribute launchPermission): %w", id, region, err)
	}
	if len(accounts) == 0 || snapshotID == "" {
		return nil
	}
	_, err = e.ModifySnapshotAttribute(ctx, &ec2.ModifySnapshotAttributeInput{
		SnapshotId:    aws.String(snapshotID),
		Attribute:     types.SnapshotAttributeNameCreateVolumePermission,
		OperationType: types.OperationTypeAdd,
		UserIds:       accounts,
	})
	if err != nil {
		return fmt.Errorf("sharing snapshot %s of AMI %s in %s (ec2:ModifySnapshotAttribute createVolumePermission): %w", snapshotID, id, region, err)
	}
	return nil
}

// putParameter writes name = id, an AMI ID parameter (data type aws:ec2:image, which AWS
// checks names an AMI).
func putParameter(ctx context.Context, s *ssm.Client, region, name, id, description string) error {
	_, err := s.PutParameter(ctx, &ssm.PutParameterInput{
		Name:        aws.String(name),
		Value:       aws.String(id),
		Type:        ssmtypes.ParameterTypeString,
		DataType:    aws.String("aws:ec2:image"),
		Description: aws.String(description),
		Overwrite:   aws.Bool(true),
	})
	if err != nil {
		return fmt.Errorf("writing SSM parameter %s = %s in %s (ssm:PutParameter): %w", name, id, region, err)
	}
	return nil
}

// code is an AWS error's code, or "".
func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}
