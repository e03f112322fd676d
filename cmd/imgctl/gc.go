package main

import (
	"cmp"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/images/awsgc"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/store"
)

func (a *app) gcCmd() *cobra.Command {
	var (
		keep      int
		olderThan time.Duration
		dryRun    bool
		awsFlags  gcAWSFlags
	)
	cmd := &cobra.Command{
		Use:   "gc [--keep N] [--older-than D] [--dry-run] [--aws [--region R]...]",
		Short: "Delete images and blobs that no channel (or its recent history) references",
		Long: `Keeps every channel's image and the last --keep other images of each channel's history (the
rollback targets), and every image younger than --older-than (built but not promoted yet);
deletes the other imgctl images from the store, then every blob nothing in the store references
(blobs written within the last hour stay: a concurrent build may not have indexed them yet).
Entries of other tools sharing the layout, and signatures of kept images, are kept.

With --aws, then removes on AWS, in every region the store's publication records, its AWS
settings (imgctl store aws) or --region name, the AMIs (and their snapshots and version
parameters) tagged with the digest of an image no longer in the store, and snapshots whose
upload never completed, all older than --older-than. Resources without the imgctl:image tag,
and AMIs an SSM parameter PREFIX/NAME/image_id names (PREFIX: the settings' or a record's SSM
prefix; a channel), are never touched.`,
		Args: cobra.NoArgs,
		RunE: a.withChannels(func(cmd *cobra.Command, _ []string, st *store.Store, l *channel.Log) error {
			aws, err := awsFlags.prepare(cmd.Context(), a, st)
			if err != nil {
				return err
			}
			// Roots are read under the store lock, which channel moves also hold: a promotion
			// cannot slip in between reading them and deleting.
			var roots []digest.Digest
			rootsFunc := func() ([]digest.Digest, error) {
				var err error
				roots, err = l.GCRoots(cmd.Context(), keep)
				return roots, err
			}
			rep, err := st.GC(cmd.Context(), store.GCOptions{RootsFunc: rootsFunc, OlderThan: olderThan, DryRun: dryRun})
			if err != nil {
				return err
			}
			var awsRep awsgc.Report
			var awsErr error
			if aws != nil {
				awsRep, awsErr = aws.collect(cmd.Context(), a, st, rep, olderThan, dryRun)
			}
			if a.json() {
				doc := map[string]any{"dryRun": dryRun, "roots": roots, "report": rep}
				if aws != nil {
					doc["regions"], doc["aws"] = aws.regions, awsRep
				}
				return cmp.Or(a.printJSON(doc), awsErr)
			}
			verb := "deleted"
			if dryRun {
				verb = "would delete"
			}
			for _, img := range rep.DeletedImages {
				fmt.Fprintf(a.out, "%s image %s %s\n", verb, img.Digest(), img.Config.Version)
			}
			fmt.Fprintf(a.out, "%s %d images, %d blobs (%s); kept %d images (%d referenced by channels)\n",
				verb, len(rep.DeletedImages), len(rep.DeletedBlobs), human(rep.FreedBytes), rep.KeptImages, len(roots))
			if rep.YoungBlobs > 0 {
				fmt.Fprintf(a.out, "kept %d unreferenced blobs written within the last hour (a build may still index them)\n", rep.YoungBlobs)
			}
			if aws != nil {
				printGCAWS(a.out, aws.regions, awsRep, dryRun)
			}
			return awsErr
		}),
	}
	f := cmd.Flags()
	f.IntVar(&keep, "keep", 5, "images of each channel's history to keep besides its current one (-1: all)")
	f.DurationVar(&olderThan, "older-than", 24*time.Hour, "never delete images younger than this (0: any age)")
	f.BoolVar(&dryRun, "dry-run", false, "report what would be deleted, delete nothing")
	awsFlags.add(f)
	return cmd
}
