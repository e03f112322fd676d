// Command ami is the measuring program of scripts/bench-ami.sh (make bench): AMI uploads
// against the in-process fake EBS endpoint (images/awsfake) on loopback, next to a plain
// loopback HTTP PUT of the same blocks. Each subcommand prints one line of JSON.
//
//	upload -simg FILE [-concurrency N -max-idle-conns N -cpuprofile FILE]
//	         ebssnap.Upload of the disk to a fresh fake: bytes sent, zero-skip, MB/s, CPU s
//	put -simg FILE [-concurrency N]
//	         the baseline: the same non-zero 512 KiB blocks PUT to a trivial loopback server
//	incremental -base FILE -next FILE [-concurrency N -areas FILE]
//	         a full upload of base, then next on top of it (parent snapshot and hashes): blocks
//	         sent, and where they changed by GPT partition (-areas: as Markdown table rows)
//	blockdiff FILE1 FILE2
//	         512 KiB blocks that differ between two files at the same offsets
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

var commands = map[string]func(ctx context.Context, args []string) (any, error){}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: ami SUBCOMMAND [flags] (see the package comment)")
		os.Exit(2)
	}
	run, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "ami: unknown subcommand %q\n", os.Args[1])
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out, err := run(ctx, os.Args[2:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "ami %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	b, err := json.Marshal(out)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(b))
}

// parse parses args into fs and wants no positional arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return nil
}
