package bootinit

import (
	"context"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/report"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/images/nodeapi"
)

// initReport is the init phase's boot report to the imgctl metadata server. Only a network
// root reports, and only once its network is up: a disk boot has no network in the initrd, and
// configure reports for it later.
type initReport struct {
	sender *report.Sender // nil: nothing to send (no server and credential, or not a network root)
	digest string
	up     bool
}

// newInitReport prepares the report from the kernel command line (line, parsed as cfg).
func newInitReport(line string, cfg cmdline.Config, o report.Options) *initReport {
	r := &initReport{digest: cfg.RootDigest}
	if cfg.RootURL != "" {
		r.sender = report.FromCmdline(line, o)
	}
	return r
}

// netUp records that the boot NIC is configured: from now on a report can reach the server.
func (r *initReport) netUp() { r.up = true }

// send reports the steps so far: ok when failed is nil (just before switching root), or the
// failed step (before rebooting). Bounded (report.DefaultBudget); it never changes the boot.
func (r *initReport) send(ctx context.Context, log *steplog.Logger, failed error) {
	if r == nil || r.sender == nil || !r.up {
		return
	}
	_ = r.sender.Send(ctx, r.sender.Build(nodeapi.PhaseInit, log.Steps(), failed, r.digest, ""))
}
