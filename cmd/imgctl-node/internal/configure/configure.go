// Package configure is the logic of kube-node-configuration.service: it finds the node's
// NodeConfig (metadata providers), writes the configuration its role needs (kubelet, kubeadm,
// containerd, hostname) and brings the node into the cluster: it starts containerd and the
// kubelet (a node with a pre-issued certificate) or runs kubeadm init/join. Every step is one
// console line; every wait is bounded.
package configure

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/health"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/hooks"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/metadata"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/render"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/report"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/imageinfo"
	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/images/nodeconfig"
)

// Defaults for Options.
const (
	DefaultCRISocket      = "/run/containerd/containerd.sock"
	DefaultKubeletHealthz = "http://127.0.0.1:10248/healthz"
	// DefaultReadyTimeout bounds each wait for a service to answer (containerd's CRI, the
	// kubelet's /healthz). Generous: a TCG guest or a loaded machine is slow to start them.
	DefaultReadyTimeout = 3 * time.Minute
)

// The commands that (re)start the services; a dry run names them.
var (
	restartContainerd = []string{"systemctl", "restart", "containerd.service"}
	startKubelet      = []string{"systemctl", "start", "kubelet.service"}
)

// Options configure Run. Zero fields take defaults; the function fields exist for tests.
type Options struct {
	Root    string // "/" on a node
	Cmdline string // the kernel command line (/proc/cmdline)
	Steps   *steplog.Logger
	Logger  *slog.Logger
	Output  io.Writer // output of hooks and commands (the journal and console); nil: discard
	// DryRun writes every file under Root as usual but changes nothing else: no command, no
	// hook, no sethostname, no probe. Each action left out is a status=skip line saying what
	// it would have done. For testing and debugging a configuration (imgctl-node configure
	// --root DIR --dry-run).
	DryRun bool

	// Providers overrides the metadata providers chosen from Cmdline (imgctl.metadata-order=).
	Providers []metadata.Provider
	Metadata  metadata.Options
	// Report bounds the boot report (nodeapi.PhaseConfigure) Run sends when it ends, ok or
	// failed, to the imgctl metadata server on Cmdline; none without imgctl.metadata= and
	// imgctl.credential=, and none in a dry run. It never changes Run's result.
	Report report.Options

	// Run executes a command (systemctl, ctr) with Output as its stdout and stderr.
	Run func(ctx context.Context, name string, args ...string) error
	// Kubeadm runs kubeadm with args, its stdout and stderr going to out (which redacts them
	// on their way to Output); default: the kubeadm on PATH.
	Kubeadm func(ctx context.Context, out io.Writer, args ...string) error
	// KubeadmBackoff is the wait after the first failed kubeadm join (default
	// DefaultKubeadmBackoff), doubling up to MaxKubeadmBackoff; FollowerRetryFor bounds a
	// masterFollower's retries (DefaultFollowerRetryFor); KubeadmAttemptTimeout bounds one
	// kubeadm init or join (DefaultKubeadmAttemptTimeout).
	KubeadmBackoff        time.Duration
	FollowerRetryFor      time.Duration
	KubeadmAttemptTimeout time.Duration

	SetHostname func(name string) error
	Hostname    func() (string, error)

	CRISocket      string
	KubeletHealthz string
	// Probes of containerd's CRI and the kubelet's /healthz; default: health.CRIVersion and
	// health.KubeletHealthz on CRISocket and KubeletHealthz.
	CRIProbe     func(ctx context.Context) (health.CRIInfo, error)
	KubeletProbe func(ctx context.Context) error
	ReadyTimeout time.Duration
	PollInterval time.Duration // between readiness probes; default 250 ms
}

