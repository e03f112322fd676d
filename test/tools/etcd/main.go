// Command etcd is etcd's server, built from go.etcd.io/etcd/server/v3 for the control-plane
// images (scripts/build-control-plane-images.sh): the module proxy does not serve the exact
// release kubeadm 1.21 defaults to (3.4.13), and the 3.5 server module has no main package.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
