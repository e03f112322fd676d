package ami

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store"
)

// UnpublishedMessage is the message of a region's entry in the record Unpublish stores.
const UnpublishedMessage = "unpublished: the AMI and its snapshot were removed"

// Unpublish removes, in each of regions, what publishing img made there: every AMI tagged
// with the image (deregistered), every snapshot tagged with it or backing such an AMI
// (deleted), and the version parameters (PREFIX/VERSION/image_id, under the prefixes of the
// image's records) that name one of those AMIs. Tags find what an interrupted Publish made
// before it could record it, too. It then stores the image's newest record with those
// regions' entries failed, without AMI, and with UnpublishedMessage. Regions with nothing of the image are
// fine: unpublishing twice is unpublishing once. This undoes a publication that must not
// stay, such as that of a failed or cancelled build.
func Unpublish(ctx context.Context, st *store.Store, img store.Image, c *awsclient.Clients, regions []string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	recs, err := publication.List(ctx, st, img.Digest())
	if err != nil {
		return err
	}
	_, prefixes := publication.Places(recs)
	var params []string
	for _, p := range prefixes {
		name, err := publication.VersionParameter(p, img.Config.Version)
		if err != nil {
			return err
		}
		params = append(params, name)
	}
	var errs []error
	var done []string
	for _, r := range slices.Compact(slices.Sorted(slices.Values(regions))) {
		if err := unpublishRegion(ctx, c, r, img, params, log); err != nil {
			errs = append(errs, err)
			continue
		}
		done = append(done, r)
	}
	if len(recs) > 0 && len(done) > 0 {
		errs = append(errs, withoutRegions(ctx, st, recs[0], done))
	}
	return errors.Join(errs...)
}

// unpublishRegion removes img's AMIs, their snapshots and their version parameters in region.
func unpublishRegion(ctx context.Context, c *awsclient.Clients, region string, img store.Image, params []string, log *slog.Logger) error {
	e := c.EC2(region)
	tag := []types.Filter{{Name: aws.String("tag:" + publication.TagImage), Values: []string{img.Digest().String()}}}
	ims, err := e.DescribeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"}, Filters: tag})
	if err != nil {
		return fmt.Errorf("looking for the AMIs of %s in %s (ec2:DescribeImages): %w", img.Digest(), region, err)
	}
	var amis, snaps []string
	for _, im := range ims.Images {
		id := aws.ToString(im.ImageId)
		if _, err := e.DeregisterImage(ctx, &ec2.DeregisterImageInput{ImageId: aws.String(id)}); err != nil && code(err) != "InvalidAMIID.NotFound" && code(err) != "InvalidAMIID.Unavailable" {
			return fmt.Errorf("deregistering AMI %s in %s (ec2:DeregisterImage): %w", id, region, err)
		}
		log.Info("deregistered AMI", "region", region, "ami", id)
		amis = append(amis, id)
		if s := rootSnapshot(im); s != "" {
			snaps = append(snaps, s)
		}
	}
	p := ec2.NewDescribeSnapshotsPaginator(e, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}, Filters: tag})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("looking for the snapshots of %s in %s (ec2:DescribeSnapshots): %w", img.Digest(), region, err)
		}
		for _, s := range out.Snapshots {
			snaps = append(snaps, aws.ToString(s.SnapshotId))
		}
	}
	for _, id := range slices.Compact(slices.Sorted(slices.Values(snaps))) {
		if _, err := e.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String(id)}); err != nil && code(err) != "InvalidSnapshot.NotFound" {
			return fmt.Errorf("deleting snapshot %s in %s (ec2:DeleteSnapshot): %w", id, region, err)
		}
		log.Info("deleted snapshot", "region", region, "snapshot", id)
	}
	s := c.SSM(region)
	for _, name := range params {
		out, err := s.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(name)})
		var nf *ssmtypes.ParameterNotFound
		switch {
		case errors.As(err, &nf):
			continue
		case err != nil:
			return fmt.Errorf("reading SSM parameter %s in %s (ssm:GetParameter): %w", name, region, err)
		case out.Parameter == nil || !slices.Contains(amis, aws.ToString(out.Parameter.Value)):
			continue // names another AMI: not this publication's
		}
		if _, err := s.DeleteParameter(ctx, &ssm.DeleteParameterInput{Name: aws.String(name)}); err != nil && !errors.As(err, &nf) {
			return fmt.Errorf("deleting SSM parameter %s in %s (ssm:DeleteParameter): %w", name, region, err)
		}
		log.Info("deleted version parameter", "region", region, "parameter", name)
	}
	return nil
}

// withoutRegions stores rec with the regions removed marked so: failed, without AMI,
// snapshot or parameter, and UnpublishedMessage (the newest record covering a region is what
// readers go by, so the region must stay in it). Without the upload region, the record has no
// snapshot.
func withoutRegions(ctx context.Context, st *store.Store, rec publication.Record, removed []string) error {
	if err := publication.LoadHashes(ctx, st, &rec); err != nil {
		rec.Hashes = nil
	}
	regions := slices.Clone(rec.Regions)
	if len(regions) == 0 { // recorded before any AMI: the upload alone
		regions = []publication.Region{{Region: rec.Region, State: rec.State}}
	}
	for i, g := range regions {
		if slices.Contains(removed, g.Region) {
			regions[i] = publication.Region{Region: g.Region, State: publication.StateFailed, Message: g.Region + ": " + UnpublishedMessage}
		}
	}
	if slices.Contains(removed, rec.Region) {
		rec.Snapshot, rec.Hashes = publication.Snapshot{}, nil
	}
	rec.Regions = regions
	rec.State, rec.Message = overall(regions), ""
	for _, g := range regions {
		if g.Message != "" {
			rec.Message = g.Message
			break
		}
	}
	rec.Published = time.Now().UTC()
	_, err := publication.Put(ctx, st, rec)
	return err
}
