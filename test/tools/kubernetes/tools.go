//go:build tools

// Package kubernetes pins k8s.io/kubernetes so test and demo builds can compile a real kubelet
// and kubeadm from the Go module proxy (upstream release hosts are not always reachable).
package kubernetes

import (
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
