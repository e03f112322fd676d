package main

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	amitarget "github.com/imgctl/imgctl/builders/ami"
	"github.com/imgctl/imgctl/images/ami"
	"github.com/imgctl/imgctl/images/awschannel"
	"github.com/imgctl/imgctl/images/ebssnap"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/store"
)

func (a *app) publishCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "publish", Short: "Publish a stored image to a cloud (ami: Amazon EC2)"}
	cmd.AddCommand(a.publishAMICmd())
	return cmd
}

func (a *app) publishAMICmd() *cobra.Command {
	var (
		aws awsFlags
		af  amiFlags
	)
	cmd := &cobra.Command{
		Use:   "ami IMAGE --region REGION [--copy-to R,…] [--share ACCOUNT,…] [--public] [--ssm-prefix /P]",
		Short: "Publish a stored image as an AMI: upload its disk to an EBS snapshot, register, copy, share",
		Long: `Publish uploads the image's disk (disk.simg: build it with --target raw or --target ami) to an
EBS snapshot in --region and registers it as an AMI (x86_64, UEFI, ENA, IMDSv2 only, gp3 root on
/dev/xvda), copies it to the --copy-to regions in parallel, gives the --share accounts (or, with
--public, everyone) launch permission, and with --ssm-prefix writes PREFIX/VERSION/image_id in
every region. It reports the image published only when every region's AMI is available.
With the store's AWS settings (imgctl store aws), --copy-to, --share and --ssm-prefix default
to the settings' other regions, accounts and prefix: what promote checks before it moves a
channel.

The EBS direct APIs send only the blocks that hold data, many in flight; when an earlier image of
the same name was published in the region, only the blocks that changed since (incremental,
from the block hashes recorded then). Where the EBS direct APIs are blocked, --method
import-snapshot goes through an S3 bucket and ImportSnapshot instead (slower, never incremental).

What was published where is recorded with the image in the store (imgctl images inspect shows
it). A rerun finds the snapshot and AMIs by their imgctl:image tag instead of uploading again; an
interrupted upload leaves only tagged pieces, which imgctl gc --aws removes.

Credentials come from the standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, --profile or
AWS_PROFILE (shared config, SSO, web identity), container and instance roles (not with
--no-imds or AWS_EC2_METADATA_DISABLED=true).`,
		Example: `  imgctl publish ami 1.21.13-6.1.0-28-20261126.3f9a1c2b --region us-east-1
  imgctl publish ami sha256:3f9a1c2b… --region us-east-1 --copy-to eu-west-1,ap-south-1 --share 123456789012 --ssm-prefix /imgctl/nodes
  imgctl publish ami 3f9a1c2b --region us-east-1 --method import-snapshot --s3-bucket my-upload-bucket
  imgctl -o json publish ami 3f9a1c2b --region us-east-1 --encrypted --kms-key-id alias/nodes`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.checkFormat(); err != nil {
				return err
			}
			if err := aws.check(); err != nil {
				return err
			}
			if err := af.check(aws.region); err != nil {
				return err
			}
			stop := a.showProgressEvery(cmd, uploadLineEvery)
			defer stop()
			ctx := cmd.Context()
			st, err := a.openStore(ctx)
			if err != nil {
				return err
			}
			img, err := st.Resolve(ctx, args[0])
			if err != nil {
				return err
			}
			publish, err := a.amiPublisher(ctx, aws, af)
			if err != nil {
				return err
			}
			out, err := publish(ctx, st, img)
			stop()
			res, _ := out.(ami.Result)
			if res.Record.Image == "" { // failed before anything was recorded
				return err
			}
			// A failed publication is printed too: which regions are done, which are not.
			if a.json() {
				return cmp.Or(a.printJSON(amiJSON(res)), err)
			}
			return cmp.Or(a.printAMI(res), err)
		},
	}
	aws.add(cmd.Flags())
	af.add(cmd.Flags())
	return cmd
}

