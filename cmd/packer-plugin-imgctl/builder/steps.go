package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/targets"
	"github.com/imgctl/imgctl/images/ami"
	"github.com/imgctl/imgctl/images/awschannel"
	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/atomicfile"
)

// cleanupTimeout bounds the cleanup of a failed or cancelled build (deregistering AMIs in
// several regions included).
const cleanupTimeout = 10 * time.Minute

// state is what the steps share, typed.
type state struct {
	config *Config
	ui     *lockedUI
	log    *slog.Logger
	tool   string
	// imgctlVersion is recorded in the image (Builder.ImgctlVersion).
	imgctlVersion string

	opts    builders.Options
	store   *store.Store
	clients *awsclient.Clients // with the ami target

	outputCreated bool   // this run created output_directory
	lockExisted   bool   // the lock file existed before the run
	lockBefore    []byte // and held this

	result    *builders.Result
	published *ami.Result // how far publishing got (also when it failed)
	// amisBefore are the AMIs the image's publication record named before this run, by
	// region: a failed run keeps them.
	amisBefore map[string]string
	amiRegions []string // the regions published to: the upload region, then the copies

	artifact *Artifact
}

// step is one step of Run. cleanup runs only when the build failed or was cancelled, for the
// steps that started, in reverse order; it undoes what its run created.
type step interface {
	name() string
	run(ctx context.Context, s *state) error
	cleanup(ctx context.Context, s *state) error
}

// steps are Run's steps for c.
func steps(c *Config) []step {
	out := []step{&stepPrepare{}, &stepBuild{}}
	if c.SignKey != "" {
		out = append(out, &stepSign{})
	}
	if c.publishAMI {
		out = append(out, &stepPublishAMI{})
	}
	return append(out, &stepArtifact{})
}

// runSteps runs steps in order; when one fails or ctx is cancelled, it runs the cleanups of
// the steps that started, in reverse order, with a context that outlives ctx (bounded by
// cleanupTimeout), and returns the step's error joined with the cleanups' errors. A failure
// under packer build -on-error=abort is left as it is, as Packer's own builders do.
func runSteps(ctx context.Context, s *state, steps []step) error {
	var ran []step
	var err error
	for _, st := range steps {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w before %s", errCancelled, st.name())
			break
		}
		ran = append(ran, st)
		s.ui.say(st.name() + "…")
		if err = st.run(ctx, s); err != nil {
			err = cancelled(ctx, fmt.Errorf("%s: %w", st.name(), err))
			break
		}
	}
	if err == nil {
		return nil
	}
	s.ui.error(err.Error())
	if s.config.PackerOnError == "abort" && ctx.Err() == nil {
		s.ui.error("packer build -on-error=abort: leaving what the build made (output_directory, AMIs, the lock file) for inspection")
		return err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	errs := []error{err}
	for i := len(ran) - 1; i >= 0; i-- {
		if cerr := ran[i].cleanup(cctx, s); cerr != nil {
			cerr = fmt.Errorf("cleaning up after %s: %w", ran[i].name(), cerr)
			s.ui.error(cerr.Error())
			errs = append(errs, cerr)
		}
	}
	return errors.Join(errs...)
}

// stepPrepare opens the source environment, the store and (for AMIs) the AWS clients, and
// claims output_directory; its cleanup removes output_directory if this run created it.
type stepPrepare struct{}

func (*stepPrepare) name() string { return "preparing the build" }

