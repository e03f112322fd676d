package rollout

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/inventory"
	"github.com/imgctl/imgctl/images/manifest"
	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/images/store"
)

// Images is where Status looks the served images up (a *store.Store).
type Images interface {
	// Resolve finds an image by digest (store.ErrNotFound if it is not there).
	Resolve(ctx context.Context, ref string) (store.Image, error)
}

// Rollout is where every node and channel stands: `imgctl rollout status -o json` prints it.
type Rollout struct {
	Channels []ChannelStatus `json:"channels"` // in promotion order
	Nodes    []NodeStatus    `json:"nodes"`    // by node name
	// Problems are report files that cannot be read and images that cannot be looked up; the
	// rest is shown despite them.
	Problems []string `json:"problems,omitempty"`
}

// ChannelStatus is how far a channel's head has rolled out.
type ChannelStatus struct {
	Name    string        `json:"name"`
	Head    digest.Digest `json:"head,omitempty"` // "" for a channel that never moved
	Version string        `json:"version,omitempty"`
	// Nodes is how many nodes were last served an image of this channel, plus, with an
	// inventory, its machines that never reported (NeverReported).
	Nodes int `json:"nodes"`
	// OnHead counts the nodes that run the head: served it, last report ok, root as served.
	OnHead int `json:"onHead"`
	// Stale counts the nodes last served another image (they have not rebooted since the move).
	Stale int `json:"stale"`
	// Failed counts the nodes whose last report is a failure (whatever image).
	Failed int `json:"failed"`
	// RootMismatch counts the nodes served the head that report another root.
	RootMismatch int `json:"rootMismatch"`
	// NeverReported counts the inventory's machines in this channel that never reported
	// (only with WithInventory).
	NeverReported int `json:"neverReported"`
}

// NodeStatus is a node's last boot report and what the server served it, or, with an
// inventory, a machine of it that never reported (Reported false: only Node, Channel and Role
// are set).
type NodeStatus struct {
	Node    string `json:"node"`
	Channel string `json:"channel,omitempty"` // "" for a pinned image
	Role    string `json:"role,omitempty"`    // as the node reported it, else as the inventory gave it
	// Reported is false for an inventory machine that never reported.
	Reported bool `json:"reported"`
	// Image is the image the node was served; Version its version (from the store, else from a
	// channel's history; "" if neither knows it).
	Image   digest.Digest `json:"image,omitempty"`
	Version string        `json:"version,omitempty"`
	// OnHead: Image is its channel's head now.
	OnHead bool          `json:"onHead"`
	Phase  nodeapi.Phase `json:"phase,omitempty"`
	// LastStep is the last step the report lists; OK false names the failed step in Failed,
	// and Error is that step's message.
	LastStep string    `json:"lastStep,omitempty"`
	OK       bool      `json:"ok"`
	Failed   string    `json:"failed,omitempty"`
	Error    string    `json:"error,omitempty"`
	When     time.Time `json:"when,omitzero"` // when the server received the report
	// RootDigest is the root the node reports it runs; ServedRoot the served image's
	// rootfs.squashfs ("" if the image is not in the store or has none). RootMismatch: both
	// are known and differ.
	RootDigest   digest.Digest `json:"rootDigest,omitempty"`
	ServedRoot   digest.Digest `json:"servedRoot,omitempty"`
	RootMismatch bool          `json:"rootMismatch,omitempty"`
	BootID       string        `json:"bootID,omitempty"`
	Addr         string        `json:"addr,omitempty"`
}

// Option adds to what Status shows.
type Option func(*options)

type options struct {
	inv *inventory.Inventory
}

// WithInventory adds the machines of inv that never reported, as nodes with Reported false in
// their inventory channel, which counts them (so "1/2 on head" counts the machine that never
// came up). A machine whose channel the store does not have is shown and named in Problems.
// Nodes that reported are shown whether or not inv has them, with the channel they were
// served.
func WithInventory(inv *inventory.Inventory) Option {
	return func(o *options) { o.inv = inv }
}

