package configure

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// execRunner runs commands with their output streamed to out (the journal and the console, so
// kubeadm's progress is visible where the step lines are).
func execRunner(out io.Writer) func(ctx context.Context, name string, args ...string) error {
	return func(ctx context.Context, name string, args ...string) error {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
		}
		return nil
	}
}

func setHostname(name string) error { return unix.Sethostname([]byte(name)) }
