package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/registry"
	"github.com/imgctl/imgctl/images/serve"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/update"
	"github.com/imgctl/imgctl/layers/atomicfile"
)

// withChannels opens the store and its channels (with the store's trust policy, if any).
func (a *app) withChannels(fn func(cmd *cobra.Command, args []string, st *store.Store, l *channel.Log) error) func(*cobra.Command, []string) error {
	return a.withStore(func(cmd *cobra.Command, args []string, st *store.Store) error {
		l, err := channel.Open(st.Dir(), a.logger())
		if err != nil {
			return err
		}
		if err := a.trustPolicy(st, l); err != nil {
			return err
		}
		return fn(cmd, args, st, l)
	})
}

// registryFlags are --registry and --insecure: keep channels in a registry repository instead of
// the local store.
type registryFlags struct {
	repo     string
	insecure bool
}

func (r *registryFlags) add(f *pflag.FlagSet) {
	f.StringVar(&r.repo, "registry", "", "keep the channels in this registry repository (REGISTRY/REPO: tags CH and CH.history) instead of the local store; its images must be pushed there")
	f.BoolVar(&r.insecure, "insecure", false, "with --registry: allow plain HTTP to a non-loopback registry")
}

// backend returns where the channels live (the local store, or --registry) and the Mover that
// applies the promotion rules there. The promotion order is the local store's; the Mover checks
// no signatures until applyTrust sets the trust policy of those channels.
func (a *app) backend(st *store.Store, l *channel.Log, r registryFlags) (channel.Backend, *channel.Mover, error) {
	if r.repo == "" {
		m := l.Mover(st)
		m.Verify = nil
		return l, m, nil
	}
	order, err := l.Order()
	if err != nil {
		return nil, nil, err
	}
	o := registry.Options{Insecure: r.insecure, Logger: a.logger()}
	b := &registry.Channels{Repo: r.repo, Options: o, OrderList: order}
	return b, &channel.Mover{Channels: b, Images: &registry.Images{Repo: r.repo, Options: o}, Logger: a.logger()}, nil
}

func (a *app) channelCmd() *cobra.Command {
	var reg registryFlags
	cmd := &cobra.Command{
		Use:   "channel",
		Short: "Show channels (nightly, staging, prod): named pointers to images, with history",
		Long: `A channel points to one immutable image; promote and rollback move it (compare-and-swap, with
an append-only history of who moved it, when, from what, to what and why). The store's channel
order (default nightly, staging, prod) says which channel an image must have been in before it
can be promoted into the next. With --registry REGISTRY/REPO the channels are those published
in that repository (imgctl push --channel, or promote --registry).`,
	}
	reg.add(cmd.PersistentFlags())
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the channels in promotion order with the image each points to",
		Args:  cobra.NoArgs,
		RunE: a.withChannels(func(cmd *cobra.Command, _ []string, st *store.Store, l *channel.Log) error {
			b, _, err := a.backend(st, l, reg)
			if err != nil {
				return err
			}
			states, err := channel.List(cmd.Context(), b, st)
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(states)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CHANNEL\tDIGEST\tVERSION\tMOVES\tLAST MOVE")
			for _, s := range states {
				d, last := "-", "-"
				if s.Head != "" {
					d = s.Head.Encoded()[:12]
					last = s.LastMove.UTC().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", s.Name, d, orDash(s.Version), s.Entries, last)
			}
			return tw.Flush()
		}),
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "show CHANNEL",
		Short: "Show the image a channel points to",
		Args:  cobra.ExactArgs(1),
		RunE: a.withChannels(func(cmd *cobra.Command, args []string, st *store.Store, l *channel.Log) error {
			b, _, err := a.backend(st, l, reg)
			if err != nil {
				return err
			}
			h, err := b.History(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if len(h.Entries) == 0 {
				return fmt.Errorf("channel %s: %w", args[0], channel.ErrEmpty)
			}
			last := h.Entries[len(h.Entries)-1]
			if a.json() {
				out := map[string]any{"channel": args[0], "digest": last.To, "version": last.ToVersion, "lastMove": last}
				if img, err := st.Resolve(cmd.Context(), string(last.To)); err == nil {
					out["config"] = img.Config
				}
				return a.printJSON(out)
			}
			fmt.Fprintf(a.out, "channel  %s\nversion  %s\nmoved    %s by %s (%s%s)\n%s\n", args[0], orDash(last.ToVersion),
				last.When.UTC().Format(time.DateTime), last.Who, last.Action, reasonSuffix(last.Reason), last.To)
			return nil
		}),
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "history CHANNEL",
		Short: "Show every move of a channel, newest first",
		Args:  cobra.ExactArgs(1),
		RunE: a.withChannels(func(cmd *cobra.Command, args []string, st *store.Store, l *channel.Log) error {
			b, _, err := a.backend(st, l, reg)
			if err != nil {
				return err
			}
			h, err := b.History(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(h)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tWHEN\tACTION\tFROM\tTO\tWHO\tREASON")
			for i := len(h.Entries) - 1; i >= 0; i-- {
				e := h.Entries[i]
				action := e.Action
				if e.Forced {
					action += " (forced)"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.When.UTC().Format(time.DateTime), action,
					short(e.FromVersion, string(e.From)), short(e.ToVersion, string(e.To)), e.Who, e.Reason)
			}
			return tw.Flush()
		}),
	})
	cmd.AddCommand(a.channelPointerCmd(&reg))
	order := &cobra.Command{
		Use:   "order [CHANNEL...]",
		Short: "Show or set the promotion order of the store's channels",
		Long: `Without arguments, prints the order. With arguments, sets it: an image must have been in a
channel before it can be promoted into the next one (promote --force skips a stage, recorded).`,
		RunE: a.withChannels(func(cmd *cobra.Command, args []string, _ *store.Store, l *channel.Log) error {
			if len(args) > 0 {
				if err := l.SetOrder(cmd.Context(), args); err != nil {
					return err
				}
			}
			o, err := l.Order()
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(map[string]any{"order": o})
			}
			fmt.Fprintln(a.out, strings.Join(o, " -> "))
			return nil
		}),
	}
	cmd.AddCommand(order)
	return cmd
}

