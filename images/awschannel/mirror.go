package awschannel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store"
)

// Refusals of Mirror.Prepare (test with errors.Is).
var (
	// ErrNotPublished: the image has no AMI in some of the settings' regions.
	ErrNotPublished = errors.New("image is not published")
	// ErrNotReady: the image's AMI is not available, or not shared as the settings promise.
	ErrNotReady = errors.New("AMI is not ready")
	// ErrParameterChanged: a channel parameter does not hold what the channel's history says
	// (someone else wrote it); Force overwrites it.
	ErrParameterChanged = errors.New("channel parameter was changed outside imgctl")
)

// Mirror mirrors a store's channels to AWS as SSM parameters (a channel.Mirror): for channel
// CH, PREFIX/CH/image_id in every settings region names the AMI, in that region, of the image
// CH points to. The AMIs of an image are those its publication records name.
type Mirror struct {
	Store    *store.Store
	Settings Settings
	Clients  *awsclient.Clients
	// Force overwrites a parameter that holds neither the AMI of the image the channel pointed
	// to nor that of its new image (someone else's value), with a warning.
	Force  bool
	Logger *slog.Logger // nil: discard
}

var _ channel.Mirror = (*Mirror)(nil)

// regionPlan is what Prepare found in one region.
type regionPlan struct {
	region  string
	ami     string // the new image's AMI there ("" = not published there)
	from    string // the AMI of the image the channel points to now ("" = none)
	current string // the parameter's value ("" = absent)
	problem error
}

// Prepare implements channel.Mirror. It refuses the move of channel ch from image from to
// image to unless, in every settings region, to has an AMI (from its publication records)
// that DescribeImages reports available and whose launch permissions include every
// Settings.Share account, and the channel parameter holds the AMI of from there (or is
// absent when from had none), or already that of to (a rerun after a half-done commit).
// A parameter holding anything else is someone else's write: refused, unless Force. All
// regions are checked; the error names each refused region, the parameter, its value and the
// expected one. The returned commit writes the parameters that differ.
func (m *Mirror) Prepare(ctx context.Context, ch string, from digest.Digest, to store.Image) (func(context.Context) error, error) {
	if err := m.Settings.Check(); err != nil {
		return nil, fmt.Errorf("AWS settings: %w", err)
	}
	param, err := publication.ChannelParameter(m.Settings.SSMPrefix, ch)
	if err != nil {
		return nil, err
	}
	plans := make([]regionPlan, len(m.Settings.Regions))
	var wg sync.WaitGroup
	for i, r := range m.Settings.Regions {
		wg.Go(func() { plans[i] = m.plan(ctx, r, param, from, to) })
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	var missing []string
	var problems []error
	for _, p := range plans {
		switch {
		case p.problem != nil:
			problems = append(problems, p.problem)
		case p.ami == "":
			missing = append(missing, p.region)
		}
	}
	if len(missing) > 0 {
		problems = append([]error{fmt.Errorf("%w in %s (the store's AWS settings promise %s): publish it there (%s)",
			ErrNotPublished, strings.Join(missing, ", "), strings.Join(m.Settings.Regions, ", "), m.publishCommand(to))}, problems...)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("channel %s on AWS (%s): %w", ch, param, errors.Join(problems...))
	}
	return func(ctx context.Context) error { return m.commit(ctx, ch, param, to, plans) }, nil
}

// publishCommand is the command that publishes img as the settings promise.
func (m *Mirror) publishCommand(img store.Image) string {
	c := "imgctl publish ami " + img.Digest().String() + " --region " + m.Settings.Regions[0]
	if len(m.Settings.Regions) > 1 {
		c += " --copy-to " + strings.Join(m.Settings.Regions[1:], ",")
	}
	if len(m.Settings.Share) > 0 {
		c += " --share " + strings.Join(m.Settings.Share, ",")
	}
	return c
}

// plan checks one region for Prepare.
func (m *Mirror) plan(ctx context.Context, region, param string, from digest.Digest, to store.Image) regionPlan {
	p := regionPlan{region: region}
	fail := func(err error) regionPlan {
		p.problem = fmt.Errorf("%s: %w", region, err)
		return p
	}
	var err error
	if p.ami, err = m.amiOf(ctx, to.Digest(), region); err != nil {
		return fail(err)
	}
	if p.ami == "" {
		return p
	}
	if err := m.ready(ctx, to, region, p.ami); err != nil {
		return fail(err)
	}
	if from != "" {
		if p.from, err = m.amiOf(ctx, from, region); err != nil {
			return fail(err)
		}
	}
	if p.current, err = getParameter(ctx, m.Clients.SSM(region), param); err != nil {
		return fail(err)
	}
	if p.current == p.ami || p.current == p.from {
		return p
	}
	expected := "absent (the channel had no image with an AMI there)"
	if p.from != "" {
		expected = fmt.Sprintf("%s (the AMI of %s, the channel's image)", p.from, from)
	}
	if !m.Force {
		return fail(fmt.Errorf("%w: %s holds %s, expected %s or %s (the new image's AMI): check who wrote it, then rerun with --force to overwrite",
			ErrParameterChanged, param, p.current, expected, p.ami))
	}
	m.logger().Warn("forced: overwriting a channel parameter someone else changed", "region", region, "parameter", param,
		"value", p.current, "expected", expected, "new", p.ami)
	return p
}

// amiOf is the AMI of image img in region according to its newest publication record there
// ("" if none names one).
func (m *Mirror) amiOf(ctx context.Context, img digest.Digest, region string) (string, error) {
	r, err := publication.Latest(ctx, m.Store, img, region)
	if err != nil {
		return "", fmt.Errorf("publication records of %s: %w", img, err)
	}
	if r == nil {
		return "", nil
	}
	g, _ := r.RegionState(region)
	return g.ImageID, nil
}

// ready checks that AMI id in region is available and launchable by every Settings.Share
// account (or public).
func (m *Mirror) ready(ctx context.Context, img store.Image, region, id string) error {
	c := m.Clients.EC2(region)
	out, err := c.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{id}})
	if err != nil {
		return fmt.Errorf("describing AMI %s: %w", id, err)
	}
	if len(out.Images) != 1 {
		return fmt.Errorf("%w: AMI %s, named by the image's publication record, does not exist", ErrNotReady, id)
	}
	im := out.Images[0]
	if im.State != ec2types.ImageStateAvailable {
		why := ""
		if im.StateReason != nil && aws.ToString(im.StateReason.Message) != "" {
			why = ": " + aws.ToString(im.StateReason.Message)
		}
		return fmt.Errorf("%w: AMI %s is %s, not available%s (promote once it is: imgctl publish ami waits for it)", ErrNotReady, id, im.State, why)
	}
	if len(m.Settings.Share) == 0 {
		return nil
	}
	attr, err := c.DescribeImageAttribute(ctx, &ec2.DescribeImageAttributeInput{ImageId: aws.String(id), Attribute: ec2types.ImageAttributeNameLaunchPermission})
	if err != nil {
		return fmt.Errorf("reading the launch permissions of AMI %s: %w", id, err)
	}
	var granted []string
	for _, lp := range attr.LaunchPermissions {
		if lp.Group == ec2types.PermissionGroupAll {
			return nil
		}
		granted = append(granted, aws.ToString(lp.UserId))
	}
	var unshared []string
	for _, a := range m.Settings.Share {
		if !slices.Contains(granted, a) {
			unshared = append(unshared, a)
		}
	}
	if len(unshared) > 0 {
		return fmt.Errorf("%w: AMI %s is not shared with %s (%s shares it)", ErrNotReady, id,
			strings.Join(unshared, ", "), m.publishCommand(img))
	}
	return nil
}

