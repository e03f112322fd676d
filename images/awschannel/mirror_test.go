package awschannel

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

const (
	east    = "us-east-1"
	west    = "eu-west-1"
	account = "123456789012"
)

func TestMain(m *testing.M) {
	code := m.Run()
	awsfake.StopMoto()
	os.Exit(code)
}

// awsEnv is a store with images 1.0.1, 1.0.2 and 1.0.3, its channels, and clients of a fake
// AWS endpoint in front of a fresh moto: Pending lists AMIs DescribeImages reports pending,
// FailPut the regions whose PutParameter fails.
type awsEnv struct {
	st       *store.Store
	log      *channel.Log
	imgs     map[string]store.Image
	clients  *awsclient.Clients
	settings Settings

	mu      sync.Mutex
	pending map[string]bool
	failPut map[string]bool
}

func newAWSEnv(t *testing.T) *awsEnv {
	t.Helper()
	e := &awsEnv{pending: map[string]bool{}, failPut: map[string]bool{}, imgs: map[string]store.Image{}}
	e.clients = awsfake.MotoForTest(t, east, awsfake.HandlerFunc(e.serve)).Clients
	e.st = storetest.Open(t)
	var err error
	if e.log, err = channel.Open(e.st.Dir(), nil); err != nil {
		t.Fatal(err)
	}
	for i, v := range []string{"1.0.1", "1.0.2", "1.0.3"} {
		e.imgs[v] = storetest.PutVersion(t, e.st, v, int64(1000+i))
	}
	e.settings = Settings{Regions: []string{east, west}, SSMPrefix: "/imgctl/nodes"}
	return e
}

// serve fakes what moto cannot: an AMI still pending, a PutParameter failing in a region.
func (e *awsEnv) serve(w http.ResponseWriter, r *http.Request, body []byte) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	form, _ := url.ParseQuery(string(body))
	if form.Get("Action") == "DescribeImages" && e.pending[form.Get("ImageId.1")] {
		w.Header().Set("Content-Type", "text/xml")
		fmt.Fprintf(w, `<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>fake</requestId><imagesSet><item><imageId>%s</imageId><imageState>pending</imageState><name>x</name></item></imagesSet></DescribeImagesResponse>`, form.Get("ImageId.1"))
		return true
	}
	if r.Header.Get("X-Amz-Target") == "AmazonSSM.PutParameter" {
		for region := range e.failPut {
			if strings.Contains(r.Header.Get("Authorization"), "/"+region+"/ssm/") {
				w.Header().Set("Content-Type", "application/x-amz-json-1.1")
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprint(w, `{"__type":"AccessDeniedException","message":"not allowed to write parameters"}`)
				return true
			}
		}
	}
	return false
}

// publish registers an AMI of image v in each region (tagged as imgctl tags them) and stores
// the publication record; it returns the AMI per region.
func (e *awsEnv) publish(t *testing.T, v string, regions ...string) map[string]string {
	t.Helper()
	ctx := t.Context()
	img := e.imgs[v]
	amis := map[string]string{}
	rec := publication.Record{Image: img.Digest(), Method: publication.MethodEBSDirect, Region: regions[0], State: publication.StateAvailable}
	for _, r := range regions {
		out, err := e.clients.EC2(r).RegisterImage(ctx, &ec2.RegisterImageInput{
			Name: aws.String("imgctl-" + v), Architecture: ec2types.ArchitectureValuesX8664, RootDeviceName: aws.String("/dev/xvda"),
			TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeImage, Tags: []ec2types.Tag{
				{Key: aws.String(publication.TagImage), Value: aws.String(img.Digest().String())},
				{Key: aws.String(publication.TagVersion), Value: aws.String(v)}}}},
		})
		if err != nil {
			t.Fatalf("RegisterImage in %s: %v", r, err)
		}
		amis[r] = aws.ToString(out.ImageId)
		rec.Regions = append(rec.Regions, publication.Region{Region: r, ImageID: amis[r], State: publication.StateAvailable})
	}
	if _, err := publication.Put(ctx, e.st, rec); err != nil {
		t.Fatal(err)
	}
	return amis
}

// share gives account launch permission on ami in region.
func (e *awsEnv) share(t *testing.T, region, ami string) {
	t.Helper()
	_, err := e.clients.EC2(region).ModifyImageAttribute(t.Context(), &ec2.ModifyImageAttributeInput{ImageId: aws.String(ami),
		LaunchPermission: &ec2types.LaunchPermissionModifications{Add: []ec2types.LaunchPermission{{UserId: aws.String(account)}}}})
	if err != nil {
		t.Fatal(err)
	}
}

