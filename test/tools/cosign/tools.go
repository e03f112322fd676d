//go:build tools

// Package cosign pins github.com/sigstore/cosign/v2 so tests can compile the real cosign CLI from
// the Go module proxy and check that imgctl's signatures verify with it (images/sign).
package cosign

import (
	_ "github.com/sigstore/cosign/v2/cmd/cosign"
)
