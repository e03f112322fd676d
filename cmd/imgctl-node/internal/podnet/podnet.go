// Package podnet is imgctl-podnet.service (imgctl-node podnet): pod networking for a node on
// one L2 segment with the other nodes. With the kubelet's credentials it
//
//   - waits until its Node has spec.podCIDR (the controller-manager allocates one per Node when
//     kubeadm's podSubnet is set), then writes the CNI configuration (ConfPath: bridge cni0 with
//     host-local addresses from the pod CIDR, portmap) for containerd's CRI plugin, and
//   - every Interval lists the Nodes and keeps exactly one route per other Node's pod CIDR via
//     its InternalIP (host-gw), marked RouteProtocol, removing the routes of Nodes that left.
//
// Everything read from the API server is checked before it reaches a file or a route. Each
// change is one console line (step=podnet); a failed try is one line when its error differs
// from the last one, and the next try follows after Interval.
package podnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/render"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
)

// Defaults for Options.
const (
	DefaultInterval   = 10 * time.Second
	DefaultTryTimeout = 10 * time.Second
)

// RouteTable is the routing table podnet manages; Routes of RouteProtocol only.
type RouteTable interface {
	List() ([]Route, error)
	Replace(Route) error
	Delete(Route) error
}

// Options configure Run.
type Options struct {
	NodeName string // this node's Node object
	// ClusterCIDR is the cluster's pod CIDR (spec.cluster.podCIDR); when valid, a Node's pod
	// CIDR outside it is ignored, and so is an InternalIP inside it.
	ClusterCIDR netip.Prefix
	Kubeconfig  string        // default render.KubeletKubeconfigPath
	ConfPath    string        // default ConfPath
	Interval    time.Duration // between tries and route syncs; default DefaultInterval
	TryTimeout  time.Duration // bounds each API request; default DefaultTryTimeout
	Routes      RouteTable    // default: the main table through netlink
	Steps       *steplog.Logger
	Logger      *slog.Logger
}

