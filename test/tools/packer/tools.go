//go:build tools

// Package packer pins github.com/hashicorp/packer v1.9.4 so the acceptance test can compile the
// real Packer from the Go module proxy and drive packer-plugin-imgctl with it. (Debian's Packer
// 1.6.6 cannot load plugins built with packer-plugin-sdk v0.6.x.)
package packer

import (
	_ "github.com/hashicorp/packer"
)
