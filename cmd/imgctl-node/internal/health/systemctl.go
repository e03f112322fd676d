package health

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// CommandRunner runs the program name with args and returns its combined output. It must stop
// the program when ctx ends.
type CommandRunner func(ctx context.Context, name string, args ...string) ([]byte, error)

// ExecRunner is the CommandRunner that runs real programs (os/exec, program looked up in PATH).
func ExecRunner(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second // do not wait forever on pipes a killed program left open
	return cmd.CombinedOutput()
}

// SystemctlRestart returns a Monitor.Restart that runs `systemctl restart UNIT`.
//
// Why restart and not GKE's `systemctl kill` (--kill-who=main for the runtime): kill only brings
// the unit back if it has Restart=always (SIGTERM counts as a clean exit for Restart=on-failure),
// and returns before anything is known. restart works whatever the unit's Restart= says, waits
// for the job, so a unit that fails to come back is reported (and logged by the Monitor), and
// still stops only what the unit's KillMode= names: Debian's containerd.service has
// KillMode=process, so as with --kill-who=main the shims and containers survive. A restart that
// hits the unit's start rate limit fails, and the Monitor's backoff spaces out the next try.
func SystemctlRestart(unit string) func(context.Context) error {
	return SystemctlRestartWith(ExecRunner, unit)
}

// SystemctlRestartWith is SystemctlRestart with the command runner injected (for tests).
func SystemctlRestartWith(run CommandRunner, unit string) func(context.Context) error {
	return func(ctx context.Context) error {
		if unit == "" || strings.HasPrefix(unit, "-") {
			return fmt.Errorf("systemctl restart: invalid unit name %q", unit)
		}
		out, err := run(ctx, "systemctl", "restart", unit)
		if err != nil {
			err = ctxErr(ctx, err)
			if msg := string(bytes.TrimSpace(out)); msg != "" {
				return fmt.Errorf("systemctl restart %s: %w: %s", unit, err, msg)
			}
			return fmt.Errorf("systemctl restart %s: %w", unit, err)
		}
		return nil
	}
}
