// Command imgctl-pause is the pod sandbox ("pause") process of imgctl's control-plane images
// (scripts/build-control-plane-images.sh packs it as REPOSITORY/pause:TAG): it holds the pod's
// namespaces open and does nothing else. As the first process of a pod that shares its PID
// namespace it reaps the zombies orphaned into it; SIGINT and SIGTERM end it with status 0.
// It sleeps in between (no polling) and uses only the standard library, built static.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the exit: it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	for _, a := range args {
		switch a {
		case "-v", "--version":
			fmt.Fprintln(stdout, "imgctl-pause (the pod sandbox of imgctl's control-plane images)")
			return 0
		default:
			fmt.Fprintf(stderr, "imgctl-pause: unknown argument %q (expected none, or -v)\n", a)
			return 2
		}
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	if os.Getpid() != 1 {
		fmt.Fprintln(stderr, "imgctl-pause: warning: not the first process of its PID namespace")
	}
	reap(stderr) // children that exited before the handler was installed
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			reap(stderr)
			continue
		}
		fmt.Fprintf(stderr, "imgctl-pause: %v: exiting\n", sig)
		return 0
	}
	return 0 // unreachable: sigs is never closed
}

// reap collects every child that has exited, without blocking (signals coalesce: one SIGCHLD may
// stand for several children).
func reap(stderr io.Writer) {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		switch {
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.ECHILD), err == nil && pid <= 0:
			return
		case err != nil:
			fmt.Fprintf(stderr, "imgctl-pause: wait4: %v\n", err)
			return
		}
	}
}