func (o *Options) defaults() {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.Steps == nil {
		o.Steps = steplog.New(io.Discard)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Output == nil {
		o.Output = io.Discard
	}
	if o.Run == nil {
		o.Run = execRunner(o.Output)
	}
	if o.Kubeadm == nil {
		o.Kubeadm = execKubeadm
	}
	if o.KubeadmBackoff <= 0 {
		o.KubeadmBackoff = DefaultKubeadmBackoff
	}
	if o.FollowerRetryFor <= 0 {
		o.FollowerRetryFor = DefaultFollowerRetryFor
	}
	if o.KubeadmAttemptTimeout <= 0 {
		o.KubeadmAttemptTimeout = DefaultKubeadmAttemptTimeout
	}
	if o.SetHostname == nil {
		o.SetHostname = setHostname
	}
	if o.Hostname == nil {
		o.Hostname = os.Hostname
	}
	if o.CRISocket == "" {
		o.CRISocket = DefaultCRISocket
	}
	if o.KubeletHealthz == "" {
		o.KubeletHealthz = DefaultKubeletHealthz
	}
	if o.CRIProbe == nil {
		o.CRIProbe = func(ctx context.Context) (health.CRIInfo, error) { return health.CRIVersion(ctx, o.CRISocket) }
	}
	if o.KubeletProbe == nil {
		o.KubeletProbe = func(ctx context.Context) error { return health.KubeletHealthz(ctx, o.KubeletHealthz) }
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = DefaultReadyTimeout
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 250 * time.Millisecond
	}
	if o.Metadata.Logger == nil {
		o.Metadata.Logger = o.Logger
	}
	if o.Report.Logger == nil {
		o.Report.Logger = o.Logger
	}
}

// Run configures the node. It returns the first error; the step line for it has been written.
// The node name (metadata.name, or the host name when that is empty) is checked in the
// metadata step, before it reaches /etc/hostname, the hooks' environment or any file. At the
// end it reports its steps to the imgctl metadata server, if the command line names one with a
// credential (see Options.Report).
func Run(ctx context.Context, o Options) error {
	o.defaults()
	var st runState
	err := o.run(ctx, &st)
	if !o.DryRun {
		o.report(ctx, st, err)
	}
	return err
}

// runState is what the boot report needs from a run: the role, and the NodeConfig's secrets
// that must not leave the node in a step's error.
type runState struct {
	role    string
	secrets []string
}

// report sends the configure phase's boot report: bounded, and a failure is a log line only.
func (o *Options) report(ctx context.Context, st runState, failed error) {
	s := report.FromCmdline(o.Cmdline, o.Report)
	if s == nil {
		return
	}
	s.Redact(st.secrets...)
	var digest string
	if c, err := cmdline.Parse(o.Cmdline); err == nil {
		digest = c.RootDigest // a network root's; a disk boot's image digest is not on the node
	}
	_ = s.Send(ctx, s.Build(nodeapi.PhaseConfigure, o.Steps.Steps(), failed, digest, st.role))
}

func (o Options) run(ctx context.Context, st *runState) error {
	if !o.DryRun {
		if err := o.removeMarker(); err != nil {
			return o.Steps.Start("configured").Fail(err)
		}
	}
	info, err := step(o.Steps, "image-info", func() (*imageinfo.Info, []any, error) {
		i, err := imageinfo.Load(filepath.Join(o.Root, imageinfo.Path))
		if err != nil {
			return nil, nil, err
		}
		return i, []any{"kubernetes", i.Kubernetes, "bootstrap", i.Bootstrap}, nil
	})
	if err != nil {
		return err
	}

	var source, name string
	cfg, err := step(o.Steps, "metadata", func() (*nodeconfig.NodeConfig, []any, error) {
		providers := o.Providers
		if providers == nil {
			order := metadata.DefaultOrder
			if v, ok := cmdlineValue(o.Cmdline, boot.KeyMetadataOrder); ok {
				order = strings.Split(v, ",")
			}
			var err error
			if providers, err = metadata.New(order, o.Cmdline); err != nil {
				return nil, nil, err
			}
			for _, p := range providers {
				if f, ok := p.(*metadata.File); ok && f.Path == "" {
					f.Path = filepath.Join(o.Root, metadata.DefaultFilePath)
				}
			}
		}
		c, src, err := metadata.Fetch(ctx, providers, o.Metadata)
		if err != nil {
			return nil, nil, err
		}
		source, st.role = src, string(c.Spec.Role)
		if cr := c.Spec.Credentials; cr != nil {
			st.secrets = []string{cr.BootstrapToken, cr.ClientKey, cr.CertificateKey, cr.CAKey}
		}
		kv := []any{"source", src, "role", string(c.Spec.Role)}
		if name, err = nodeName(c, o.Hostname); err != nil {
			return nil, kv, err
		}
		return c, kv, nil
	})
	if err != nil {
		return err
	}

	if _, err := step(o.Steps, "hostname", func() (struct{}, []any, error) {
		if err := writeFile(o.Root, "/etc/hostname", 0o644, []byte(name+"\n")); err != nil {
			return struct{}{}, nil, err
		}
		if o.DryRun {
			return struct{}{}, []any{"name", name, "sethostname", "skipped (dry run)"}, nil
		}
		if err := o.SetHostname(name); err != nil {
			return struct{}{}, nil, fmt.Errorf("sethostname %q: %w", name, err)
		}
		return struct{}{}, []any{"name", name}, nil
	}); err != nil {
		return err
	}

	env := []string{
		"IMGCTL_ROLE=" + string(cfg.Spec.Role), "IMGCTL_NODE_NAME=" + name,
		"IMGCTL_API_SERVER=" + cfg.Spec.Cluster.APIServer, "IMGCTL_METADATA_SOURCE=" + source,
	}
	if err := o.hooks(ctx, hooks.PreConfigure, env); err != nil {
		return err
	}

	var baked []bakedImage
	plan, err := step(o.Steps, "render", func() (*render.Plan, []any, error) {
		var err error
		if baked, err = bakedImages(o.Root); err != nil {
			return nil, nil, err
		}
		names := make([]string, len(baked))
		for i, im := range baked {
			names[i] = im.Name
		}
		p, err := render.Render(render.Input{Config: cfg, Kubernetes: info.Kubernetes, NodeName: name, BakedImages: names})
		if err != nil {
			return nil, nil, err
		}
		for _, f := range p.Files {
			if err := writeFile(o.Root, f.Path, f.Mode, f.Data); err != nil {
				return nil, nil, err
			}
		}
		sandbox := p.SandboxImage
		if !slices.Contains(names, sandbox) {
			sandbox += " (not baked: pulled at the first pod)"
		}
		return p, []any{"files", len(p.Files), "sandbox", sandbox}, nil
	})
	if err != nil {
		return err
	}

	if err := o.updateConfig(ctx, cfg.Spec.Update); err != nil {
		return err
	}

	if o.DryRun {
		o.dryRunRest(plan, baked, cfg.Spec.Cluster.AdminKubeconfig)
		if err := o.podNet(ctx, cfg.Spec.Cluster, len(plan.Command) > 0, name); err != nil {
			return err
		}
		return o.hooks(ctx, hooks.PostConfigure, env)
	}

	if _, err := step(o.Steps, "containerd", func() (struct{}, []any, error) {
		// restart, not start: it may be running with the image's default configuration.
		if err := o.Run(ctx, restartContainerd[0], restartContainerd[1:]...); err != nil {
			return struct{}{}, nil, err
		}
		v, err := waitFor(ctx, o, "containerd's CRI at "+o.CRISocket, o.CRIProbe)
		if err != nil {
			return struct{}{}, nil, err
		}
		return struct{}{}, []any{"runtime", v.RuntimeName + " " + v.RuntimeVersion, "cri", v.API}, nil
	}); err != nil {
		return err
	}

	imports, skipped := importsFor(baked, plan)
	if len(baked) == 0 {
		o.Steps.Start("images").Skip("reason", "no images baked in "+ImagesDir)
	} else if _, err := step(o.Steps, "images", func() (struct{}, []any, error) {
		var names []string
		for _, im := range imports {
			if err := o.Run(ctx, "ctr", "--address", o.CRISocket, "--namespace", "k8s.io", "images", "import", filepath.Join(o.Root, im.Path)); err != nil {
				return struct{}{}, []any{"image", im.Name}, err
			}
			names = append(names, im.Name)
		}
		return struct{}{}, append([]any{"imported", strings.Join(names, ",")}, skippedKV(skipped)...), nil
	}); err != nil {
		return err
	}

	if len(plan.Command) > 0 {
		if err := o.runKubeadm(ctx, plan, cfg); err != nil {
			return err
		}
		if err := o.copyAdminKubeconfig(cfg.Spec.Cluster.AdminKubeconfig); err != nil {
			return err
		}
	} else {
		if _, err := step(o.Steps, "kubelet-start", func() (struct{}, []any, error) {
			return struct{}{}, nil, o.Run(ctx, startKubelet[0], startKubelet[1:]...)
		}); err != nil {
			return err
		}
	}
	if _, err := step(o.Steps, "kubelet-healthy", func() (struct{}, []any, error) {
		_, err := waitFor(ctx, o, "the kubelet at "+o.KubeletHealthz, func(ctx context.Context) (struct{}, error) {
			return struct{}{}, o.KubeletProbe(ctx)
		})
		return struct{}{}, []any{"url", o.KubeletHealthz}, err
	}); err != nil {
		return err
	}
	if err := o.podNet(ctx, cfg.Spec.Cluster, len(plan.Command) > 0, name); err != nil {
		return err
	}
	if err := o.hooks(ctx, hooks.PostConfigure, env); err != nil {
		return err
	}
	if err := o.writeMarker(); err != nil {
		return o.Steps.Start("configured").Fail(err)
	}
	return nil
}

func (o *Options) hooks(ctx context.Context, phase string, env []string) error {
	return hooks.Run(ctx, hooks.Options{Root: o.Root, Phase: phase, Env: env, Steps: o.Steps, Output: o.Output, DryRun: o.DryRun})
}

// dryRunRest writes the skip lines of the steps after render: what each would have run.
func (o *Options) dryRunRest(plan *render.Plan, baked []bakedImage, adminKubeconfig string) {
	skip := func(name string, kv ...any) { o.Steps.Start(name).Skip(append([]any{"reason", "dry run"}, kv...)...) }
	skip("containerd", "command", strings.Join(restartContainerd, " "))
	if len(baked) == 0 {
		skip("images", "images", "none baked in "+ImagesDir)
	} else {
		imports, skipped := importsFor(baked, plan)
		names := make([]string, len(imports))
		for i, im := range imports {
			names[i] = im.Name
		}
		skip("images", append([]any{"command", "ctr images import", "images", strings.Join(names, ",")}, skippedKV(skipped)...)...)
	}
	if len(plan.Command) > 0 {
		skip("kubeadm", "command", strings.Join(plan.Command, " "))
		if adminKubeconfig != "" {
			skip("admin-kubeconfig", "path", adminKubeconfig, "from", render.KubeadmAdminConfPath)
		}
	} else {
		skip("kubelet-start", "command", strings.Join(startKubelet, " "))
	}
	skip("kubelet-healthy", "url", o.KubeletHealthz)
}

// copyAdminKubeconfig copies the cluster-admin kubeconfig kubeadm wrote to path (mode 0600,
// atomically), as spec.cluster.adminKubeconfig asks; "" copies nothing.
func (o *Options) copyAdminKubeconfig(path string) error {
	if path == "" {
		return nil
	}
	_, err := step(o.Steps, "admin-kubeconfig", func() (struct{}, []any, error) {
		kv := []any{"path", path}
		b, err := os.ReadFile(filepath.Join(o.Root, render.KubeadmAdminConfPath))
		if err != nil {
			return struct{}{}, kv, fmt.Errorf("kubeadm succeeded but left no admin kubeconfig: %w", err)
		}
		if err := writeFile(o.Root, path, 0o600, b); err != nil {
			return struct{}{}, kv, fmt.Errorf("spec.cluster.adminKubeconfig: %w", err)
		}
		return struct{}{}, kv, nil
	})
	return err
}

// nodeName is the node's name: metadata.name (metadata.Fetch has validated it with
// nodeconfig.CheckNodeName), or else the host name lower-cased, which must pass the same check.
func nodeName(c *nodeconfig.NodeConfig, hostname func() (string, error)) (string, error) {
	if c.Metadata.Name != "" {
		return c.Metadata.Name, nil
	}
	h, err := hostname()
	if err != nil {
		return "", fmt.Errorf("metadata.name is empty and the host name is unknown: %w", err)
	}
	n := strings.ToLower(h)
	if err := nodeconfig.CheckNodeName(n); err != nil {
		return "", fmt.Errorf("metadata.name is empty and the host name is not a valid node name: %w (set metadata.name)", err)
	}
	return n, nil
}

// step runs fn as one step line: ok with fn's key/value pairs, or fail with its error.
func step[T any](l *steplog.Logger, name string, fn func() (T, []any, error)) (T, error) {
	s := l.Start(name)
	v, kv, err := fn()
	if err != nil {
		return v, s.Fail(err, kv...)
	}
	s.Done(kv...)
	return v, nil
}

// waitFor probes until it succeeds, ctx ends or ReadyTimeout passes; the error names what was
// awaited and the last probe's error.
func waitFor[T any](ctx context.Context, o Options, what string, probe func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, o.ReadyTimeout)
	defer cancel()
	tick := time.NewTicker(o.PollInterval)
	defer tick.Stop()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := probe(pctx)
		pcancel()
		if err == nil {
			return v, nil
		}
		select {
		case <-ctx.Done():
			var zero T
			return zero, fmt.Errorf("%s did not answer within %s: %w", what, o.ReadyTimeout, err)
		case <-tick.C:
		}
	}
}

// writeFile writes data to root+p atomically (temp file, fsync, rename), creating parents.
func writeFile(root, p string, mode os.FileMode, data []byte) error {
	full := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(full), "."+filepath.Base(full)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", p, err)
	}
	if err := f.Chmod(mode.Perm()); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, full); err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return nil
}

// cmdlineValue returns the value of key=value on the kernel command line.
func cmdlineValue(line, key string) (string, bool) {
	for _, f := range cmdline.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}