func (e *awsEnv) mover(force bool) *channel.Mover {
	m := e.log.Mover(e.st)
	m.Mirror = &Mirror{Store: e.st, Settings: e.settings, Clients: e.clients, Force: force, Logger: slog.New(slog.DiscardHandler)}
	return m
}

// param returns PREFIX/CH/image_id in region ("" = absent) and checks its data type.
func (e *awsEnv) param(t *testing.T, region, ch string) string {
	t.Helper()
	out, err := e.clients.SSM(region).GetParameter(t.Context(), &ssm.GetParameterInput{Name: aws.String(e.settings.SSMPrefix + "/" + ch + "/image_id")})
	var nf *ssmtypes.ParameterNotFound
	if errors.As(err, &nf) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	if dt := aws.ToString(out.Parameter.DataType); dt != "aws:ec2:image" {
		t.Errorf("%s %s: data type %q, want aws:ec2:image", region, ch, dt)
	}
	return aws.ToString(out.Parameter.Value)
}

func (e *awsEnv) setParam(t *testing.T, region, ch, value string) {
	t.Helper()
	_, err := e.clients.SSM(region).PutParameter(t.Context(), &ssm.PutParameterInput{Name: aws.String(e.settings.SSMPrefix + "/" + ch + "/image_id"),
		Value: aws.String(value), Type: ssmtypes.ParameterTypeString, DataType: aws.String("aws:ec2:image"), Overwrite: aws.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
}

func (e *awsEnv) wantParams(t *testing.T, ch string, amis map[string]string) {
	t.Helper()
	for _, r := range e.settings.Regions {
		if got := e.param(t, r, ch); got != amis[r] {
			t.Errorf("%s %s: parameter %q, want %q", r, ch, got, amis[r])
		}
	}
}

func (e *awsEnv) head(t *testing.T, ch string) string {
	t.Helper()
	h, err := e.log.History(t.Context(), ch)
	if err != nil {
		t.Fatal(err)
	}
	for v, img := range e.imgs {
		if img.Digest() == h.Head() {
			return v
		}
	}
	return ""
}

func wantErr(t *testing.T, err, target error, words ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want %v", err, target)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %q", err, w)
		}
	}
}

