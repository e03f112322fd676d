package configure

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/updatestate"
	"github.com/imgctl/imgctl/images/nodeconfig"
)

// MarkerPath is written when configure has succeeded: the kubelet answered its /healthz and
// the post-configure hooks passed. imgctl-node bless blesses a new slot only when it exists.
const MarkerPath = "/run/imgctl/configured"

// UpdateTimerUnit is the timer that runs imgctl-node update; UpdateTimerDropIn sets its
// interval from spec.update.interval (a runtime drop-in: the NodeConfig is read every boot).
const (
	UpdateTimerUnit   = "imgctl-update.timer"
	UpdateTimerDropIn = "/run/systemd/system/" + UpdateTimerUnit + ".d/interval.conf"
)

// updateFirstCheck is the unit's OnActiveSec= (the first check after configure starts the
// timer). The drop-in must declare it again: to replace the unit's OnUnitInactiveSec= it
// assigns the empty string, which clears every trigger of the timer (systemd.timer(5)).
// TestUpdateTimerTriggers keeps it equal to the unit's.
const updateFirstCheck = "15s"

// The commands that enable updates; a dry run names them.
var (
	daemonReload     = []string{"systemctl", "daemon-reload"}
	startUpdateTimer = []string{"systemctl", "start", UpdateTimerUnit}
)

// updateConfig persists spec.update for imgctl-node update and, when updates are enabled,
// starts their timer with the configured interval. No section: no step line, and a file an
// earlier run of this boot left is removed.
func (o Options) updateConfig(ctx context.Context, u nodeconfig.Update) error {
	cfgPath := filepath.Join(o.Root, updatestate.ConfigPath)
	if u == (nodeconfig.Update{}) {
		if err := os.Remove(cfgPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	s := o.Steps.Start("update-config")
	kv, err := o.enableUpdates(ctx, cfgPath, u)
	switch {
	case errors.Is(err, errSkipUpdates):
		s.Skip("reason", "updates disabled (spec.update.enabled: false)")
		return nil
	case err != nil:
		return s.Fail(err, kv...)
	}
	s.Done(kv...)
	return nil
}

// errSkipUpdates ends the update-config step with a skip line instead of a failure.
var errSkipUpdates = errors.New("updates disabled")

func (o Options) enableUpdates(ctx context.Context, cfgPath string, u nodeconfig.Update) ([]any, error) {
	if err := os.MkdirAll(filepath.Dir(cfgPath), 0o755); err != nil {
		return nil, err
	}
	if err := updatestate.WriteConfig(cfgPath, u); err != nil {
		return nil, err
	}
	if !u.IsEnabled() {
		return nil, errSkipUpdates
	}
	interval := u.IntervalDuration()
	dropIn := fmt.Sprintf("# Written by imgctl-node configure from the NodeConfig's spec.update.interval (%s).\n"+
		"[Timer]\nOnUnitInactiveSec=\nOnActiveSec=%s\nOnUnitInactiveSec=%ds\n", u.Interval, updateFirstCheck, int64(interval/time.Second))
	if err := writeFile(o.Root, UpdateTimerDropIn, 0o644, []byte(dropIn)); err != nil {
		return nil, err
	}
	kv := []any{"server", u.Server, "channel", u.Channel, "interval", interval.String(), "window", windowText(u.Window)}
	if o.DryRun {
		return append(kv, "systemctl", "skipped (dry run): "+strings.Join(daemonReload, " ")+"; "+strings.Join(startUpdateTimer, " ")), nil
	}
	for _, c := range [][]string{daemonReload, startUpdateTimer} {
		if err := o.Run(ctx, c[0], c[1:]...); err != nil {
			return kv, fmt.Errorf("%s: %w", strings.Join(c, " "), err)
		}
	}
	return kv, nil
}

func windowText(w string) string {
	if w == "" {
		return "any time"
	}
	return w + " UTC"
}

// removeMarker deletes MarkerPath at the start of a run: only this run's success may leave it.
func (o Options) removeMarker() error {
	if err := os.Remove(filepath.Join(o.Root, MarkerPath)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", MarkerPath, err)
	}
	return nil
}

// writeMarker records a successful configuration for imgctl-node bless.
func (o Options) writeMarker() error {
	return writeFile(o.Root, MarkerPath, 0o644, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"))
}