func (a *app) channelPointerCmd(reg *registryFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "pointer CHANNEL [--output FILE]",
		Short: "Print (or write) the channel's update pointer: the JSON disk nodes poll to learn their next image",
		Long: `Prints the document imgctl serve answers at GET /v1/channels/CHANNEL (media type
` + update.PointerMediaType + `): schemaVersion, mediaType, channel, and the image's
manifest digest, version, Kubernetes version and architecture. Serve it as a static file at
SERVER/v1/channels/CHANNEL beside the blobs at SERVER/blobs/sha256:HEX to update disk nodes
without imgctl serve. Like serve, it refuses a channel whose image the store's trust policy
refuses or that nodes cannot install in place (no root squashfs with a dm-verity tree).
--output replaces FILE atomically (temp file, fsync, rename): a web server never serves half a
pointer, and a refusal leaves FILE as it was.`,
		Args: cobra.ExactArgs(1),
		RunE: a.withChannels(func(cmd *cobra.Command, args []string, st *store.Store, l *channel.Log) error {
			b, _, err := a.backend(st, l, *reg)
			if err != nil {
				return err
			}
			data, err := serve.Pointer(cmd.Context(), st, b, args[0])
			if err != nil {
				return err
			}
			if output == "" {
				_, err := a.out.Write(data)
				return err
			}
			if err := atomicfile.Write("", output, data, 0o644); err != nil {
				return fmt.Errorf("--output %s: %w", output, err)
			}
			return nil
		}),
	}
	cmd.Flags().StringVar(&output, "output", "", "write the pointer to FILE (replaced atomically) instead of stdout")
	return cmd
}