// amiPublisher loads the AWS configuration (failing now, before any build or upload, when
// credentials or the region are missing) and returns the function that publishes an image
// with the flags' options: publish ami calls it, build --target ami gives it to the target.
func (a *app) amiPublisher(ctx context.Context, aws awsFlags, af amiFlags) (amitarget.PublishFunc, error) {
	log := a.logger()
	clients, err := aws.clients(ctx, log)
	if err != nil {
		return nil, err
	}
	region := clients.Region()
	if err := af.check(region); err != nil { // the region may have come from the environment
		return nil, err
	}
	o := af.options(region)
	o.Logger = log
	return func(ctx context.Context, st *store.Store, img store.Image) (any, error) {
		o := o
		s, err := awschannel.LoadSettings(st.Dir())
		if err != nil {
			return nil, err
		}
		if s != nil && s.PublishDefaults(&o) {
			log.Info("publishing where the store's AWS settings promise channels (imgctl store aws)",
				"copyTo", strings.Join(o.CopyTo, ","), "share", strings.Join(o.Share, ","), "ssmPrefix", o.SSMPrefix)
		}
		// With an error, the result is how far the publication got (its record).
		return ami.Publish(ctx, st, img, clients, o)
	}, nil
}

// options are the checked flags as ami.Publish's options for the upload region.
func (af amiFlags) options(region string) ami.Options {
	return ami.Options{
		Region: region, CopyTo: af.copyTo, Share: af.share, Public: af.public,
		NamePrefix: af.namePrefix, Method: af.method, Bucket: af.bucket,
		Encrypted: af.encrypted, KMSKeyID: af.kmsKeyID, Concurrency: af.concurrency,
		SSMPrefix: af.ssmPrefix, Wait: af.wait, Tool: "imgctl " + version,
	}
}

// uploadJSON is an upload's statistics in -o json.
type uploadJSON struct {
	SnapshotID    string  `json:"snapshotId"`
	VolumeSizeGiB int64   `json:"volumeSizeGiB"`
	Blocks        int64   `json:"blocks"`
	DataBlocks    int64   `json:"dataBlocks"`
	Sent          int64   `json:"sent"`
	Unchanged     int64   `json:"unchanged"`
	Zero          int64   `json:"zero"`
	BytesSent     int64   `json:"bytesSent"`
	Seconds       float64 `json:"seconds"`
}

// amiJSON is publish ami's -o json: the publication record, whether it was reused, and the
// upload's statistics when something was uploaded.
func amiJSON(res ami.Result) any {
	var up *uploadJSON
	if u := res.Upload; u != nil {
		up = &uploadJSON{u.SnapshotID, u.VolumeSize, u.Blocks, u.DataBlocks, u.Sent, u.Unchanged, u.Zero, u.BytesSent, u.Duration.Seconds()}
	}
	return struct {
		publication.Record
		Reused bool        `json:"reused"`
		Upload *uploadJSON `json:"upload,omitempty"`
	}{res.Record, res.Reused, up}
}

// printAMI prints a publication: the snapshot, how much was uploaded, and each region's AMI.
func (a *app) printAMI(res ami.Result) error {
	r := res.Record
	fmt.Fprintf(a.out, "image     %s (%s)\n", r.Version, r.Image)
	fmt.Fprintf(a.out, "snapshot  %s\n", snapshotLine(r, res.Reused, res.Upload))
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tIMAGE ID\tSTATE\tPARAMETER")
	for _, g := range r.Regions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", g.Region, cmp.Or(g.ImageID, "-"), g.State, cmp.Or(g.Parameter, "-"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var access []string
	if r.Public {
		access = append(access, "public")
	}
	if len(r.Shared) > 0 {
		access = append(access, "shared with "+strings.Join(r.Shared, ", "))
	}
	if len(access) > 0 {
		fmt.Fprintf(a.out, "access    %s\n", strings.Join(access, "; "))
	}
	fmt.Fprintf(a.out, "state     %s\n", r.State)
	return nil
}

// snapshotLine is "snap-… in us-east-1 (8 GiB): sent 120 of 6144 blocks (60.0 MiB) in 4.20s,
// incremental on snap-…", or "… (found by its tag: nothing uploaded)".
func snapshotLine(r publication.Record, reused bool, u *ebssnap.Result) string {
	s := fmt.Sprintf("%s in %s (%d GiB, %s)", r.Snapshot.ID, r.Region, r.Snapshot.VolumeSize, r.Method)
	switch {
	case reused:
		return s + ": found by its imgctl:image tag, nothing uploaded"
	case u != nil:
		s += fmt.Sprintf(": sent %d of %d blocks (%s) in %s", u.Sent, u.Blocks, human(u.BytesSent), seconds(u.Duration.Round(10*time.Millisecond)))
	}
	if r.Snapshot.Parent != "" {
		s += ", incremental on " + r.Snapshot.Parent
	}
	return s
}
