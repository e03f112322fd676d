package registry

import (
	"testing"

	"github.com/imgctl/imgctl/images/store/storetest"
	"github.com/imgctl/imgctl/layers/progress/progresstest"
)

// Push and pull are steps with the artifacts' bytes of their total and the blobs done, so a
// multi-GB disk image moving to or from a registry shows its progress.
func TestPushPullReportProgress(t *testing.T) {
	reg := newRegistry(t)
	src := storetest.Open(t)
	img := storetest.PutVersion(t, src, testVersion, 1795651200)
	repo := reg.host + "/imgctl/node"
	ctx, rec := progresstest.Context(t.Context())
	if _, err := Push(ctx, src, img, repo, testOptions(t)); err != nil {
		t.Fatal(err)
	}
	push, ok := rec.Step("push " + testVersion + " to " + repo)
	if !ok || push.Err != nil || push.Entries != 4 || push.Total == 0 || push.Bytes != push.Total {
		t.Fatalf("steps = %+v, want push with 4 blobs, all bytes of the total", rec.Finished())
	}
	total := push.Total

	ctx, rec = progresstest.Context(t.Context())
	if _, err := Pull(ctx, storetest.Open(t), repo+":"+Tag(testVersion), testOptions(t)); err != nil {
		t.Fatal(err)
	}
	pull, ok := rec.Step("pull " + testVersion + " from " + repo)
	// The config is not an artifact: it comes with the manifest.
	if !ok || pull.Err != nil || pull.Entries != 3 || pull.Total == 0 || pull.Total >= total || pull.Bytes != pull.Total {
		t.Fatalf("steps = %+v, want pull with 3 artifacts, all bytes of the total", rec.Finished())
	}
}
