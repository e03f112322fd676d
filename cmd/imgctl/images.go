package main

import (
	"cmp"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/images/imagediff"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store"
)

func (a *app) imagesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "images", Short: "List and inspect images in the store"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the images in the store, newest first",
		Long: `List the images in the store, newest first. An image whose manifest or config cannot be read
is left out and named at the end, and the command then fails: the others are listed, but a
script must not take the list for the whole store.`,
		Args: cobra.NoArgs,
		RunE: a.withStore(func(cmd *cobra.Command, _ []string, st *store.Store) error {
			imgs, bad, err := st.ListAll(cmd.Context())
			if err != nil {
				return err
			}
			if a.json() {
				type row struct {
					Digest, Name, Version, Kubernetes, Kernel, Created string
				}
				rows := []row{}
				for _, i := range imgs {
					rows = append(rows, row{i.Digest().String(), i.Config.Name, i.Config.Version, i.Config.Kubernetes, i.Config.Kernel, i.Config.Created().Format("2006-01-02T15:04:05Z")})
				}
				return cmp.Or(a.printJSON(rows), unreadable(st, len(imgs), bad))
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DIGEST\tNAME\tVERSION\tKUBERNETES\tKERNEL\tCREATED")
			for _, i := range imgs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", i.Digest().Encoded()[:12], i.Config.Name, i.Config.Version, i.Config.Kubernetes, i.Config.Kernel, i.Config.Created().Format("2006-01-02 15:04"))
			}
			return cmp.Or(tw.Flush(), unreadable(st, len(imgs), bad))
		}),
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "inspect IMAGE",
		Short: "Show an image's manifest: layers, sources, versions, artifacts (IMAGE: digest, unique prefix or version)",
		Args:  cobra.ExactArgs(1),
		RunE: a.withStore(func(cmd *cobra.Command, args []string, st *store.Store) error {
			img, err := st.Resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			recs, err := publication.List(cmd.Context(), st, img.Digest())
			if err != nil {
				return err
			}
			amis := publication.ByRegion(recs)
			if a.json() {
				if amis == nil {
					amis = []publication.Region{}
				}
				return a.printJSON(map[string]any{"digest": img.Digest(), "manifest": img.Manifest, "config": img.Config, "publications": amis})
			}
			c := img.Config
			fmt.Fprintf(a.out, "digest      %s\nname        %s\nversion     %s\nkubernetes  %s\nflavor      %s\nkernel      %s\nbootstrap   %s\nimgctl      %s\ncreated     %s\nspec        %s\nrootfs      %s (%s, %d entries)\n",
				img.Digest(), c.Name, c.Version, c.Kubernetes, cmp.Or(c.Flavor, "-"), c.Kernel, c.Bootstrap, c.Imgctl, c.Created().Format("2006-01-02T15:04:05Z"), c.SpecDigest, c.Rootfs.Digest, human(c.Rootfs.Size), c.Rootfs.Entries)
			fmt.Fprintln(a.out, "layers")
			for _, l := range c.Layers {
				fmt.Fprintf(a.out, "  %-10s %s  %s  %s\n", l.Role, l.Digest, human(l.Size), l.Version)
				for _, s := range l.Sources {
					fmt.Fprintf(a.out, "      %s\n        %s %s\n", s.URI, s.Digest, s.Resolved)
				}
			}
			fmt.Fprintln(a.out, "artifacts")
			for _, l := range img.Manifest.Layers {
				fmt.Fprintf(a.out, "  %-16s %s  %s  %s\n", l.Annotations["org.opencontainers.image.title"], l.Digest, human(l.Size), l.MediaType)
			}
			if len(amis) == 0 {
				fmt.Fprintln(a.out, "amis        -")
				return nil
			}
			fmt.Fprintln(a.out, "amis")
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			for _, g := range amis {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s", g.Region, cmp.Or(g.ImageID, "-"), cmp.Or(g.SnapshotID, "-"), g.State)
				if g.Message != "" {
					fmt.Fprintf(tw, "\t%s", g.Message)
				}
				fmt.Fprintln(tw)
			}
			return tw.Flush()
		}),
	})
	cmd.AddCommand(a.imagesDiffCmd(), a.imagesPackCmd(), a.imagesControlPlaneNamesCmd())
	return cmd
}

func (a *app) imagesDiffCmd() *cobra.Command {
	var o imagediff.Options
	var maxFiles int
	cmd := &cobra.Command{
		Use:   "diff A B",
		Short: "Show what an upgrade from image A to image B changes: layers, files, root blocks, bytes a disk node fetches",
		Long: `A and B are digests, unique digest prefixes or versions. Compares the layers by role (digest and
version), the boot artifacts (vmlinuz, initrd.img, rootfs.squashfs), the files of the two root
squashfs images (added, removed, changed: content, type, symlink target, permission bits,
owner; setuid, setgid and sticky bits are not compared), and B's 4 KiB root blocks against A's
as a disk node's update does: the blocks found anywhere in A are copied from the running slot,
the others fetched. "An update from a to b fetches N" adds B's dm-verity hash area and its
kernel and initrd when they differ from A's; the percentage is of B's root blob.
Images without a rootfs.squashfs (built before it was published with every disk image) get
their layers and artifacts compared only.`,
		Example: `  imgctl images diff 1.21.13-6.1.0-20261204.1 1.21.14-6.1.0-20261205.1
  imgctl images diff -o json prod staging | jq .update.percent`,
		Args: cobra.ExactArgs(2),
		RunE: a.withStore(func(cmd *cobra.Command, args []string, st *store.Store) error {
			if maxFiles < 0 {
				return fmt.Errorf("--max-files %d: expected 0 (all) or more", maxFiles)
			}
			var imgs [2]store.Image
			for i, ref := range args {
				img, err := st.Resolve(cmd.Context(), ref)
				if err != nil {
					return err
				}
				imgs[i] = img
			}
			o.Logger = a.logger()
			r, err := imagediff.Diff(cmd.Context(), st, imgs[0], imgs[1], o)
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(r)
			}
			return imagediff.WriteText(a.out, r, maxFiles)
		}),
	}
	cmd.Flags().BoolVar(&o.NoFiles, "no-files", false, "do not compare the files (reading and hashing both roots takes a few seconds)")
	cmd.Flags().IntVar(&maxFiles, "max-files", 50, "list at most this many changed, added and removed paths each (0: all; -o json lists all)")
	return cmd
}

// unreadable names the images of st that cannot be read, once the n others were listed; nil if
// there are none.
func unreadable(st *store.Store, n int, bad []store.UnreadableImage) error {
	if len(bad) == 0 {
		return nil
	}
	errs := make([]error, len(bad))
	for i, b := range bad {
		errs[i] = b
	}
	return fmt.Errorf("store %s: %d unreadable image(s), not listed (the %d others are):\n%w", st.Dir(), len(bad), n, errors.Join(errs...))
}
