// Command imgctl builds immutable Kubernetes node images from pinned layers.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time: -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp(os.Stdin, os.Stdout, os.Stderr)
	if err := app.root().ExecuteContext(ctx); err != nil {
		if errors.Is(err, context.Canceled) {
			fmt.Fprintln(os.Stderr, "imgctl: interrupted")
			os.Exit(130)
		}
		fmt.Fprintf(os.Stderr, "imgctl: %v\n", err)
		os.Exit(1)
	}
}