func (a *app) promoteCmd() *cobra.Command {
	var p channel.Promotion
	var signKey string
	var reg registryFlags
	var aws awsFlags
	cmd := &cobra.Command{
		Use:   "promote IMAGE --to CHANNEL",
		Short: "Point a channel at an image (compare-and-swap, recorded in the channel's history)",
		Long: `IMAGE is a digest, a unique digest prefix (4+ hex digits), a version, or a channel name
(promote what that channel points to, e.g. "imgctl promote staging --to prod"). The image's blobs
are re-hashed first; with a trust policy (STORE/trust.json, or with --registry REPO:_trust; see
imgctl trust) it must carry a valid signature, and without one a warning says so.
Promoting into a channel requires that the image was in the previous channel of the order,
unless --force (recorded). If another promotion moves the channel at the same time, exactly one
wins; the other fails with a conflict and changes nothing.
With AWS settings (imgctl store aws), the image's AMI must be available (and shared as set) in
every region listed, and PREFIX/CHANNEL/image_id is written there after the move; a parameter
someone else changed is refused unless --force. Promoting the image already in the channel
writes the parameters again (finishing a mirror that failed half-way).`,
		Args: cobra.ExactArgs(1),
		RunE: a.withChannels(func(cmd *cobra.Command, args []string, st *store.Store, l *channel.Log) error {
			if p.To == "" {
				return fmt.Errorf("--to CHANNEL is required")
			}
			p.Image, p.Tool = args[0], "imgctl "+version
			if signKey != "" {
				if reg.repo != "" {
					return fmt.Errorf("--sign-key signs in the local store: sign before pushing, not with --registry")
				}
				img, err := l.Mover(st).Resolve(cmd.Context(), p.Image)
				if err != nil {
					return err
				}
				if err := a.signImage(cmd, st, img, signKey); err != nil {
					return err
				}
			}
			_, m, err := a.backend(st, l, reg)
			if err != nil {
				return err
			}
			if err := a.applyTrust(cmd.Context(), m, st, l, reg, "promoting"); err != nil {
				return err
			}
			if err := a.awsMirror(cmd.Context(), m, st, reg, aws, p.Force); err != nil {
				return err
			}
			e, err := m.Promote(cmd.Context(), p)
			if err != nil {
				return err
			}
			return a.printMove(e)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&p.To, "to", "", "channel to move (required)")
	f.StringVar(&p.Reason, "reason", "", "why, recorded in the history")
	f.BoolVar(&p.Force, "force", false, "promote even if the image was never in the previous channel (recorded); with AWS settings, also overwrite a channel parameter someone else changed")
	f.StringVar(&signKey, "sign-key", "", "sign the image with this private key (imgctl key generate) before promoting")
	reg.add(f)
	aws.addConnection(f, "with AWS settings (imgctl store aws): ")
	return cmd
}

func (a *app) rollbackCmd() *cobra.Command {
	var r channel.Rollback
	var reg registryFlags
	var aws awsFlags
	cmd := &cobra.Command{
		Use:   "rollback CHANNEL [--to IMAGE]",
		Short: "Point a channel back at the image it had before its current one (or at --to IMAGE)",
		Long: `Without --to, the channel goes back to the image it pointed to before its current image was
promoted into it; rolling back again goes further back. --to IMAGE must have been in the
channel before, unless --force. Recorded in the channel's history like a promotion.
With AWS settings (imgctl store aws), PREFIX/CHANNEL/image_id is moved back in every region as
for promote (a parameter someone else changed is refused unless --force).`,
		Args: cobra.ExactArgs(1),
		RunE: a.withChannels(func(cmd *cobra.Command, args []string, st *store.Store, l *channel.Log) error {
			r.Channel, r.Tool = args[0], "imgctl "+version
			_, m, err := a.backend(st, l, reg)
			if err != nil {
				return err
			}
			if err := a.applyTrust(cmd.Context(), m, st, l, reg, "rolling back to"); err != nil {
				return err
			}
			if err := a.awsMirror(cmd.Context(), m, st, reg, aws, r.Force); err != nil {
				return err
			}
			e, err := m.Rollback(cmd.Context(), r)
			if err != nil {
				return err
			}
			return a.printMove(e)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&r.To, "to", "", "image to go back to (digest, prefix, version or channel)")
	f.StringVar(&r.Reason, "reason", "", "why, recorded in the history")
	f.BoolVar(&r.Force, "force", false, "allow --to an image that was never in this channel (recorded); with AWS settings, also overwrite a channel parameter someone else changed")
	reg.add(f)
	aws.addConnection(f, "with AWS settings (imgctl store aws): ")
	return cmd
}

func (a *app) printMove(e channel.Entry) error {
	if a.json() {
		return a.printJSON(e)
	}
	fmt.Fprintf(a.out, "%s: %s -> %s (%s #%d%s)\n", e.Channel, short(e.FromVersion, string(e.From)),
		short(e.ToVersion, string(e.To)), e.Action, e.Seq, reasonSuffix(e.Reason))
	return nil
}

func short(version, d string) string {
	switch {
	case version != "":
		return version
	case d == "":
		return "(empty)"
	case len(d) > 19:
		return d[:19]
	}
	return d
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return ": " + r
}