func (*stepPrepare) run(ctx context.Context, s *state) error {
	c := s.config
	setup := c.setup()
	setup.Env.Logger = s.log
	opts, err := builders.Prepare(setup)
	if err != nil {
		return fieldError(c, err)
	}
	if opts.Targets, err = targets.New(c.targetNames, c.topts); err != nil {
		return fmt.Errorf("targets: %w", err)
	}
	if s.store, err = store.Open(ctx, c.Store, s.log); err != nil {
		return fmt.Errorf("store %s: %w", c.Store, err)
	}
	opts.Store, opts.LockPath, opts.Locked, opts.UpdateLock = s.store, c.LockFile, c.Locked, c.UpdateLock
	opts.OutputDir, opts.ImgctlVersion = c.OutputDirectory, s.imgctlVersion
	s.opts = opts

	switch b, err := os.ReadFile(c.LockFile); {
	case err == nil:
		s.lockExisted, s.lockBefore = true, b
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("lock_file: %w", err)
	}

	if c.publishAMI { // before the build: missing credentials or region fail now
		cfg, err := awsclient.Load(ctx, awsclient.Options{
			Region: c.Region, Profile: c.Profile, EndpointURL: c.EndpointURL, NoIMDS: c.NoIMDS, Logger: s.log,
		})
		if err != nil {
			return err
		}
		s.clients = awsclient.NewClients(cfg)
		s.config.amiOpts.Region = s.clients.Region()
		if err := s.config.amiOpts.Check(amiFieldName); err != nil { // the region may have come from the environment
			return err
		}
	}

	// Like Packer's own builders: the output directory must not exist (-force replaces it).
	switch _, err := os.Lstat(c.OutputDirectory); {
	case err == nil && !c.PackerForce:
		return fmt.Errorf("output_directory %s already exists: remove it or run packer build -force", c.OutputDirectory)
	case err == nil:
		s.ui.say("removing " + c.OutputDirectory + " (-force)")
		if err := os.RemoveAll(c.OutputDirectory); err != nil {
			return fmt.Errorf("output_directory: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("output_directory: %w", err)
	}
	if err := os.MkdirAll(c.OutputDirectory, 0o755); err != nil {
		return fmt.Errorf("output_directory: %w", err)
	}
	s.outputCreated = true
	return nil
}

func (*stepPrepare) cleanup(_ context.Context, s *state) error {
	if !s.outputCreated {
		return nil
	}
	s.ui.say("removing " + s.config.OutputDirectory)
	return os.RemoveAll(s.config.OutputDirectory)
}

// stepBuild builds the image into the store and output_directory; its cleanup restores the
// lock file. The image stays in the store (content-addressed: imgctl gc removes it).
type stepBuild struct{}

func (*stepBuild) name() string { return "building the image" }

func (*stepBuild) run(ctx context.Context, s *state) error {
	res, err := builders.Run(ctx, s.opts)
	var lce *builders.LockChangedError
	if errors.As(err, &lce) { // named by the fields, not by imgctl's flags
		var b strings.Builder
		fmt.Fprintf(&b, "lock_file %s: %v (set locked = false, or update_lock = true, to update it):", lce.Path, builders.ErrLockChanged)
		b.WriteString(lce.ChangeLines())
		return &messageError{b.String(), err}
	}
	if err != nil {
		return err
	}
	s.result = res
	img := res.Image
	s.ui.say(fmt.Sprintf("built image %s (%s)", img.Config.Version, img.Digest()))
	return nil
}

func (*stepBuild) cleanup(_ context.Context, s *state) error {
	lockPath := s.config.LockFile
	now, err := os.ReadFile(lockPath)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !s.lockExisted:
		return nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("lock_file: %w", err)
	case !s.lockExisted:
		s.ui.say("removing the lock file this build wrote: " + lockPath)
		return os.Remove(lockPath)
	case err == nil && bytes.Equal(now, s.lockBefore):
		return nil
	}
	s.ui.say("restoring the lock file " + lockPath)
	return atomicfile.Write(filepath.Dir(lockPath), lockPath, s.lockBefore, 0o644)
}

// stepSign signs the image with sign_key (a referrer in the store, kept with the image).
type stepSign struct{}

func (*stepSign) name() string { return "signing the image" }

func (*stepSign) run(ctx context.Context, s *state) error {
	key, err := sign.LoadPrivateKey(s.config.SignKey)
	if err != nil {
		return fmt.Errorf("sign_key: %w", err)
	}
	desc, err := sign.Sign(ctx, s.store, s.result.Image, key, sign.SignOptions{Creator: s.tool})
	if err != nil {
		return err
	}
	s.log.Info("signed image", "image", s.result.Image.Digest(), "signature", desc.Digest)
	return nil
}

func (*stepSign) cleanup(context.Context, *state) error { return nil }

// stepPublishAMI publishes the image as AMIs, with the store's AWS settings as defaults (as
// imgctl publish ami). Its cleanup unpublishes the regions this run published to that held
// no AMI of the image before (by the store's records or on AWS): AMIs, snapshots and version
// parameters (images/ami.Unpublish).
type stepPublishAMI struct{}

func (*stepPublishAMI) name() string { return "publishing the AMIs" }

func (*stepPublishAMI) run(ctx context.Context, s *state) error {
	o := s.config.amiOpts
	o.Tool, o.Logger, o.Poll = s.tool, s.log, s.config.amiPoll
	settings, err := awschannel.LoadSettings(s.store.Dir())
	if err != nil {
		return err
	}
	if settings != nil && settings.PublishDefaults(&o) {
		s.log.Info("publishing where the store's AWS settings promise channels (imgctl store aws)",
			"copyTo", strings.Join(o.CopyTo, ","), "share", strings.Join(o.Share, ","), "ssmPrefix", o.SSMPrefix)
	}
	img := s.result.Image
	recs, err := publication.List(ctx, s.store, img.Digest())
	if err != nil {
		return err
	}
	s.amisBefore = map[string]string{}
	for _, g := range publication.ByRegion(recs) {
		if g.ImageID != "" {
			s.amisBefore[g.Region] = g.ImageID
		}
	}
	s.amiRegions = append([]string{o.Region}, o.CopyTo...)
	for _, r := range s.amiRegions { // AMIs of the image on AWS that no record of this store names are kept too
		if _, ok := s.amisBefore[r]; ok {
			continue
		}
		id, _, _, err := ami.Find(ctx, s.clients, r, img.Digest())
		if err != nil {
			return err
		}
		if id != "" {
			s.amisBefore[r] = id
		}
	}
	res, err := ami.Publish(ctx, s.store, img, s.clients, o)
	if res.Record.Image != "" {
		s.published = &res
	}
	if err != nil {
		return err
	}
	for _, g := range res.Record.Regions {
		s.ui.say(fmt.Sprintf("AMI %s in %s: %s", g.ImageID, g.Region, g.State))
	}
	return nil
}

// createdRegions are the regions this run published to that held no AMI of the image before.
func (s *state) createdRegions() []string {
	var out []string
	for _, r := range s.amiRegions {
		if _, ok := s.amisBefore[r]; !ok {
			out = append(out, r)
		}
	}
	return out
}

func (*stepPublishAMI) cleanup(ctx context.Context, s *state) error {
	regions := s.createdRegions()
	if len(regions) == 0 {
		return nil
	}
	s.ui.say("removing the AMIs, snapshots and version parameters this build made in " + strings.Join(regions, ", "))
	return ami.Unpublish(ctx, s.store, s.result.Image, s.clients, regions, s.log)
}

// stepArtifact makes the artifact.
type stepArtifact struct{}

func (*stepArtifact) name() string { return "recording the artifact" }

func (*stepArtifact) run(_ context.Context, s *state) error {
	img := s.result.Image
	a := &Artifact{
		Digest: img.Digest().String(), Version: img.Config.Version, files: s.result.Files,
		AMIs: map[string]string{},
	}
	if s.published != nil {
		for _, g := range s.published.Record.Regions {
			if g.ImageID != "" {
				a.AMIs[g.Region] = g.ImageID
			}
		}
		a.unpublish = s.createdRegions()
	}
	a.store, a.image, a.clients, a.log = s.store, img, s.clients, s.log
	s.artifact = a
	return nil
}

func (*stepArtifact) cleanup(context.Context, *state) error { return nil }

// messageError is err told in the plugin's terms.
type messageError struct {
	msg string
	err error
}

func (e *messageError) Error() string { return e.msg }

func (e *messageError) Unwrap() error { return e.err }
