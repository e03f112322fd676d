package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/registry"
	"github.com/imgctl/imgctl/images/store"
)

func (a *app) pushCmd() *cobra.Command {
	var o registry.Options
	var channels []string
	cmd := &cobra.Command{
		Use:   "push IMAGE REGISTRY/REPO",
		Short: "Copy an image from the store to an OCI registry (same digest), optionally with channels",
		Long: `Uploads the image's blobs (only those the registry lacks) and its manifest, unchanged, so the
digest in the registry is the store's; the tag is the image's version ('+' becomes '_').
IMAGE is a digest, a unique digest prefix, a version or a channel name. --channel CH also
publishes that channel: tag CH points to its image and CH.history holds its history. The image's
signatures (imgctl sign) go along, as OCI referrers and in tag sha256-<hex>.sig, where
'cosign verify --key imgctl.pub' finds them. Credentials come from the usual docker config
($DOCKER_CONFIG/config.json, default ~/.docker/config.json; credential helpers); plain HTTP only
for loopback registries or with --insecure.`,
		Args: cobra.ExactArgs(2),
		RunE: a.withChannels(func(cmd *cobra.Command, args []string, st *store.Store, l *channel.Log) error {
			stopProgress := a.showProgress(cmd)
			defer stopProgress()
			o.Logger = a.logger()
			img, err := l.Mover(st).Resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if len(channels) > 0 {
				// Publishing a channel moves it in the registry: the registry's policy applies.
				verify, err := a.trustHook(cmd.Context(), st, l, registryFlags{repo: args[1], insecure: o.Insecure}, "publishing channels that point to")
				if err != nil {
					return err
				}
				if verify != nil {
					if err := verify(cmd.Context(), img); err != nil {
						return fmt.Errorf("publishing channels %s to %s: refused by the signature policy: %w", strings.Join(channels, ", "), args[1], err)
					}
				}
			}
			d, err := registry.Push(cmd.Context(), st, img, args[1], o)
			stopProgress()
			if err != nil {
				return err
			}
			for _, ch := range channels {
				h, err := l.History(cmd.Context(), ch)
				if err != nil {
					return err
				}
				if h.Head() != img.Digest() {
					return fmt.Errorf("--channel %s points to %s, not the pushed image %s", ch, h.Head(), img.Digest())
				}
				if err := registry.PushChannel(cmd.Context(), args[1], h, o); err != nil {
					return err
				}
			}
			if a.json() {
				return a.printJSON(map[string]any{"digest": img.Digest(), "reference": d.String(), "channels": channels})
			}
			fmt.Fprintln(a.out, d.String())
			return nil
		}),
	}
	cmd.Flags().BoolVar(&o.Insecure, "insecure", false, "allow plain HTTP to a non-loopback registry")
	cmd.Flags().IntVar(&o.Jobs, "jobs", 4, "parallel blob uploads")
	cmd.Flags().StringArrayVar(&channels, "channel", nil, "also publish this channel (it must point to IMAGE); repeatable")
	return cmd
}

func (a *app) pullCmd() *cobra.Command {
	var o registry.Options
	cmd := &cobra.Command{
		Use:   "pull REGISTRY/REPO:TAG|REGISTRY/REPO@sha256:…",
		Short: "Copy an imgctl image from an OCI registry into the store, verifying every blob",
		Long: `A tag must name the image it serves: the image's version (as push tags it, '+' as '_') or a
channel of the repository whose history points to the image. Any other tag (moved to another
image, or made by another tool) is refused before any download; pull by digest, or pass
--allow-tag-mismatch to store what the tag serves. Manifests over 4 MiB are refused.`,
		Args: cobra.ExactArgs(1),
		RunE: a.withStore(func(cmd *cobra.Command, args []string, st *store.Store) error {
			stopProgress := a.showProgress(cmd)
			defer stopProgress()
			o.Logger = a.logger()
			img, err := registry.Pull(cmd.Context(), st, args[0], o)
			stopProgress()
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(map[string]any{"digest": img.Digest(), "version": img.Config.Version})
			}
			fmt.Fprintf(a.out, "%s\n%s\n", img.Config.Version, img.Digest())
			return nil
		}),
	}
	cmd.Flags().BoolVar(&o.Insecure, "insecure", false, "allow plain HTTP to a non-loopback registry")
	cmd.Flags().IntVar(&o.Jobs, "jobs", 4, "parallel blob downloads")
	cmd.Flags().BoolVar(&o.AllowTagMismatch, "allow-tag-mismatch", false, "store the image a tag serves even if the tag is neither its version nor a channel pointing to it")
	return cmd
}