// commit writes the channel parameter in each region whose value differs from the new AMI. A
// parameter that changed since Prepare read it is not overwritten (unless Force). Every region
// is tried; the error names each that failed.
func (m *Mirror) commit(ctx context.Context, ch, param string, to store.Image, plans []regionPlan) error {
	errs := make([]error, len(plans))
	var wg sync.WaitGroup
	for i, p := range plans {
		if p.current == p.ami {
			m.logger().Info("channel parameter already names the AMI", "region", p.region, "parameter", param, "ami", p.ami)
			continue
		}
		wg.Go(func() {
			if err := m.write(ctx, ch, param, to, p); err != nil {
				errs[i] = fmt.Errorf("%s: %w", p.region, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("writing %s: %w", param, err)
	}
	return nil
}

func (m *Mirror) write(ctx context.Context, ch, param string, to store.Image, p regionPlan) error {
	c := m.Clients.SSM(p.region)
	now, err := getParameter(ctx, c, param)
	if err != nil {
		return err
	}
	if now != p.current && now != p.ami && !m.Force {
		return fmt.Errorf("%w: %s changed to %s while the channel moved (it held %s)", ErrParameterChanged, param, orAbsent(now), orAbsent(p.current))
	}
	desc := fmt.Sprintf("imgctl channel %s: image %s", ch, to.Digest())
	if v := to.Config.Version; v != "" {
		desc += " (" + v + ")"
	}
	_, err = c.PutParameter(ctx, &ssm.PutParameterInput{
		Name:        aws.String(param),
		Value:       aws.String(p.ami),
		Type:        ssmtypes.ParameterTypeString,
		DataType:    aws.String("aws:ec2:image"),
		Overwrite:   aws.Bool(true),
		Description: aws.String(desc),
	})
	if err != nil {
		return fmt.Errorf("writing %s = %s: %w", param, p.ami, err)
	}
	m.logger().Info("channel parameter written", "region", p.region, "parameter", param, "ami", p.ami, "was", orAbsent(p.current))
	return nil
}

// getParameter returns the parameter's value, "" if it does not exist.
func getParameter(ctx context.Context, c *ssm.Client, name string) (string, error) {
	out, err := c.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(name)})
	var nf *ssmtypes.ParameterNotFound
	if errors.As(err, &nf) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", name, err)
	}
	return aws.ToString(out.Parameter.Value), nil
}

func orAbsent(v string) string {
	if v == "" {
		return "(absent)"
	}
	return v
}

func (m *Mirror) logger() *slog.Logger {
	if m.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Logger
}
