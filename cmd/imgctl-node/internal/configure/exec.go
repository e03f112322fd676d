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

// execKubeadm runs the kubeadm on PATH with its output to out. Its error is the exit status
// only: the caller reads kubeadm's message from the output.
func execKubeadm(ctx context.Context, out io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "kubeadm", args...)
	cmd.Stdout, cmd.Stderr = out, out
	return cmd.Run()
}

func setHostname(name string) error { return unix.Sethostname([]byte(name)) }
