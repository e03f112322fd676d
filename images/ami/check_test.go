package ami

import (
	"slices"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/publication"
)

// TestCheckNamesOptions: Check names options through the caller's names (a front end's own
// fields), cross-references included, and normalizes what it accepts.
func TestCheckNamesOptions(t *testing.T) {
	names := map[string]string{"method": "upload_method", "s3-bucket": "s3_bucket", "copy-to": "ami_regions", "region": "region"}
	name := func(o string) string { return names[o] }
	o := Options{Region: home, Method: publication.MethodEBSDirect, Bucket: "disks", NamePrefix: "imgctl-", Concurrency: 1, Wait: time.Minute}
	if err := o.Check(name); err == nil || err.Error() != "s3_bucket is used only with upload_method import-snapshot (upload_method is ebs-direct)" {
		t.Errorf("Check: %v", err)
	}
	o = Options{Region: home, CopyTo: []string{" " + away, away}, Method: publication.MethodEBSDirect, NamePrefix: "imgctl-", Concurrency: 1, Wait: time.Minute}
	if err := o.Check(name); err != nil || !slices.Equal(o.CopyTo, []string{away}) {
		t.Errorf("Check: %v, copy-to %q", err, o.CopyTo)
	}
	o.CopyTo = []string{home}
	if err := o.Check(FlagName); err == nil || err.Error() != "--copy-to us-east-1: that is the region the AMI is registered in (--region); list only the other regions" {
		t.Errorf("Check: %v", err)
	}
}
