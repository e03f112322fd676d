package builders_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/rootfs"
	"github.com/imgctl/imgctl/images/store"
)

// publishingTarget is the rootfs target plus a Publisher that records what it was given.
type publishingTarget struct {
	*rootfs.Target
	name   string
	err    error
	called []store.Image
	// stored is whether the image was in the store when Publish ran.
	stored bool
}

func (p *publishingTarget) Name() string { return p.name }

func (p *publishingTarget) Publish(ctx context.Context, st *store.Store, img store.Image) (any, error) {
	p.called = append(p.called, img)
	_, err := st.Resolve(ctx, string(img.Digest()))
	p.stored = err == nil
	if p.err != nil {
		return "partly published " + img.Config.Version, p.err
	}
	return "published " + img.Config.Version, nil
}

// TestBuildPublishesAfterStoring: a target that is a Publisher is called once with the stored
// image, after the image is in the store, and its result is the build's Published[target].
func TestBuildPublishesAfterStoring(t *testing.T) {
	f := newFixture(t)
	e := newEnv(t, f.Spec(t), t.TempDir())
	pub := &publishingTarget{Target: rootfs.New(), name: "pub"}
	e.Opts.Targets = []builders.Target{pub}
	res, err := builders.Run(context.Background(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(pub.called) != 1 || pub.called[0].Digest() != res.Image.Digest() || !pub.stored {
		t.Fatalf("Publish called %d times (stored: %v) with %v, want once with the stored image %s", len(pub.called), pub.stored, pub.called, res.Image.Digest())
	}
	if got := res.Published["pub"]; got != "published "+res.Image.Config.Version {
		t.Errorf("Published = %v", res.Published)
	}
	var phase bool
	for _, p := range res.Phases {
		phase = phase || p.Name == "publish pub"
	}
	if !phase {
		t.Errorf("phases %v lack publish pub", res.Phases)
	}
}

// TestBuildPublishFailureKeepsImage: when publishing fails the image is still built and stored,
// the result names it, and the error says the image is built and which target failed.
func TestBuildPublishFailureKeepsImage(t *testing.T) {
	f := newFixture(t)
	e := newEnv(t, f.Spec(t), t.TempDir())
	boom := errors.New("no AWS credentials found")
	pub := &publishingTarget{Target: rootfs.New(), name: "pub", err: boom}
	e.Opts.Targets = []builders.Target{pub}
	res, err := builders.Run(context.Background(), e.Opts)
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the publish error", err)
	}
	var pe *builders.PublishError
	if !errors.As(err, &pe) || pe.Target != "pub" {
		t.Fatalf("err %v is not a PublishError of target pub", err)
	}
	if res == nil || res.Image.Digest() == "" {
		t.Fatalf("result %v lacks the built image", res)
	}
	want := "image " + res.Image.Config.Version + " (" + string(res.Image.Digest()) + ") is built and stored, but target pub could not publish it: no AWS credentials found"
	if err.Error() != want {
		t.Errorf("err = %q\nwant  %q", err, want)
	}
	if _, err := e.Opts.Store.Resolve(context.Background(), string(res.Image.Digest())); err != nil {
		t.Errorf("the image is not in the store after a failed publish: %v", err)
	}
	if !strings.Contains(err.Error(), res.Image.Config.Version) {
		t.Errorf("err %q does not name the image", err)
	}
	// What the publisher returned with its error (how far it got) is kept.
	if got := res.Published["pub"]; got != "partly published "+res.Image.Config.Version {
		t.Errorf("Published = %v, want the failed publisher's partial result", res.Published)
	}
}