// Status tells where the nodes that reported and the channels of channels stand. images (nil:
// none) is where the served images' versions and roots are looked up. only, if not "", keeps
// that channel and its nodes; a channel not in the order is an error wrapping
// channel.ErrUnknownChannel that lists the known ones.
func Status(ctx context.Context, r *Reports, channels channel.Backend, images Images, only string, opts ...Option) (Rollout, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	order, err := channels.Order()
	if err != nil {
		return Rollout{}, fmt.Errorf("rollout status: %w", err)
	}
	if only != "" && !slices.Contains(order, only) {
		return Rollout{}, fmt.Errorf("rollout status: channel %q: %w (known channels: %s)", only, channel.ErrUnknownChannel, strings.Join(order, ", "))
	}
	var out Rollout
	heads := make(map[string]digest.Digest, len(order))
	recorded := map[digest.Digest]string{} // versions channel histories recorded
	for _, ch := range order {
		h, err := channels.History(ctx, ch)
		if err != nil {
			return Rollout{}, fmt.Errorf("rollout status: %w", err)
		}
		for _, e := range h.Entries {
			if e.ToVersion != "" {
				recorded[e.To] = e.ToVersion
			}
		}
		heads[ch] = h.Head()
		if only == "" || ch == only {
			out.Channels = append(out.Channels, ChannelStatus{Name: ch, Head: h.Head()})
		}
	}

	recs, err := r.Latest(ctx)
	reported := make(map[string]bool, len(recs)) // nodes with a report file, readable or not
	if err != nil {
		problems, ok := corruptOnly(err)
		if !ok {
			return Rollout{}, fmt.Errorf("rollout status: %w", err)
		}
		out.Problems = append(out.Problems, problems...)
		for _, n := range corruptNodes(r.Dir(), err) {
			reported[n] = true
		}
	}
	for _, rec := range recs {
		reported[rec.Node] = true
	}

	type served struct {
		version string
		root    digest.Digest
	}
	lookedUp := map[digest.Digest]served{}
	lookup := func(d digest.Digest) served {
		if s, ok := lookedUp[d]; ok {
			return s
		}
		s := served{version: recorded[d]}
		if images != nil && d != "" {
			img, err := images.Resolve(ctx, d.String())
			switch {
			case err == nil:
				s.version = img.Config.Version
				for _, l := range img.Manifest.Layers {
					if l.MediaType == manifest.SquashfsMediaType {
						s.root = l.Digest
						break
					}
				}
			case !errors.Is(err, store.ErrNotFound):
				out.Problems = append(out.Problems, fmt.Sprintf("image %s: %v", d, err))
			}
		}
		lookedUp[d] = s
		return s
	}
	for i := range out.Channels {
		out.Channels[i].Version = lookup(out.Channels[i].Head).version
	}

	for _, rec := range recs {
		if only != "" && rec.Channel != only {
			continue
		}
		s := lookup(rec.Image)
		n := NodeStatus{
			Node: rec.Node, Channel: rec.Channel, Role: rec.Role, Reported: true, Image: rec.Image, Version: s.version,
			Phase: rec.Report.Phase, OK: rec.Report.OK, Failed: rec.Report.Failed, When: rec.Received,
			RootDigest: digest.Digest(rec.Report.RootDigest), ServedRoot: s.root, BootID: rec.BootID, Addr: rec.Addr,
		}
		if rec.Report.Role != "" {
			n.Role = rec.Report.Role
		}
		if len(rec.Report.Steps) > 0 {
			n.LastStep = rec.Report.Steps[len(rec.Report.Steps)-1].Name
		}
		for _, st := range rec.Report.Steps {
			if st.Name == n.Failed && st.Status == nodeapi.StatusFail {
				n.Error = st.Error
				break
			}
		}
		n.RootMismatch = n.RootDigest != "" && n.ServedRoot != "" && n.RootDigest != n.ServedRoot
		head, inOrder := heads[rec.Channel]
		n.OnHead = inOrder && head != "" && rec.Image == head
		out.Nodes = append(out.Nodes, n)
	}
	if o.inv != nil {
		for _, m := range o.inv.Machines {
			if reported[m.Name] || only != "" && m.Channel != only {
				continue
			}
			if _, inOrder := heads[m.Channel]; m.Channel != "" && !inOrder {
				out.Problems = append(out.Problems, fmt.Sprintf("inventory %s: machine %q: channel %q is not in the store (known channels: %s)",
					o.inv.Source, m.Name, m.Channel, strings.Join(order, ", ")))
			}
			out.Nodes = append(out.Nodes, NodeStatus{Node: m.Name, Channel: m.Channel, Role: string(m.Role)})
		}
		slices.SortFunc(out.Nodes, func(a, b NodeStatus) int { return strings.Compare(a.Node, b.Node) })
	}
	for _, n := range out.Nodes {
		for i := range out.Channels {
			c := &out.Channels[i]
			if c.Name != n.Channel {
				continue
			}
			c.Nodes++
			switch {
			case !n.Reported:
				c.NeverReported++
			case !n.OK:
				c.Failed++
			case !n.OnHead:
				c.Stale++
			case n.RootMismatch:
				c.RootMismatch++
			default:
				c.OnHead++
			}
		}
	}
	return out, nil
}

// corruptNodes names the nodes whose latest record file in dir is among err's *CorruptErrors.
func corruptNodes(dir string, err error) []string {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	var out []string
	for _, e := range errs {
		var ce *CorruptError
		if errors.As(e, &ce) && filepath.Dir(ce.Path) == filepath.Clean(dir) {
			if n, ok := strings.CutSuffix(filepath.Base(ce.Path), ".json"); ok {
				out = append(out, n)
			}
		}
	}
	return out
}

// corruptOnly returns the messages of err's *CorruptErrors, and whether err is nothing else.
func corruptOnly(err error) ([]string, bool) {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	out := make([]string, 0, len(errs))
	for _, e := range errs {
		var ce *CorruptError
		if !errors.As(e, &ce) {
			return nil, false
		}
		out = append(out, e.Error())
	}
	return out, true
}
