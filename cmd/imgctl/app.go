package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/limits"
	"github.com/imgctl/imgctl/layers/source"
)

// app holds the injected streams and the global flags.
type app struct {
	in       io.Reader
	out, err io.Writer

	format   string
	storeDir string
	cacheDir string
	offline  bool
	mirrors  []string
	keyring  string
	verbose  int
	quiet    bool
	limits   limits.Limits // per-source limits: build and layers inspect (limitFlags)
	progress *renderer     // while a command shows progress (showProgress), else nil
}

func newApp(in io.Reader, out, err io.Writer) *app {
	return &app{in: in, out: out, err: err}
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "imgctl",
		Short: "Build immutable Kubernetes node images from layers pinned by digest",
		Long: `imgctl composes a node image from layers (base OS, kernel, bootloader, containerd + runc,
kubelet, bootstrap units, extras) whose sources are pinned by digest in imgctl.lock, into one
normalized rootfs, and keeps the result as an immutable image in an OCI layout store. Channels
(nightly -> staging -> prod) point at images: promote and rollback move them, with history;
push and pull copy images to and from OCI registries; gc removes what no channel needs.

Without a spec file, "imgctl build --k8s VERSION" uses the embedded default spec.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.SetIn(a.in)
	root.SetOut(a.out)
	root.SetErr(a.err)
	f := root.PersistentFlags()
	f.StringVarP(&a.format, "format", "o", "text", "output format: text or json")
	f.StringVar(&a.storeDir, "store", store.DefaultDir, "image store (an OCI image layout directory)")
	f.StringVar(&a.cacheDir, "cache", defaultCacheDir(), "shared download and layer cache")
	f.BoolVar(&a.offline, "offline", false, "use only the cache: never touch the network")
	f.StringArrayVar(&a.mirrors, "mirror", nil, "rewrite source URLs: FROM=TO (prefix match; repeatable), e.g. https://dl.k8s.io/=https://mirror.local/k8s/")
	f.StringVar(&a.keyring, "keyring", "", "OpenPGP keyring for Debian repositories (default: the system's debian-archive-keyring)")
	f.CountVarP(&a.verbose, "verbose", "v", "log more (-v info, -vv debug)")
	f.BoolVarP(&a.quiet, "quiet", "q", false, "no progress or timing output on stderr")
	root.AddCommand(a.buildCmd(), a.imagesCmd(), a.layersCmd(), a.storeCmd(),
		a.channelCmd(), a.promoteCmd(), a.rollbackCmd(), a.pushCmd(), a.pullCmd(), a.gcCmd(),
		a.keyCmd(), a.signCmd(), a.verifyCmd(), a.trustCmd(), a.rolloutCmd(), a.serveCmd(),
		a.publishCmd())
	return root
}

func defaultCacheDir() string {
	if d := os.Getenv("IMGCTL_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "imgctl")
	}
	return filepath.Join(os.TempDir(), "imgctl-cache")
}

func (a *app) logger() *slog.Logger {
	level := slog.LevelWarn
	switch {
	case a.verbose == 1:
		level = slog.LevelInfo
	case a.verbose > 1:
		level = slog.LevelDebug
	}
	w := a.err
	if a.progress != nil {
		w = a.progress.logWriter() // log lines go above the live progress block
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

func (a *app) terminal() bool {
	f, ok := a.err.(*os.File)
	return ok && !a.quiet && term.IsTerminal(int(f.Fd()))
}

// termWidth is the width of the terminal on stderr (80 if unknown).
func (a *app) termWidth() int {
	if f, ok := a.err.(*os.File); ok {
		if w, _, err := term.GetSize(int(f.Fd())); err == nil && w > 0 {
			return w
		}
	}
	return 80
}

func (a *app) json() bool { return a.format == "json" }

func (a *app) checkFormat() error {
	if a.format != "text" && a.format != "json" {
		return fmt.Errorf("--format %q: expected text or json", a.format)
	}
	return nil
}

func (a *app) openStore(ctx context.Context) (*store.Store, error) {
	return store.Open(ctx, a.storeDir, a.logger())
}

// withStore is the RunE of a command that reads the store: it checks --format and opens the
// store before calling fn.
func (a *app) withStore(fn func(cmd *cobra.Command, args []string, st *store.Store) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := a.checkFormat(); err != nil {
			return err
		}
		st, err := a.openStore(cmd.Context())
		if err != nil {
			return err
		}
		return fn(cmd, args, st)
	}
}

// envConfig is the source environment the global flags describe.
func (a *app) envConfig() builders.EnvConfig {
	c := builders.EnvConfig{CacheDir: a.cacheDir, Offline: a.offline, Mirrors: a.mirrors, Keyring: a.keyring,
		Limits: a.limits, Logger: a.logger()}
	if a.progress != nil {
		c.FetchProgress = a.progress.download
	}
	return c
}

// env builds the source environment: cache, fetch client with mirrors, progress.
func (a *app) env() (*source.Env, error) {
	env, err := builders.NewEnv(a.envConfig())
	return env, flagError(err)
}

// flagError names the command-line flag of a builders.FieldError.
func flagError(err error) error {
	var fe *builders.FieldError
	if errors.As(err, &fe) {
		return fmt.Errorf("--%s %q: %w", fe.Field, fe.Value, fe.Err)
	}
	return err
}

// limitFlags adds the per-source limits to a command that fetches and converts sources.
func (a *app) limitFlags(f *pflag.FlagSet) {
	a.limits = limits.Default()
	f.Var(&a.limits.MaxSourceSize, "max-source-size", "largest download, and largest layer tar, one source may produce, e.g. 8GiB, 512MiB (0: no limit)")
	f.Var(&a.limits.MaxExpansionRatio, "max-expansion-ratio", "refuse a source whose layer tar is more than this many times its input (+1 MiB): compression bombs, sparse tar entries (0: no limit)")
	f.Var(&a.limits.MinTransferRate, "min-transfer-rate", "fail a download attempt (then retry it) that averages less than this over --transfer-rate-window, e.g. 1KiB/s (0: no minimum)")
	f.DurationVar(&a.limits.RateWindow, "transfer-rate-window", a.limits.RateWindow, "window over which --min-transfer-rate is measured")
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