func TestMirrorPromoteAndRollback(t *testing.T) {
	e := newAWSEnv(t)
	ctx := t.Context()
	a1, a2 := e.publish(t, "1.0.1", east, west), e.publish(t, "1.0.2", east, west)
	m := e.mover(false)
	if _, err := m.Promote(ctx, channel.Promotion{Image: "1.0.1", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	e.wantParams(t, "nightly", a1)
	if _, err := m.Promote(ctx, channel.Promotion{Image: "1.0.2", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	e.wantParams(t, "nightly", a2)
	e.wantParams(t, "staging", nil)
	if _, err := m.Rollback(ctx, channel.Rollback{Channel: "nightly"}); err != nil {
		t.Fatal(err)
	}
	e.wantParams(t, "nightly", a1)
	if _, err := m.Promote(ctx, channel.Promotion{Image: "nightly", To: "staging"}); err != nil {
		t.Fatal(err)
	}
	e.wantParams(t, "staging", a1)
}

func TestMirrorRefusesChangedParameter(t *testing.T) {
	e := newAWSEnv(t)
	ctx := t.Context()
	a1, a2 := e.publish(t, "1.0.1", east, west), e.publish(t, "1.0.2", east, west)
	if _, err := e.mover(false).Promote(ctx, channel.Promotion{Image: "1.0.1", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	const other = "ami-0123456789abcdef0"
	e.setParam(t, west, "nightly", other)
	_, err := e.mover(false).Promote(ctx, channel.Promotion{Image: "1.0.2", To: "nightly"})
	wantErr(t, err, ErrParameterChanged, west, "/imgctl/nodes/nightly/image_id", other, a1[west], a2[west], "--force")
	if strings.Contains(err.Error(), east+":") {
		t.Errorf("error %q blames %s, whose parameter is as expected", err, east)
	}
	if v := e.head(t, "nightly"); v != "1.0.1" {
		t.Fatalf("nightly moved to %s although refused", v)
	}
	if got := e.param(t, east, "nightly"); got != a1[east] {
		t.Fatalf("%s written (%s) by a refused promotion", east, got)
	}
	if got := e.param(t, west, "nightly"); got != other {
		t.Fatalf("someone else's value overwritten: %s", got)
	}
	// A parameter that was absent before but someone wrote is refused too.
	e.setParam(t, east, "staging", other)
	_, err = e.mover(false).Promote(ctx, channel.Promotion{Image: "1.0.1", To: "staging"})
	wantErr(t, err, ErrParameterChanged, east, "/imgctl/nodes/staging/image_id", other, "absent")

	if _, err := e.mover(true).Promote(ctx, channel.Promotion{Image: "1.0.2", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	e.wantParams(t, "nightly", a2)
}

func TestMirrorRefusesImageMissingInARegion(t *testing.T) {
	e := newAWSEnv(t)
	ctx := t.Context()
	a1 := e.publish(t, "1.0.1", east, west)
	e.publish(t, "1.0.2", east)
	if _, err := e.mover(false).Promote(ctx, channel.Promotion{Image: "1.0.1", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	for _, force := range []bool{false, true} {
		_, err := e.mover(force).Promote(ctx, channel.Promotion{Image: "1.0.2", To: "nightly"})
		wantErr(t, err, ErrNotPublished, "in "+west+" ", "imgctl publish ami "+e.imgs["1.0.2"].Digest().String()+" --region "+east+" --copy-to "+west)
	}
	// 1.0.3 has no record at all: both regions are named.
	_, err := e.mover(false).Promote(ctx, channel.Promotion{Image: "1.0.3", To: "nightly"})
	wantErr(t, err, ErrNotPublished, "in "+east+", "+west)
	if v := e.head(t, "nightly"); v != "1.0.1" {
		t.Fatalf("nightly moved to %s although refused", v)
	}
	e.wantParams(t, "nightly", a1)
}

func TestMirrorRefusesPendingAMI(t *testing.T) {
	e := newAWSEnv(t)
	ctx := t.Context()
	a1 := e.publish(t, "1.0.1", east, west)
	e.pending[a1[west]] = true
	_, err := e.mover(true).Promote(ctx, channel.Promotion{Image: "1.0.1", To: "nightly"})
	wantErr(t, err, ErrNotReady, west, a1[west], "pending")
	if v := e.head(t, "nightly"); v != "" {
		t.Fatalf("nightly moved to %s although refused", v)
	}
	e.wantParams(t, "nightly", nil)
	delete(e.pending, a1[west])
	if _, err := e.mover(false).Promote(ctx, channel.Promotion{Image: "1.0.1", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	e.wantParams(t, "nightly", a1)
}

func TestMirrorRefusesUnsharedAMI(t *testing.T) {
	e := newAWSEnv(t)
	e.settings.Share = []string{account}
	a1 := e.publish(t, "1.0.1", east, west)
	e.share(t, east, a1[east])
	_, err := e.mover(false).Promote(t.Context(), channel.Promotion{Image: "1.0.1", To: "nightly"})
	wantErr(t, err, ErrNotReady, west, a1[west], "not shared with "+account, "--share "+account)
	if strings.Contains(err.Error(), a1[east]) {
		t.Errorf("error %q names %s, which is shared", err, a1[east])
	}
	e.share(t, west, a1[west])
	if _, err := e.mover(false).Promote(t.Context(), channel.Promotion{Image: "1.0.1", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	e.wantParams(t, "nightly", a1)
}

func TestMirrorRerunRepairsHalfDoneSync(t *testing.T) {
	e := newAWSEnv(t)
	ctx := t.Context()
	a1, a2 := e.publish(t, "1.0.1", east, west), e.publish(t, "1.0.2", east, west)
	if _, err := e.mover(false).Promote(ctx, channel.Promotion{Image: "1.0.1", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	e.failPut[west] = true
	_, err := e.mover(false).Promote(ctx, channel.Promotion{Image: "1.0.2", To: "nightly"})
	if err == nil || !strings.Contains(err.Error(), "moved to "+e.imgs["1.0.2"].Digest().String()) ||
		!strings.Contains(err.Error(), west) || !strings.Contains(err.Error(), "AccessDenied") {
		t.Fatalf("promote with a failing write in %s: %v", west, err)
	}
	if v := e.head(t, "nightly"); v != "1.0.2" {
		t.Fatalf("nightly at %s, want 1.0.2 (the local move stands)", v)
	}
	e.wantParams(t, "nightly", map[string]string{east: a2[east], west: a1[west]})
	delete(e.failPut, west)
	if _, err := e.mover(false).Promote(ctx, channel.Promotion{Image: "1.0.2", To: "nightly"}); err != nil {
		t.Fatal(err)
	}
	e.wantParams(t, "nightly", a2)
}
