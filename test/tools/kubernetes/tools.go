//go:build tools

// Package kubernetes pins k8s.io/kubernetes so test and demo builds can compile a real kubelet,
// kubeadm and the control-plane components (scripts/build-control-plane-images.sh) from the Go
// module proxy (upstream release hosts and registry.k8s.io are not always reachable).
package kubernetes

import (
	_ "k8s.io/kube-openapi/cmd/openapi-gen"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubeadm"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
