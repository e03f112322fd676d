// Package render turns a node's validated NodeConfig into the files the node needs (containerd,
// kubelet and kubeadm configuration, credentials) and the command that brings it into its cluster.
// It only computes: writing the files and running the command is the caller's job.
//
// The layout is kubeadm's, because the image ships kubeadm's standard kubelet.service (flags from
// /var/lib/kubelet/kubeadm-flags.env and /etc/default/kubelet, configuration from
// /var/lib/kubelet/config.yaml, credentials from /etc/kubernetes/kubelet.conf). By role:
//
//   - master: kubeadm InitConfiguration + ClusterConfiguration + KubeletConfiguration in
//     /etc/imgctl/kubeadm.yaml (and the cluster CA when credentials.caKey is set); kubeadm init,
//     with --upload-certs when credentials.certificateKey is set.
//   - masterFollower: a JoinConfiguration with controlPlane; kubeadm join.
//   - node with a bootstrap token: a JoinConfiguration; kubeadm join.
//   - node with a client certificate: every kubelet file, no command (the caller starts kubelet,
//     which registers the node itself).
//
// Every role also gets /etc/containerd/config.toml and /etc/crictl.yaml.
package render

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/layers/kubeversion"
)

// Paths on the node.
const (
	ContainerdConfigPath  = "/etc/containerd/config.toml"
	KubeadmConfigPath     = "/etc/imgctl/kubeadm.yaml"
	CACertPath            = "/etc/kubernetes/pki/ca.crt"
	CAKeyPath             = "/etc/kubernetes/pki/ca.key"
	KubeletKubeconfigPath = "/etc/kubernetes/kubelet.conf"
	KubeletConfigPath     = "/var/lib/kubelet/config.yaml"
	KubeletFlagsPath      = "/var/lib/kubelet/kubeadm-flags.env"
	KubeletExtraArgsPath  = "/etc/default/kubelet"
	// KubeletClientPath holds a pre-issued kubelet client certificate and key. It is deliberately
	// not kubelet-client-current.pem: with rotateCertificates the kubelet's certificate store
	// requires that name to be a symlink and fails every rotation if it is a regular file. The
	// kubelet reads this pair until its first rotation, then the symlink it creates.
	KubeletClientPath = "/var/lib/kubelet/pki/kubelet-client-imgctl.pem"
	// KubeadmAdminConfPath is where kubeadm init and join --control-plane write the
	// cluster-admin kubeconfig (configure copies it to spec.cluster.adminKubeconfig).
	KubeadmAdminConfPath = "/etc/kubernetes/admin.conf"
	// CrictlConfigPath points crictl (kubeadm's preflight runs it; so do operators) at containerd.
	CrictlConfigPath = "/etc/crictl.yaml"
)

// The CNI directories containerd's CRI plugin reads: the plugins (where Debian's
// containernetworking-plugins installs them, in the image's runtime layer) and the network
// configuration (imgctl-node podnet writes it once the node has its pod CIDR).
const (
	CNIBinDir  = "/usr/lib/cni"
	CNIConfDir = "/etc/cni/net.d"
)

// ContainerdSocket is containerd's CRI endpoint.
const ContainerdSocket = "unix:///run/containerd/containerd.sock"

// Input is what Render needs to know about the node.
type Input struct {
	Config     *nodeconfig.NodeConfig // validated, Defaults() applied
	Kubernetes string                 // the image's Kubernetes version, e.g. "1.21.13" (see kubeversion.Parse)
	NodeName   string                 // resolved node name (= hostname)
	// SandboxImage is containerd's sandbox (pause) image; "" means the baked one (see
	// BakedImages), else the one the Kubernetes version's kubeadm expects
	// (kubeversion.Version.SandboxImage).
	SandboxImage string
	// BakedImages names the container images baked into the image (configure imports them
	// before kubeadm runs). A master or masterFollower needs every control-plane image of its
	// Kubernetes version among them, in one repository R (that of the baked kube-apiserver
	// vVERSION): the master's ClusterConfiguration then sets imageRepository R, and the etcd and
	// CoreDNS tags when the baked ones are not kubeadm's defaults. The sandbox image is R's
	// pause, else any baked image of a repository named pause.
	BakedImages []string
	// AdvertiseAddress is, for master and masterFollower, the IP address this node's API server
	// advertises; "" means the first address of spec.kubelet.extraArgs.node-ip, or without one
	// lets kubeadm pick the address of the default route's interface. Ignored for role node.
	AdvertiseAddress string
}

