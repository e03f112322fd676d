// Package awsgc removes what imgctl left on AWS that nothing needs any more: the AMIs and
// snapshots of images no longer in the store, and uploads that never completed. It touches only
// resources tagged publication.TagImage, and never an AMI that an SSM parameter under one of the
// given prefixes names (a channel: launch templates resolve it).
package awsgc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/aws/smithy-go"
	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/publication"
)

// Options say where to look and what to keep.
type Options struct {
	// Regions to clean (each once).
	Regions []string
	// Keep reports whether the image with this manifest digest is still needed (in the store):
	// its AMIs and completed snapshots stay. Required.
	Keep func(digest.Digest) bool
	// OlderThan spares every resource created less than OlderThan before Now: an upload or a
	// publication may be under way.
	OlderThan time.Duration
	// SSMPrefixes are searched (recursively) in each region for parameters named
	// .../image_id: an AMI one of them names is never deregistered, except by the version
	// parameter of its own publication (PREFIX/VERSION/image_id, VERSION its imgctl:version
	// tag), which is deleted with it.
	SSMPrefixes []string
	// DryRun reports what would be removed and removes nothing.
	DryRun bool
	// Now is the clock (time.Now if nil).
	Now    func() time.Time
	Logger *slog.Logger
}

// Resource is one AMI, snapshot or SSM parameter.
type Resource struct {
	Region string        `json:"region"`
	ID     string        `json:"id"`              // ami-…, snap-…, or the parameter's name
	Image  digest.Digest `json:"image,omitempty"` // its imgctl:image tag
	Reason string        `json:"reason"`          // why it was removed or kept
}

// Report is what Collect removed (with DryRun: would remove) and how many tagged resources it
// kept.
type Report struct {
	DeregisteredImages []Resource `json:"deregisteredImages"`
	DeletedSnapshots   []Resource `json:"deletedSnapshots"`
	DeletedParameters  []Resource `json:"deletedParameters"`
	Kept               int        `json:"kept"`
}

// Why resources are removed.
const (
	ReasonRemoved   = "image not in the store"
	ReasonUploading = "upload never completed"
	ReasonError     = "snapshot in error state"
	ReasonVersion   = "version parameter of a deregistered AMI"
)

