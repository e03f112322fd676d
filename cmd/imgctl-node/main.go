// Command imgctl-node is the node agent: PID 1 of the initrd (as /init or `imgctl-node init`),
// and the logic behind the bootstrap units.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/bootinit"
)

func main() {
	ctx := context.Background()
	if os.Args[0] == "/init" {
		bootinit.Main(ctx, os.Args[1:])
		return
	}
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "init":
		bootinit.Main(ctx, os.Args[2:])
	case "help", "-h", "--help":
		fmt.Print(usageText)
	default:
		fmt.Fprintf(os.Stderr, "imgctl-node: unknown command %q\n", os.Args[1])
		usage()
	}
}

const usageText = `usage: imgctl-node COMMAND

  init    PID 1 of the initrd (also when run as /init): mount the root image, switch root
`

func usage() {
	fmt.Fprint(os.Stderr, usageText)
	os.Exit(2)
}
