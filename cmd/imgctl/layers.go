package main

import (
	"cmp"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/source"
)

func (a *app) layersCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "layers", Short: "List an image's layers and inspect sources"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list [IMAGE]",
		Short: "List the layers of an image (default: the newest image in the store)",
		Args:  cobra.MaximumNArgs(1),
		RunE: a.withStore(func(cmd *cobra.Command, args []string, st *store.Store) error {
			var ref string
			if len(args) == 1 {
				ref = args[0]
			} else {
				imgs, bad, err := st.ListAll(cmd.Context())
				if err != nil {
					return err
				}
				if len(imgs) == 0 {
					return cmp.Or(unreadable(st, 0, bad), fmt.Errorf("the store %s holds no images: run imgctl build first", st.Dir()))
				}
				if len(bad) > 0 { // the newest readable image, said plainly: a newer one may be corrupt
					fmt.Fprintf(a.err, "warning: %v\n", unreadable(st, len(imgs), bad))
				}
				ref = imgs[0].Digest().String()
			}
			img, err := st.Resolve(cmd.Context(), ref)
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(img.Config.Layers)
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ROLE\tVERSION\tDIGEST\tSIZE\tSOURCES")
			for _, l := range img.Config.Layers {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", l.Role, l.Version, l.Digest, human(l.Size), len(l.Sources))
			}
			return tw.Flush()
		}),
	})
	inspect := &cobra.Command{
		Use:   "inspect URI",
		Short: "Resolve, fetch and validate one source without building: digest, size, entry count",
		Long: `Inspect resolves a source URI to its pinned digest, fetches it into the cache and converts it
into a validated layer tar, refusing what build refuses, with the same message: unsafe entries
(absolute paths, "..", links escaping the root, also through symlinks on the way), malformed
whiteouts, an empty tar, a .deb with two data members. Only build, seeing every layer, can
refuse an entry that a lower layer's symlink makes unsafe. It prints the input digest, the
layer tar digest, its size and entry count.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.checkFormat(); err != nil {
				return err
			}
			u, err := source.Parse(args[0])
			if err != nil {
				return err
			}
			stopProgress := a.showProgress(cmd)
			defer stopProgress()
			env, err := a.env()
			if err != nil {
				return err
			}
			pin, err := env.Resolve(cmd.Context(), u, nil)
			if err != nil {
				return err
			}
			t, err := env.Materialize(cmd.Context(), u, pin)
			stopProgress()
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(map[string]any{"uri": u.Raw, "kind": u.Kind, "digest": pin.Digest, "resolved": pin.Resolved, "url": pin.URL, "layer": t.Digest, "size": t.Size, "entries": t.Entries})
			}
			tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "uri\t%s\nkind\t%s\ndigest\t%s\n", u.Raw, u.Kind, pin.Digest)
			if pin.Resolved != "" {
				fmt.Fprintf(tw, "resolved\t%s\n", pin.Resolved)
			}
			if pin.URL != "" {
				fmt.Fprintf(tw, "url\t%s\n", pin.URL)
			}
			fmt.Fprintf(tw, "layer\t%s\nsize\t%s (%d bytes)\nentries\t%d\n", t.Digest, human(t.Size), t.Size, t.Entries)
			return tw.Flush()
		},
	}
	a.limitFlags(inspect.Flags())
	cmd.AddCommand(inspect)
	return cmd
}
