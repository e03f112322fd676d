package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/inventory"
	"github.com/imgctl/imgctl/images/rollout"
	"github.com/imgctl/imgctl/images/store"
)

func (a *app) rolloutCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Follow a fleet upgrade: which image each netbooted node was served and how its boot went",
	}
	var invPath string
	status := &cobra.Command{
		Use:   "status [CHANNEL]",
		Short: "Show per node the image it runs and its last boot report, per channel how many nodes run the head",
		Long: `Nodes booted by imgctl serve report after init and after configuration (or on failure); the
server keeps each node's reports in STORE/serve/reports. Per node: the channel, the image the
server served (digest and version), whether that is the channel's head now, the phase and last
step of the last report, ok or the failed step and its error, when the server received it, and
whether the root the node reports differs from the served image's rootfs.squashfs. Per channel:
its head, how many of its nodes run the head (served it, ok, root as served), how many still
run another image (not rebooted since the move), and how many failed. With CHANNEL, only that
channel and its nodes. A report file that cannot be read is named on stderr (in "problems"
with -o json); the other nodes still show.

With --inventory (the file imgctl serve uses), its machines that never reported show too, as
"never reported" ("reported": false with -o json), and count in their channel's nodes: a
channel of two machines, one on the head and one that never came up, is 1/2 on head.`,
		Example: `  imgctl rollout status
  imgctl rollout status prod --inventory /etc/imgctl/inventory.yaml
  imgctl rollout status nightly -o json --store /srv/imgctl`,
		Args: cobra.MaximumNArgs(1),
		RunE: a.withStore(func(cmd *cobra.Command, args []string, st *store.Store) error {
			l, err := channel.Open(st.Dir(), a.logger())
			if err != nil {
				return err
			}
			reports, err := rollout.Open(rollout.StoreDir(st.Dir()), a.logger())
			if err != nil {
				return err
			}
			only := ""
			if len(args) == 1 {
				only = args[0]
			}
			var opts []rollout.Option
			if invPath != "" {
				inv, err := inventory.Load(invPath)
				if err != nil {
					return err
				}
				for _, w := range inv.Warnings {
					fmt.Fprintln(a.err, "warning:", w)
				}
				opts = append(opts, rollout.WithInventory(inv))
			}
			ro, err := rollout.Status(cmd.Context(), reports, l, st, only, opts...)
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(ro)
			}
			for _, p := range ro.Problems {
				fmt.Fprintln(a.err, "warning:", p)
			}
			return a.printRollout(ro)
		}),
	}
	status.Flags().StringVar(&invPath, "inventory", "", "also show the machines of this inventory (imgctl serve's) that never reported")
	cmd.AddCommand(status)
	return cmd
}

func (a *app) printRollout(ro rollout.Rollout) error {
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHANNEL\tHEAD\tVERSION\tON HEAD\tSTALE\tFAILED\tROOT MISMATCH\tNEVER REPORTED")
	for _, c := range ro.Channels {
		head := "-"
		if c.Head != "" {
			head = c.Head.Encoded()[:12]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%d\t%d\t%d\t%d\n", c.Name, head, orDash(c.Version), c.OnHead, c.Nodes, c.Stale, c.Failed, c.RootMismatch, c.NeverReported)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(a.out)
	if len(ro.Nodes) == 0 {
		fmt.Fprintln(a.out, "(no node has reported)")
		return nil
	}
	tw = tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCHANNEL\tROLE\tIMAGE\tVERSION\tHEAD\tPHASE\tLAST STEP\tRESULT\tREPORTED")
	for _, n := range ro.Nodes {
		ch, head := "(pinned)", "-"
		if !n.Reported {
			if n.Channel != "" {
				ch = n.Channel
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\t-\tnever reported\t-\n", n.Node, ch, orDash(n.Role))
			continue
		}
		if n.Channel != "" {
			ch, head = n.Channel, "no"
			if n.OnHead {
				head = "yes"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Node, ch, orDash(n.Role), n.Image.Encoded()[:12],
			orDash(n.Version), head, n.Phase, orDash(n.LastStep), result(n), n.When.UTC().Format(time.DateTime))
	}
	return tw.Flush()
}

// result is a node's outcome in a few words: ok, the failed step and its error, or the root it
// runs when that is not the one served.
func result(n rollout.NodeStatus) string {
	switch {
	case !n.OK:
		s := "failed at " + n.Failed
		if n.Error != "" {
			e := n.Error
			if len(e) > 60 {
				e = e[:60] + "…"
			}
			s += ": " + e
		}
		return s
	case n.RootMismatch:
		return "ok, but runs root " + n.RootDigest.Encoded()[:12] + ", not the served " + n.ServedRoot.Encoded()[:12]
	}
	return "ok"
}
