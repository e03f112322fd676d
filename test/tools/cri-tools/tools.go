//go:build tools

// Package critools pins sigs.k8s.io/cri-tools so test and demo builds can compile crictl, which
// kubeadm's preflight requires on PATH, from the Go module proxy (scripts/build-kubernetes.sh).
// The proxy serves v1.34.0 and newer only; crictl speaks CRI v1, which containerd 1.6 serves.
package critools

import (
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
