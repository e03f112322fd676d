//go:build tools

// Package coredns pins github.com/coredns/coredns so scripts/build-control-plane-images.sh can
// compile CoreDNS for the control-plane images from the Go module proxy.
package coredns

import (
	_ "github.com/coredns/coredns"
)
