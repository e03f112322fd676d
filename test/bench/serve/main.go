// Command serve is the load generator of scripts/bench-serve.sh, which measures `imgctl serve`
// against nginx serving the same files on 127.0.0.1. The measuring subcommands print one line of JSON.
//
//	setup    -store DIR -out DIR [-machines N -kernel-mb N -initrd-mb N -root-mb N]
//	         a netboot image of random bytes in a store, the inventory and the request paths
//	standin  -store DIR -machines FILE: a plain Go net/http server of the same URLs (the baseline)
//	verify   -addr HOST:PORT PATH...: each /blobs/sha256:HEX body hashes to its digest
//	fetch    -addr HOST:PORT -clients N PATH...: N clients fetch every PATH once; aggregate GB/s
//	rate     -addr HOST:PORT -paths FILE -conns N -duration D: closed-loop requests per second
//	latency  -addr HOST:PORT -paths FILE -rate R -duration D: open-loop latency percentiles
//	idle     -addr HOST:PORT -path PATH -conns N -pid PID: RSS before and after N idle connections
//	get      -addr HOST:PORT PATH: the body, to stdout
//	freeport a free loopback port
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: serve setup|standin|verify|fetch|rate|latency|idle|get|freeport [flags] (see the package comment)")
		os.Exit(2)
	}
	cmds := map[string]func(ctx context.Context, args []string) (any, error){
		"setup": setup, "standin": standin, "verify": verify, "fetch": fetch,
		"rate": rate, "latency": latency, "idle": idle, "get": get, "freeport": freePort,
	}
	run, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "serve: unknown subcommand %q (want setup, standin, verify, fetch, rate, latency, idle, get or freeport)\n", os.Args[1])
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out, err := run(ctx, os.Args[2:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "serve %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	if out != nil {
		b, err := json.Marshal(out)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(string(b))
	}
}

// parse parses args into fs and wants exactly n positional arguments (any number if n < 0).
func parse(fs *flag.FlagSet, args []string, n int) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if n >= 0 && fs.NArg() != n {
		return fmt.Errorf("want %d arguments, got %d: %q", n, fs.NArg(), fs.Args())
	}
	return nil
}
