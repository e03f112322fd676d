// Package builder is the Packer builder "imgctl": it builds a node image with imgctl's build
// library (builders.Run), signs it, publishes it as AMIs (images/ami.Publish) and returns a
// Packer artifact of the output files, the image digest and the AMI IDs. A failed or
// cancelled build removes what it created, in reverse order.
package builder

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/imgctl/imgctl/layers/progress"
)

// BuilderID is the builder's artifact ID (post-processors check it).
const BuilderID = "imgctl.image"

// Generated data: the variables a build makes available (build.ImageDigest, …).
const (
	GeneratedImageDigest  = "ImageDigest"
	GeneratedImageVersion = "ImageVersion"
	GeneratedAMIs         = "AMIs"
)

// Builder implements packer.Builder.
type Builder struct {
	config Config
	// Tool names the plugin in what it tags and signs ("imgctl packer-plugin VERSION"); set by
	// main.
	Tool string
	// ImgctlVersion is the version of imgctl the plugin was built from, recorded in every image
	// as imgctl build records its own (main sets it; make stamps both alike), so the same inputs
	// give the same image whichever front end built it. "" = "dev", the CLI's default.
	ImgctlVersion string
}

// ConfigSpec implements packer.Builder.
func (b *Builder) ConfigSpec() hcldec.ObjectSpec { return b.config.FlatMapstructure().HCL2Spec() }

// Prepare implements packer.Builder: it decodes and checks the configuration, without side
// effects.
func (b *Builder) Prepare(raws ...any) ([]string, []string, error) {
	if err := b.config.prepare(raws...); err != nil {
		return nil, nil, err
	}
	return []string{GeneratedImageDigest, GeneratedImageVersion, GeneratedAMIs}, nil, nil
}

// Run implements packer.Builder: the steps in order; when one fails or ctx is cancelled,
// the cleanups of the steps that ran, in reverse order.
func (b *Builder) Run(ctx context.Context, ui packer.Ui, _ packer.Hook) (packer.Artifact, error) {
	lui := &lockedUI{ui: ui}
	log := slog.New(newUIHandler(lui, slog.LevelInfo))
	s := &state{config: &b.config, ui: lui, log: log, tool: b.tool(), imgctlVersion: cmp.Or(b.ImgctlVersion, "dev")}
	ctx = progress.With(ctx, progress.New(progressSink(lui)))
	if err := runSteps(ctx, s, steps(&b.config)); err != nil {
		return nil, err
	}
	return s.artifact, nil
}

func (b *Builder) tool() string {
	if b.Tool == "" {
		return "imgctl packer-plugin"
	}
	return b.Tool
}

// errCancelled is Run's error when Packer cancelled the build.
var errCancelled = errors.New("build cancelled")

// cancelled wraps a step's error when ctx was cancelled.
func cancelled(ctx context.Context, err error) error {
	if ctx.Err() != nil && !errors.Is(err, errCancelled) {
		return fmt.Errorf("%w: %w", errCancelled, err)
	}
	return err
}