func (o *Options) defaults() {
	if o.Kubeconfig == "" {
		o.Kubeconfig = render.KubeletKubeconfigPath
	}
	if o.ConfPath == "" {
		o.ConfPath = ConfPath
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.TryTimeout <= 0 {
		o.TryTimeout = DefaultTryTimeout
	}
	if o.Routes == nil {
		o.Routes = netlinkRoutes{}
	}
	if o.Steps == nil {
		o.Steps = steplog.New(io.Discard)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// state is what the loop remembers between cycles.
type state struct {
	podCIDR netip.Prefix
	lastErr string // the last failure line's error; "" after a success
	ignored []string
	waiting bool // the "no pod CIDR yet" line was written
}

// Run keeps the node's pod network until ctx ends (nil then). It never gives up on the API
// server: every failed try is retried after Interval.
func Run(ctx context.Context, o Options) error {
	o.defaults()
	if o.NodeName == "" {
		return errors.New("podnet: no node name")
	}
	var st state
	for {
		o.cycle(ctx, &st)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.Interval):
		}
	}
}

// cycle is one try: the pod CIDR (until known), the CNI configuration, the routes.
func (o *Options) cycle(ctx context.Context, st *state) {
	s := o.Steps.Start("podnet")
	kv, changed, err := o.try(ctx, st)
	if err != nil {
		if ctx.Err() != nil {
			return // stopping
		}
		if msg := err.Error(); msg != st.lastErr {
			st.lastErr = msg
			s.Fail(err, kv...)
		}
		o.Logger.Warn("podnet try failed; retrying", "in", o.Interval, "err", err)
		return
	}
	if changed || st.lastErr != "" {
		s.Done(kv...)
	}
	st.lastErr = ""
}

func (o *Options) try(ctx context.Context, st *state) (kv []any, changed bool, err error) {
	c, err := loadClient(o.Kubeconfig, o.TryTimeout)
	if err != nil {
		return nil, false, err
	}
	defer c.close()
	nodes, err := c.listNodes(ctx)
	if err != nil {
		return nil, false, err
	}
	i := slices.IndexFunc(nodes, func(n apiNode) bool { return n.Metadata.Name == o.NodeName })
	if i < 0 {
		return nil, false, fmt.Errorf("node %q is not in the API server's Node list (not registered yet, or deleted)", o.NodeName)
	}
	// The pod CIDR of a Node never changes, but a Node deleted and registered again may get
	// another one: it is read every time.
	p, err := podCIDR(nodes[i], o.ClusterCIDR)
	switch {
	case errors.Is(err, errNoPodCIDR) && !st.podCIDR.IsValid():
		if !st.waiting {
			st.waiting = true
			o.Steps.Start("podnet").Progress("node", o.NodeName, "waiting", "for spec.podCIDR (the controller-manager allocates it)")
		}
		return nil, false, nil
	case errors.Is(err, errNoPodCIDR):
		// Registered again, not allocated yet: keep the configuration until it is.
	case err != nil:
		return []any{"node", o.NodeName}, false, err
	default:
		st.podCIDR = p
	}
	kv = []any{"podcidr", st.podCIDR.String()}
	wrote, err := o.ensureConflist(st.podCIDR)
	if err != nil {
		return kv, false, err
	}
	if wrote {
		kv = append(kv, "cni", o.ConfPath)
	}
	want, ignored := desiredRoutes(nodes, o.NodeName, st.podCIDR, o.ClusterCIDR)
	added, removed, err := syncRoutes(o.Routes, want)
	kv = append(kv, "routes", len(want))
	if len(added) > 0 {
		kv = append(kv, "added", routeList(added))
	}
	if len(removed) > 0 {
		kv = append(kv, "removed", routeList(removed))
	}
	newIgnored := !slices.Equal(ignored, st.ignored)
	if len(ignored) > 0 {
		kv = append(kv, "ignored", ignoredSummary(ignored))
		if newIgnored {
			for _, i := range ignored {
				o.Logger.Warn("podnet leaves a Node out", "why", i)
			}
		}
	}
	st.ignored = ignored
	return kv, wrote || len(added) > 0 || len(removed) > 0 || newIgnored, err
}

// ensureConflist writes the CNI configuration when the file differs from it.
func (o *Options) ensureConflist(p netip.Prefix) (bool, error) {
	want, err := Conflist(p)
	if err != nil {
		return false, err
	}
	if have, err := os.ReadFile(o.ConfPath); err == nil && bytes.Equal(have, want) {
		return false, nil
	}
	if err := writeAtomic(o.ConfPath, want); err != nil {
		return false, err
	}
	return true, nil
}

// syncRoutes makes the table's RouteProtocol routes exactly want: it removes the routes to
// destinations not wanted or through another gateway and adds the missing ones. It goes on
// after a failed change and returns every error.
func syncRoutes(t RouteTable, want []Route) (added, removed []Route, err error) {
	have, err := t.List()
	if err != nil {
		return nil, nil, err
	}
	var errs []error
	for _, h := range have {
		if slices.Contains(want, h) {
			continue
		}
		if err := t.Delete(h); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, h)
	}
	for _, w := range want {
		if slices.Contains(have, w) {
			continue
		}
		if err := t.Replace(w); err != nil {
			if errors.Is(err, unix.ENETUNREACH) {
				err = fmt.Errorf("%w (podnet routes pod CIDRs only to nodes on this node's L2 segment)", err)
			}
			errs = append(errs, err)
			continue
		}
		added = append(added, w)
	}
	return added, removed, errors.Join(errs...)
}

// maxIgnoredShown bounds the left-out Nodes one console line names; the journal has all.
const maxIgnoredShown = 10

func ignoredSummary(ignored []string) string {
	if len(ignored) <= maxIgnoredShown {
		return strings.Join(ignored, "; ")
	}
	return strings.Join(ignored[:maxIgnoredShown], "; ") + fmt.Sprintf("; and %d more (in the journal)", len(ignored)-maxIgnoredShown)
}

func routeList(rs []Route) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ",")
}