// File is one file to write on the node.
type File struct {
	Path string // absolute
	Mode fs.FileMode
	Data []byte
}

// Plan is what a node does to join its cluster.
type Plan struct {
	Files []File // sorted by Path
	// Command brings the node in: kubeadm init or join. It is nil for a node with a client
	// certificate, which only needs its kubelet started.
	Command []string
	// SandboxImage is the sandbox (pause) image the files name: Input.SandboxImage, the baked
	// one, or by default the one the Kubernetes version's kubeadm expects.
	SandboxImage string
	// SkipImages are baked images (of Input.BakedImages) this machine never runs, so configure
	// does not import them: on a node, the control-plane-only ones (ControlPlaneOnlyWhy).
	SkipImages []string
}

// ControlPlaneOnlyWhy says why a node skips the images in Plan.SkipImages.
const ControlPlaneOnlyWhy = "control-plane only: a node never runs them"

// fieldError is nodeconfig's error type: one problem with one named field.
type fieldError = nodeconfig.FieldError

// Render computes in's files and command. It checks in first and reports every problem at once,
// each naming the field (spec.kubelet.extraArgs.v, Kubernetes, NodeName, ...); no error echoes a
// secret.
func Render(in Input) (*Plan, error) {
	r, err := newRenderer(in)
	if err != nil {
		return nil, err
	}
	p := Plan{SandboxImage: r.sandbox}
	p.Files = append(p.Files, r.containerdConfig(), crictlConfig())
	cr := r.creds()
	switch r.cfg.Spec.Role {
	case nodeconfig.RoleMaster:
		files, err := r.master()
		if err != nil {
			return nil, err
		}
		p.Files = append(p.Files, files...)
		p.Command = []string{"kubeadm", "init", "--config", KubeadmConfigPath}
		if cr.CertificateKey != "" {
			// The followers download the control-plane certificates, encrypted with the key.
			p.Command = append(p.Command, "--upload-certs")
		}
	case nodeconfig.RoleMasterFollower:
		f, err := r.join(true)
		if err != nil {
			return nil, err
		}
		p.Files = append(p.Files, f)
		p.Command = []string{"kubeadm", "join", "--config", KubeadmConfigPath}
	case nodeconfig.RoleNode:
		p.SkipImages = controlPlaneOnlyImages(r.in.BakedImages, r.v)
		if cr.ClientCertificate != "" {
			files, err := r.certNode()
			if err != nil {
				return nil, err
			}
			p.Files = append(p.Files, files...)
			break
		}
		f, err := r.join(false)
		if err != nil {
			return nil, err
		}
		p.Files = append(p.Files, f)
		p.Command = []string{"kubeadm", "join", "--config", KubeadmConfigPath}
	}
	slices.SortFunc(p.Files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	return &p, nil
}

// renderer holds a checked Input.
type renderer struct {
	in      Input
	cfg     *nodeconfig.NodeConfig
	v       kubeversion.Version
	sandbox string
	// cp is, for master and masterFollower, the baked control-plane images.
	cp controlPlaneImages
	// apiHost and apiPort split cluster.apiServer ("" when unset); the port defaults to 443.
	apiHost, apiPort string
}

func (r *renderer) creds() nodeconfig.Credentials {
	if r.cfg.Spec.Credentials == nil {
		return nodeconfig.Credentials{}
	}
	return *r.cfg.Spec.Credentials
}

var (
	// imageRefRE is deliberately loose (the runtime parses the reference); it keeps out what
	// would break the TOML string and the kubelet flag the reference is written into.
	imageRefRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$`)
)

// newRenderer checks in and derives what every role needs.
func newRenderer(in Input) (*renderer, error) {
	if in.Config == nil {
		return nil, &fieldError{Field: "Config", Detail: "missing (expected a validated NodeConfig)"}
	}
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, &fieldError{Field: field, Detail: fmt.Sprintf(format, args...)})
	}
	r := &renderer{in: in, cfg: in.Config}

	v, verr := kubeversion.Parse(in.Kubernetes)
	if verr != nil {
		add("Kubernetes", "%v", verr)
	}
	r.v = v

	if err := in.Config.Validate(); err != nil {
		errs = append(errs, err) // one *FieldError per problem; nodeconfig never echoes secrets
	}
	cl := in.Config.Spec.Cluster
	if cl.DNSDomain == "" || cl.ServiceCIDR == "" || len(cl.ClusterDNS) == 0 {
		add("spec.cluster", "dnsDomain, serviceCIDR and clusterDNS must be set (call NodeConfig.Defaults before Render)")
	}
	if cl.APIServer != "" {
		r.apiHost, r.apiPort = splitAPIServer(cl.APIServer)
	}

	if err := nodeconfig.CheckNodeName(in.NodeName); err != nil {
		add("NodeName", "%v", err)
	}

	r.sandbox = in.SandboxImage
	if r.sandbox == "" && verr == nil {
		if r.sandbox = bakedSandbox(in.BakedImages, v); r.sandbox == "" {
			r.sandbox = v.SandboxImage()
		}
	}
	if role := in.Config.Spec.Role; verr == nil && (role == nodeconfig.RoleMaster || role == nodeconfig.RoleMasterFollower) {
		r.cp = findControlPlane(newBakedSet(in.BakedImages), v)
		if len(r.cp.missing) > 0 {
			errs = append(errs, missingImagesError(string(role), v, r.cp.missing))
		}
	}
	if in.SandboxImage != "" && !imageRefRE.MatchString(in.SandboxImage) {
		add("SandboxImage", "%q is not an image reference (expected e.g. registry.k8s.io/pause:3.4.1)", in.SandboxImage)
	}

	if in.AdvertiseAddress == "" && in.Config.Spec.Role != nodeconfig.RoleNode {
		// The address the kubelet is told to use is the one to advertise: with several NICs
		// kubeadm would pick the default route's, which may be the same on every machine.
		if v := in.Config.Spec.Kubelet.ExtraArgs[flagNodeIP]; v != "" {
			first, _, _ := strings.Cut(v, ",")
			if ip, err := netip.ParseAddr(first); err != nil || ip.Zone() != "" || !ip.IsGlobalUnicast() {
				add(fieldExtraArgs+"."+flagNodeIP, "%q is not a routable unicast IP address (expected e.g. 10.0.0.11, or two of them, comma-separated)", first)
			} else {
				r.in.AdvertiseAddress = first
			}
		}
	}
	if a := in.AdvertiseAddress; a != "" && in.Config.Spec.Role != nodeconfig.RoleNode {
		if ip, err := netip.ParseAddr(a); err != nil || ip.Zone() != "" || !ip.IsGlobalUnicast() {
			add("AdvertiseAddress", "%q is not a routable unicast IP address (expected e.g. 10.0.0.11, or empty to let kubeadm choose)", a)
		}
	}

	errs = append(errs, r.checkKubelet()...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// splitAPIServer splits a validated https://HOST[:PORT] into host and port (443 when absent).
func splitAPIServer(s string) (host, port string) {
	u, err := url.Parse(s)
	if err != nil { // Validate reported it
		return "", ""
	}
	port = u.Port()
	if port == "" {
		port = "443"
	}
	return u.Hostname(), port
}

// apiEndpoint returns cluster.apiServer as kubeadm's HOST:PORT ([IPv6]:PORT).
func (r *renderer) apiEndpoint() string {
	return net.JoinHostPort(r.apiHost, r.apiPort)
}

// header starts every generated text file that allows comments.
const header = "Generated by imgctl-node from this node's NodeConfig: edit that, not this file."
