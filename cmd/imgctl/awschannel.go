package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/images/awschannel"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/store"
)

// awsMirror sets m.Mirror when the store has AWS settings and the channels are the store's (not
// --registry): then each move also writes PREFIX/CHANNEL/image_id in the settings' regions.
func (a *app) awsMirror(ctx context.Context, m *channel.Mover, st *store.Store, reg registryFlags, f awsFlags, force bool) error {
	s, err := awschannel.LoadSettings(st.Dir())
	if err != nil || s == nil {
		return err
	}
	if reg.repo != "" {
		a.logger().Warn("the store's AWS settings mirror its own channels, not a registry's: no SSM parameter is written", "registry", reg.repo)
		return nil
	}
	clients, err := f.clientsIn(ctx, a.logger(), s.Regions[0])
	if err != nil {
		return fmt.Errorf("mirroring channels to AWS as %s says: %w (or stop mirroring: imgctl store aws --clear)", filepath.Join(st.Dir(), awschannel.SettingsFile), err)
	}
	m.Mirror = &awschannel.Mirror{Store: st, Settings: *s, Clients: clients, Force: force, Logger: a.logger()}
	return nil
}

// storeAWSCmd is `imgctl store aws`: show or set the store's AWS channel settings.
func (a *app) storeAWSCmd() *cobra.Command {
	var regions, share []string
	var prefix string
	var clear bool
	cmd := &cobra.Command{
		Use:   "aws [--regions R,…] [--ssm-prefix /P] [--share ACCOUNT,…] [--clear]",
		Short: "Show or set where promote and rollback mirror channels on AWS (SSM parameters)",
		Long: `With AWS settings (STORE/aws.json), promote and rollback also write PREFIX/CHANNEL/image_id, the
AMI of the channel's image, in every region listed (launch templates read it with
resolve:ssm:PREFIX/CHANNEL/image_id). A channel then moves only to an image whose AMI is available
(and shared with every --share account) in all those regions, and only if each parameter still
holds the AMI the channel's history says (someone else's value is reported; --force overwrites).
publish ami and build --target ami default --copy-to, --share and --ssm-prefix to these
settings, so that a publication reaches what promote checks.
Without flags, shows the settings; flags change only what they name; --clear removes them.`,
		Args: cobra.NoArgs,
		RunE: a.withStore(func(cmd *cobra.Command, _ []string, st *store.Store) error {
			f := cmd.Flags()
			set := f.Changed("regions") || f.Changed("ssm-prefix") || f.Changed("share")
			switch {
			case clear && set:
				return errors.New("--clear removes the AWS settings: give it alone")
			case clear:
				if err := awschannel.RemoveSettings(st.Dir()); err != nil {
					return err
				}
				a.logger().Info("AWS settings removed: channels are no longer mirrored to AWS", "store", st.Dir())
				return a.showAWS(st, nil)
			}
			s, err := awschannel.LoadSettings(st.Dir())
			if err != nil {
				return err
			}
			if set {
				if s == nil {
					s = &awschannel.Settings{}
				}
				if f.Changed("regions") {
					s.Regions = regions
				}
				if f.Changed("ssm-prefix") {
					s.SSMPrefix = prefix
				}
				if f.Changed("share") {
					s.Share = share
				}
				if err := awschannel.SaveSettings(cmd.Context(), st.Dir(), *s); err != nil {
					return err
				}
			}
			return a.showAWS(st, s)
		}),
	}
	f := cmd.Flags()
	f.StringSliceVar(&regions, "regions", nil, "regions every promoted image must be available in, and where the channel parameters are written")
	f.StringVar(&prefix, "ssm-prefix", "", "SSM parameter prefix: channels are PREFIX/CHANNEL/image_id")
	f.StringSliceVar(&share, "share", nil, "accounts every promoted AMI must be shared with ('' for none)")
	f.BoolVar(&clear, "clear", false, "remove the AWS settings (channels are no longer mirrored)")
	return cmd
}

func (a *app) showAWS(st *store.Store, s *awschannel.Settings) error {
	if a.json() {
		return a.printJSON(map[string]any{"store": st.Dir(), "aws": s})
	}
	if s == nil {
		fmt.Fprintf(a.out, "store %s has no AWS settings: channels are not mirrored to AWS (imgctl store aws --regions R,… --ssm-prefix /P sets them)\n", st.Dir())
		return nil
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "regions\t%s\n", strings.Join(s.Regions, ", "))
	fmt.Fprintf(tw, "ssm prefix\t%s (channels: %s/CHANNEL/image_id)\n", s.SSMPrefix, s.SSMPrefix)
	fmt.Fprintf(tw, "share\t%s\n", orDash(strings.Join(s.Share, ", ")))
	return tw.Flush()
}