// Collect removes, in each region of o.Regions, the AMIs tagged imgctl:image of images that
// o.Keep refuses and that are older than o.OlderThan (unless an SSM parameter names them), then
// the snapshots tagged imgctl:image of such images that no remaining AMI uses, and the
// snapshots whose upload never completed (tagged imgctl:state=uploading, or in state error)
// older than o.OlderThan. Untagged resources are never touched. A failure to remove one
// resource does not stop the others: the errors are returned together with the report of what
// was done.
func Collect(ctx context.Context, c *awsclient.Clients, o Options) (Report, error) {
	if o.Keep == nil {
		return Report{}, errors.New("AWS garbage collection: no Keep function (which images are still in the store)")
	}
	if o.OlderThan < 0 {
		return Report{}, fmt.Errorf("AWS garbage collection: OlderThan %s must not be negative", o.OlderThan)
	}
	for _, p := range o.SSMPrefixes {
		if err := publication.CheckSSMPrefix(p); err != nil {
			return Report{}, fmt.Errorf("AWS garbage collection: %w", err)
		}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var rep Report
	var errs []error
	seen := map[string]bool{}
	for _, r := range o.Regions {
		if seen[r] {
			continue
		}
		seen[r] = true
		if err := awsclient.CheckRegion(r); err != nil {
			return rep, fmt.Errorf("AWS garbage collection: %w", err)
		}
		g := &regionGC{o: o, region: r, ec2: c.EC2(r), ssm: c.SSM(r), cutoff: o.Now().Add(-o.OlderThan), rep: &rep}
		if err := g.run(ctx); err != nil {
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			errs = append(errs, fmt.Errorf("AWS garbage collection in %s: %w", r, err))
		}
	}
	return rep, errors.Join(errs...)
}

// regionGC is the collection of one region.
type regionGC struct {
	o      Options
	region string
	ec2    *ec2.Client
	ssm    *ssm.Client
	cutoff time.Time
	rep    *Report
	errs   []error
}

func (g *regionGC) run(ctx context.Context) error {
	params, err := g.parameters(ctx)
	if err != nil {
		return err
	}
	images, err := g.images(ctx)
	if err != nil {
		return err
	}
	// The snapshots every AMI that stays uses; of those that go, the snapshots to delete.
	used := map[string]bool{}
	var gone []ec2types.Image
	for _, im := range images {
		id, d := aws.ToString(im.ImageId), tagDigest(im.Tags)
		reason, remove := g.judgeImage(im, d, params)
		log := g.o.Logger.With("region", g.region, "ami", id, "image", d, "reason", reason)
		if !remove {
			log.Debug("AWS garbage collection: keeping AMI")
			g.rep.Kept++
			for _, s := range snapshotsOf(im) {
				used[s] = true
			}
			continue
		}
		log.Info("AWS garbage collection: deregistering AMI", "dryRun", g.o.DryRun)
		if !g.o.DryRun {
			_, err := g.ec2.DeregisterImage(ctx, &ec2.DeregisterImageInput{ImageId: im.ImageId})
			if err != nil && !isCode(err, "InvalidAMIID.NotFound", "InvalidAMIID.Unavailable") {
				g.fail(fmt.Errorf("deregistering %s: %w", id, err))
				g.rep.Kept++
				for _, s := range snapshotsOf(im) {
					used[s] = true
				}
				continue
			}
		}
		g.rep.DeregisteredImages = append(g.rep.DeregisteredImages, Resource{Region: g.region, ID: id, Image: d, Reason: reason})
		gone = append(gone, im)
		for _, p := range g.ownParameters(im, params) {
			g.deleteParameter(ctx, p, id, d)
		}
	}

	snaps, err := g.snapshots(ctx, &ec2.DescribeSnapshotsInput{
		OwnerIds: []string{"self"},
		Filters:  []ec2types.Filter{{Name: aws.String("tag-key"), Values: []string{publication.TagImage}}},
	})
	if err != nil {
		return err
	}
	done := map[string]bool{}
	for _, s := range snaps {
		id := aws.ToString(s.SnapshotId)
		done[id] = true
		d := tagDigest(s.Tags)
		reason, remove := g.judgeSnapshot(s, d, used[id])
		if !remove {
			g.o.Logger.Debug("AWS garbage collection: keeping snapshot", "region", g.region, "snapshot", id, "image", d, "reason", reason)
			g.rep.Kept++
			continue
		}
		g.deleteSnapshot(ctx, id, d, reason)
	}
	// The snapshots of deregistered AMIs not tagged imgctl:image: the copies' snapshots, which
	// AWS names in their description ("Copied for DestinationAmi ami-…").
	for _, im := range gone {
		id, d := aws.ToString(im.ImageId), tagDigest(im.Tags)
		var ids []string
		for _, s := range snapshotsOf(im) {
			if !done[s] && !used[s] {
				ids = append(ids, s)
			}
		}
		if len(ids) == 0 {
			continue
		}
		mapped, err := g.snapshots(ctx, &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}, SnapshotIds: ids})
		if err != nil && !isCode(err, "InvalidSnapshot.NotFound") {
			g.fail(fmt.Errorf("describing the snapshots of %s: %w", id, err))
			continue
		}
		for _, s := range mapped {
			sid := aws.ToString(s.SnapshotId)
			if done[sid] || !strings.Contains(aws.ToString(s.Description), id) {
				continue
			}
			done[sid] = true
			g.deleteSnapshot(ctx, sid, d, "snapshot of deregistered AMI "+id)
		}
	}
	return errors.Join(g.errs...)
}

func (g *regionGC) fail(err error) {
	g.o.Logger.Warn("AWS garbage collection", "region", g.region, "err", err)
	g.errs = append(g.errs, err)
}

// judgeImage says whether AMI im, of image d, goes, and why (or why not).
func (g *regionGC) judgeImage(im ec2types.Image, d digest.Digest, params map[string][]string) (string, bool) {
	switch {
	case d == "":
		return "its imgctl:image tag is not a digest", false
	case g.o.Keep(d):
		return "image in the store", false
	}
	created, err := time.Parse(time.RFC3339, aws.ToString(im.CreationDate))
	if err != nil {
		return fmt.Sprintf("creation date %q unreadable", aws.ToString(im.CreationDate)), false
	}
	if !created.Before(g.cutoff) {
		return "younger than the cutoff", false
	}
	own := g.ownParameters(im, params)
	for _, p := range params[aws.ToString(im.ImageId)] {
		if !slices.Contains(own, p) {
			return "named by SSM parameter " + p, false
		}
	}
	return ReasonRemoved, true
}

// judgeSnapshot says whether snapshot s, of image d, goes; used: an AMI that stays uses it.
func (g *regionGC) judgeSnapshot(s ec2types.Snapshot, d digest.Digest, used bool) (string, bool) {
	switch {
	case used:
		return "used by an AMI that stays", false
	case s.StartTime == nil || !s.StartTime.Before(g.cutoff):
		return "younger than the cutoff", false
	case s.State == ec2types.SnapshotStateError:
		return ReasonError + ": " + aws.ToString(s.StateMessage), true
	case tagValue(s.Tags, publication.TagState) == publication.TagStateUploading:
		return ReasonUploading, true
	case d == "":
		return "its imgctl:image tag is not a digest", false
	case g.o.Keep(d):
		return "image in the store", false
	}
	return ReasonRemoved, true
}

