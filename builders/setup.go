package builders

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/imgctl/imgctl/layers/cache"
	"github.com/imgctl/imgctl/layers/fetch"
	"github.com/imgctl/imgctl/layers/limits"
	"github.com/imgctl/imgctl/layers/source"
	"github.com/imgctl/imgctl/layers/spec"
)

// EnvConfig is what a source environment is made from: where sources are cached, how they
// are fetched, and the node agent the bootstrap layer and every initrd carry.
type EnvConfig struct {
	CacheDir string
	Offline  bool     // only the cache: never touch the network
	Mirrors  []string // FROM=TO URL prefix rewrites
	Keyring  string   // OpenPGP keyring for Debian repositories ("" = the system's)
	Limits   limits.Limits
	// NodeAgent is the static imgctl-node binary; "" = imgctl-node beside the running
	// executable, then on $PATH (DefaultNodeAgent).
	NodeAgent string
	Logger    *slog.Logger
	// FetchProgress, if set, receives download progress.
	FetchProgress func(fetch.Progress)
}

// NewEnv opens the cache and returns the source environment c describes.
func NewEnv(c EnvConfig) (*source.Env, error) {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ca, err := cache.Open(c.CacheDir, log)
	if err != nil {
		return nil, err
	}
	if c.Limits.RateWindow < 0 {
		return nil, &FieldError{"transfer-rate-window", c.Limits.RateWindow.String(), errors.New("expected a positive duration such as 30s")}
	}
	client := &fetch.Client{Offline: c.Offline, Logger: log, Limits: c.Limits, Progress: c.FetchProgress}
	for _, m := range c.Mirrors {
		mm, err := fetch.ParseMirror(m)
		if err != nil {
			return nil, &FieldError{"mirror", m, err}
		}
		client.Mirrors = append(client.Mirrors, mm)
	}
	agent := c.NodeAgent
	if agent == "" {
		agent = DefaultNodeAgent()
	}
	return &source.Env{Cache: ca, Fetch: client, Keyring: c.Keyring, Logger: log, NodeAgent: agent, Limits: c.Limits}, nil
}

// DefaultNodeAgent finds imgctl-node beside the running executable, then on $PATH; "" if
// neither has one.
func DefaultNodeAgent() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "imgctl-node")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("imgctl-node"); err == nil {
		return p
	}
	return ""
}

// Setup is what a person or a pipeline gives to start a build, besides the store, the lock and
// the targets: the spec (a file, or the embedded default for a Kubernetes version), source
// overrides, SOURCE_DATE_EPOCH and the source environment.
type Setup struct {
	SpecFile   string // "" = the embedded default spec
	Kubernetes string // the embedded default's Kubernetes version (not with SpecFile)
	Flavor     string // the embedded default's flavor (spec.Flavors; "" = cloud; not with SpecFile)
	// Sources replace a role's sources: ROLE=URI, repeated for several sources of one role.
	Sources []string
	// SourceDateEpoch is SOURCE_DATE_EPOCH's value ("" = unset: the spec's, then the lock's,
	// then the current time).
	SourceDateEpoch string
	Env             EnvConfig
}

// Prepare loads and validates the spec, applies the overrides and opens the source
// environment: the returned Options lack only the store, the lock and the targets.
func Prepare(s Setup) (Options, error) {
	n, epoch, err := s.Check()
	if err != nil {
		return Options{}, err
	}
	env, err := NewEnv(s.Env)
	if err != nil {
		return Options{}, err
	}
	return Options{Spec: n, SourceDateEpoch: epoch, Env: env, Logger: s.Env.Logger}, nil
}

// Check is Prepare without opening the source environment (no side effect): it loads and
// validates the spec with the overrides applied and reads SourceDateEpoch. A front end that
// must check its input before doing anything (a Packer builder's Prepare) calls it.
func (s Setup) Check() (*spec.NodeImage, *int64, error) {
	var n *spec.NodeImage
	var err error
	switch {
	case s.SpecFile != "" && (s.Kubernetes != "" || s.Flavor != ""):
		return nil, nil, fmt.Errorf("give either a spec file or a Kubernetes version and flavor for the default spec, not both")
	case s.SpecFile != "":
		n, err = spec.Load(s.SpecFile)
	default:
		flavor := s.Flavor
		if flavor == "" {
			flavor = spec.FlavorCloud
		}
		n, err = spec.DefaultFlavor(s.Kubernetes, flavor)
	}
	if err != nil {
		return nil, nil, err
	}
	if err := ApplySources(n, s.Sources); err != nil {
		return nil, nil, err
	}
	if err := n.Validate(); err != nil {
		return nil, nil, err
	}
	epoch, err := ParseSourceDateEpoch(s.SourceDateEpoch)
	if err != nil {
		return nil, nil, err
	}
	return n, epoch, nil
}

// ApplySources replaces the sources of each role named in overrides (ROLE=URI; several for one
// role keep their order).
func ApplySources(n *spec.NodeImage, overrides []string) error {
	for _, s := range overrides {
		role, uri, ok := strings.Cut(s, "=")
		if !ok || uri == "" {
			return &FieldError{"source", s, errors.New("expected ROLE=URI")}
		}
		r, err := spec.ParseRole(role)
		if err != nil {
			return &FieldError{"source", s, err}
		}
		var uris []string
		for _, other := range overrides {
			if ro, u, _ := strings.Cut(other, "="); ro == role {
				uris = append(uris, u)
			}
		}
		if err := n.SetSources(r, uris); err != nil {
			return &FieldError{"source", s, err}
		}
	}
	return nil
}

// ParseSourceDateEpoch reads a SOURCE_DATE_EPOCH value; "" is nil (unset).
func ParseSourceDateEpoch(v string) (*int64, error) {
	if v == "" {
		return nil, nil
	}
	e, err := strconv.ParseInt(v, 10, 64)
	if err != nil || e < 0 {
		return nil, fmt.Errorf("SOURCE_DATE_EPOCH=%q: expected seconds since 1970", v)
	}
	return &e, nil
}

// FieldError is bad input in one field of a Setup or EnvConfig. Field is named like the
// command-line flag ("source", "mirror"), so a front end can name its own field instead.
type FieldError struct {
	Field, Value string
	Err          error
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s %q: %v", e.Field, e.Value, e.Err) }

func (e *FieldError) Unwrap() error { return e.Err }
