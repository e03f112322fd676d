package targets_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/buildtest"
	"github.com/imgctl/imgctl/builders/targets"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/store"
)

// TestAMIWritesRawAndPublishes: the ami target stores exactly the image the raw target does
// (the same artifacts, so the same digest), then publishes that stored image.
func TestAMIWritesRawAndPublishes(t *testing.T) {
	f := buildtest.NewFixture(t)
	e := bootEnv(t, f, buildtest.BootOptions{}, "raw")
	rawRes, err := builders.Run(context.Background(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	var got []store.Image
	e.Opts.Targets, err = targets.New([]string{"ami"}, targets.Options{AMIPublish: func(ctx context.Context, st *store.Store, img store.Image) (any, error) {
		if _, err := st.Resolve(ctx, string(img.Digest())); err != nil {
			t.Errorf("published an image that is not stored: %v", err)
		}
		got = append(got, img)
		return "ami-0123", nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	res, err := builders.Run(context.Background(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Image.Digest() != rawRes.Image.Digest() {
		t.Errorf("--target ami stored %s, --target raw %s: ami must write what raw writes\nraw: %v\nami: %v",
			res.Image.Digest(), rawRes.Image.Digest(), manifest.Artifacts(rawRes.Image.Manifest), manifest.Artifacts(res.Image.Manifest))
	}
	if len(got) != 1 || got[0].Digest() != res.Image.Digest() {
		t.Errorf("published %v, want the built image once", got)
	}
	if res.Published["ami"] != "ami-0123" {
		t.Errorf("Published = %v", res.Published)
	}

	// raw and ami together are one disk, published once.
	got = nil
	ts, err := targets.New([]string{"raw,ami"}, targets.Options{AMIPublish: func(ctx context.Context, st *store.Store, img store.Image) (any, error) {
		got = append(got, img)
		return nil, errors.New("AccessDenied: ebs:StartSnapshot")
	}})
	if err != nil {
		t.Fatal(err)
	}
	e.Opts.Targets = ts
	res, err = builders.Run(context.Background(), e.Opts)
	if err == nil || !strings.Contains(err.Error(), "is built and stored, but target ami could not publish it: AccessDenied") {
		t.Fatalf("err = %v", err)
	}
	if len(got) != 1 || res.Image.Digest() != rawRes.Image.Digest() {
		t.Errorf("raw,ami: published %d times, image %s, want once and %s", len(got), res.Image.Digest(), rawRes.Image.Digest())
	}
}

// TestAMINeedsPublishSettings: the ami target cannot be made without a way to publish.
func TestAMINeedsPublishSettings(t *testing.T) {
	_, err := targets.New([]string{"ami"}, targets.Options{})
	if err == nil || !strings.Contains(err.Error(), "target ami publishes to AWS") {
		t.Errorf("err = %v", err)
	}
	var names []string
	for _, i := range targets.List() {
		names = append(names, i.Name)
	}
	if strings.Join(names, ",") != "raw,pxe,rootfs,ami" {
		t.Errorf("targets.List() = %v", names)
	}
}