func (g *regionGC) deleteSnapshot(ctx context.Context, id string, d digest.Digest, reason string) {
	g.o.Logger.Info("AWS garbage collection: deleting snapshot", "region", g.region, "snapshot", id, "image", d, "reason", reason, "dryRun", g.o.DryRun)
	if !g.o.DryRun {
		_, err := g.ec2.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: aws.String(id)})
		if err != nil && !isCode(err, "InvalidSnapshot.NotFound") {
			g.fail(fmt.Errorf("deleting snapshot %s: %w", id, err))
			g.rep.Kept++
			return
		}
	}
	g.rep.DeletedSnapshots = append(g.rep.DeletedSnapshots, Resource{Region: g.region, ID: id, Image: d, Reason: reason})
}

func (g *regionGC) deleteParameter(ctx context.Context, name, ami string, d digest.Digest) {
	g.o.Logger.Info("AWS garbage collection: deleting version parameter", "region", g.region, "parameter", name, "ami", ami, "dryRun", g.o.DryRun)
	if !g.o.DryRun {
		_, err := g.ssm.DeleteParameter(ctx, &ssm.DeleteParameterInput{Name: aws.String(name)})
		var nf *ssmtypes.ParameterNotFound
		if err != nil && !errors.As(err, &nf) {
			g.fail(fmt.Errorf("deleting SSM parameter %s: %w", name, err))
			return
		}
	}
	g.rep.DeletedParameters = append(g.rep.DeletedParameters, Resource{Region: g.region, ID: name, Image: d, Reason: ReasonVersion})
}

// ownParameters are the parameters of params naming im that are its publication's version
// parameter: PREFIX/VERSION/image_id for a searched PREFIX and its imgctl:version tag.
func (g *regionGC) ownParameters(im ec2types.Image, params map[string][]string) []string {
	v := tagValue(im.Tags, publication.TagVersion)
	if v == "" {
		return nil
	}
	var out []string
	for _, p := range params[aws.ToString(im.ImageId)] {
		for _, prefix := range g.o.SSMPrefixes {
			if want, err := publication.VersionParameter(prefix, v); err == nil && p == want {
				out = append(out, p)
			}
		}
	}
	return out
}

// parameters maps each AMI ID that a parameter .../image_id under o.SSMPrefixes names to those
// parameters' names.
func (g *regionGC) parameters(ctx context.Context) (map[string][]string, error) {
	out := map[string][]string{}
	for _, prefix := range g.o.SSMPrefixes {
		p := ssm.NewGetParametersByPathPaginator(g.ssm, &ssm.GetParametersByPathInput{Path: aws.String(prefix), Recursive: aws.Bool(true)})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return nil, fmt.Errorf("listing SSM parameters under %s (needs ssm:GetParametersByPath): %w", prefix, err)
			}
			for _, prm := range page.Parameters {
				name := aws.ToString(prm.Name)
				if strings.HasSuffix(name, "/image_id") {
					v := aws.ToString(prm.Value)
					if !slices.Contains(out[v], name) {
						out[v] = append(out[v], name)
					}
				}
			}
		}
	}
	return out, nil
}

// images lists the AMIs this account owns tagged imgctl:image.
func (g *regionGC) images(ctx context.Context) ([]ec2types.Image, error) {
	var out []ec2types.Image
	p := ec2.NewDescribeImagesPaginator(g.ec2, &ec2.DescribeImagesInput{
		Owners:  []string{"self"},
		Filters: []ec2types.Filter{{Name: aws.String("tag-key"), Values: []string{publication.TagImage}}},
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing AMIs tagged %s (needs ec2:DescribeImages): %w", publication.TagImage, err)
		}
		out = append(out, page.Images...)
	}
	return out, nil
}

func (g *regionGC) snapshots(ctx context.Context, in *ec2.DescribeSnapshotsInput) ([]ec2types.Snapshot, error) {
	var out []ec2types.Snapshot
	p := ec2.NewDescribeSnapshotsPaginator(g.ec2, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing snapshots (needs ec2:DescribeSnapshots): %w", err)
		}
		out = append(out, page.Snapshots...)
	}
	return out, nil
}

// snapshotsOf are the snapshots AMI im's block device mappings name.
func snapshotsOf(im ec2types.Image) []string {
	var out []string
	for _, m := range im.BlockDeviceMappings {
		if m.Ebs != nil && m.Ebs.SnapshotId != nil {
			out = append(out, *m.Ebs.SnapshotId)
		}
	}
	return out
}

func tagValue(tags []ec2types.Tag, key string) string {
	for _, t := range tags {
		if aws.ToString(t.Key) == key {
			return aws.ToString(t.Value)
		}
	}
	return ""
}

// tagDigest is the imgctl:image tag's digest, "" when it is not one.
func tagDigest(tags []ec2types.Tag) digest.Digest {
	d, err := digest.Parse(tagValue(tags, publication.TagImage))
	if err != nil {
		return ""
	}
	return d
}

func isCode(err error, codes ...string) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && slices.Contains(codes, ae.ErrorCode())
}
