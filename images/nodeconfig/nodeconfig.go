// Package nodeconfig defines NodeConfig (apiVersion imgctl/v1alpha1), the document that tells a
// booting node who it is and how to join its cluster; the metadata server, EC2 user data and the
// node's local file all carry it. See README.md in this directory for every field.
//
//	apiVersion: imgctl/v1alpha1
//	kind: NodeConfig
//	metadata: {name: node-7}
//	spec:
//	  role: node                    # master | masterFollower | node
//	  cluster: {name: prod, apiServer: https://10.0.0.10:6443, caCertificate: PEM}
//	  kubelet: {nodeLabels: {k: v}, registerWithTaints: ["k=v:NoSchedule"], maxPods: 110}
//	  update: {server: http://10.0.2.100, channel: prod, interval: 1h, window: "02:00-04:00"}
//	  credentials: {bootstrapToken: abcdef.0123456789abcdef, caCertHashes: ["sha256:…"]}
//
// Credentials are secret: Public strips them for unauthenticated readers, Merge adds them back.
package nodeconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"

	"gopkg.in/yaml.v3"
)

// APIVersion and Kind of a NodeConfig document.
const (
	APIVersion = "imgctl/v1alpha1"
	Kind       = "NodeConfig"
)

// Defaults applied by (*NodeConfig).Defaults.
const (
	DefaultDNSDomain   = "cluster.local"
	DefaultServiceCIDR = "10.96.0.0/12"
)

// Role is what a node does in its cluster.
type Role string

// Roles.
const (
	RoleMaster         Role = "master"         // first control-plane node: kubeadm init
	RoleMasterFollower Role = "masterFollower" // further control-plane node: kubeadm join --control-plane
	RoleNode           Role = "node"           // worker: kubelet only
)

// Roles lists every valid Role.
var Roles = []Role{RoleMaster, RoleMasterFollower, RoleNode}

// NodeConfig is one node's configuration.
type NodeConfig struct {
	APIVersion string     `yaml:"apiVersion" json:"apiVersion"`
	Kind       string     `yaml:"kind" json:"kind"`
	Metadata   ObjectMeta `yaml:"metadata" json:"metadata"`
	Spec       Spec       `yaml:"spec" json:"spec"`
}

// ObjectMeta names the node.
type ObjectMeta struct {
	// Name is the node name and hostname (a DNS-1123 subdomain). Empty: keep the host's name.
	Name string `yaml:"name,omitempty" json:"name,omitempty"`
}

// Spec is the node's desired state.
type Spec struct {
	Role    Role    `yaml:"role" json:"role"`
	Cluster Cluster `yaml:"cluster" json:"cluster"`
	Kubelet Kubelet `yaml:"kubelet,omitempty" json:"kubelet,omitzero"`
	// Update configures in-place A/B updates (imgctl-node update); zero: none.
	Update Update `yaml:"update,omitempty" json:"update,omitzero"`
	// Credentials are secret; nil in a Public copy.
	Credentials *Credentials `yaml:"credentials,omitempty" json:"credentials,omitempty"`
}

// Cluster describes the cluster the node joins (or, for a master, creates). Nothing here is secret.
type Cluster struct {
	Name string `yaml:"name,omitempty" json:"name,omitempty"`
	// APIServer is https://HOST:PORT: the endpoint to join, or for a master the advertised
	// controlPlaneEndpoint.
	APIServer     string   `yaml:"apiServer,omitempty" json:"apiServer,omitempty"`
	DNSDomain     string   `yaml:"dnsDomain,omitempty" json:"dnsDomain,omitempty"`
	ServiceCIDR   string   `yaml:"serviceCIDR,omitempty" json:"serviceCIDR,omitempty"`
	PodCIDR       string   `yaml:"podCIDR,omitempty" json:"podCIDR,omitempty"`
	ClusterDNS    []string `yaml:"clusterDNS,omitempty" json:"clusterDNS,omitempty"`
	CACertificate string   `yaml:"caCertificate,omitempty" json:"caCertificate,omitempty"` // PEM
	// AdminKubeconfig is, for master and masterFollower, an absolute path where the node copies
	// the cluster-admin kubeconfig kubeadm wrote (/etc/kubernetes/admin.conf), mode 0600, once
	// kubeadm has succeeded; empty: nowhere else.
	AdminKubeconfig string `yaml:"adminKubeconfig,omitempty" json:"adminKubeconfig,omitempty"`
	// Etcd tunes the etcd member kubeadm runs on every control-plane machine. The master's
	// kubeadm init writes it into the cluster's configuration, which followers join with; a
	// node and a follower ignore their own.
	Etcd Etcd `yaml:"etcd,omitempty" json:"etcd,omitzero"`
}

// Etcd holds etcd's Raft timing (etcd's "tuning" guide): how often the leader sends heartbeats
// and how long a follower waits without one before it calls an election. etcd's defaults (100ms,
// 1s) suit machines a LAN apart with fast disks; a slower network, slow disks or busy, emulated
// CPUs need longer ones, or leader elections make the API servers restart.
type Etcd struct {
	// HeartbeatInterval is a Go duration in whole milliseconds; default 100ms.
	HeartbeatInterval string `yaml:"heartbeatInterval,omitempty" json:"heartbeatInterval,omitempty"`
	// ElectionTimeout is a Go duration in whole milliseconds, at least 5 × HeartbeatInterval and
	// at most 50s (etcd's own bounds); default 1s.
	ElectionTimeout string `yaml:"electionTimeout,omitempty" json:"electionTimeout,omitempty"`
}

// Kubelet holds per-node kubelet settings.
type Kubelet struct {
	NodeLabels         map[string]string `yaml:"nodeLabels,omitempty" json:"nodeLabels,omitempty"`
	RegisterWithTaints []string          `yaml:"registerWithTaints,omitempty" json:"registerWithTaints,omitempty"` // key[=value]:Effect
	ExtraArgs          map[string]string `yaml:"extraArgs,omitempty" json:"extraArgs,omitempty"`                   // flag name (no dashes) → value
	MaxPods            int               `yaml:"maxPods,omitempty" json:"maxPods,omitempty"`                       // 0: kubelet default
}

// Credentials are the secret part of a NodeConfig: served only to an authenticated node.
type Credentials struct {
	BootstrapToken    string   `yaml:"bootstrapToken,omitempty" json:"bootstrapToken,omitempty"`
	ClientCertificate string   `yaml:"clientCertificate,omitempty" json:"clientCertificate,omitempty"` // PEM
	ClientKey         string   `yaml:"clientKey,omitempty" json:"clientKey,omitempty"`                 // PEM
	CertificateKey    string   `yaml:"certificateKey,omitempty" json:"certificateKey,omitempty"`       // hex, 32 bytes
	CACertHashes      []string `yaml:"caCertHashes,omitempty" json:"caCertHashes,omitempty"`           // sha256:HEX
	CAKey             string   `yaml:"caKey,omitempty" json:"caKey,omitempty"`                         // PEM, master only
}

// IsZero reports whether c holds no credential.
func (c *Credentials) IsZero() bool {
	return c == nil || (c.BootstrapToken == "" && c.ClientCertificate == "" && c.ClientKey == "" &&
		c.CertificateKey == "" && len(c.CACertHashes) == 0 && c.CAKey == "")
}

// FieldError is one problem with one field, named by its path (spec.cluster.apiServer).
type FieldError struct {
	Field  string
	Detail string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Detail }

// maxSize bounds a document: EC2 user data is at most 16 KiB; certificates make it a few KiB.
const maxSize = 1 << 20

// Parse decodes a NodeConfig strictly: unknown fields, wrong types, a second document, a wrong
// apiVersion or kind and malformed values are errors. It neither applies defaults nor checks that
// the fields a role requires are present (a Public document lacks them): call Defaults and
// Validate for that. Every error starts with name, the source of data (a path or URL), and names
// the field: "user-data: spec.role: unknown role "worker" (expected master, masterFollower or node)".
// The error joins one *FieldError per problem where a field is to blame.
func Parse(name string, data []byte) (*NodeConfig, error) {
	if len(data) > maxSize {
		return nil, fmt.Errorf("%s: document is %d bytes (expected at most %d)", name, len(data), maxSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty document (expected a NodeConfig)", name)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: more than one YAML document (expected a single NodeConfig)", name)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if probs := checkSchema("", root, nodeConfigType); len(probs) > 0 {
		return nil, withSource(name, probs)
	}
	var c NodeConfig
	if err := root.Decode(&c); err != nil { // checkSchema should have caught it
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if probs := c.checkValues(); len(probs) > 0 {
		return nil, withSource(name, probs)
	}
	return &c, nil
}

func withSource(name string, probs []*FieldError) error {
	errs := make([]error, len(probs))
	for i, p := range probs {
		errs[i] = fmt.Errorf("%s: %w", name, p)
	}
	return errors.Join(errs...)
}

// Defaults fills unset cluster fields: dnsDomain, serviceCIDR and clusterDNS (the 10th address of
// serviceCIDR, as kubeadm does). A malformed serviceCIDR leaves clusterDNS empty for Validate to report.
// With update.server set, update.enabled defaults to true and update.interval to 1h (a valid
// interval is normalized: 90m becomes 1h30m0s).
func (c *NodeConfig) Defaults() {
	c.Spec.Update.defaults()
	cl := &c.Spec.Cluster
	if cl.DNSDomain == "" {
		cl.DNSDomain = DefaultDNSDomain
	}
	if cl.ServiceCIDR == "" {
		cl.ServiceCIDR = DefaultServiceCIDR
	}
	if len(cl.ClusterDNS) == 0 {
		if ip, ok := nthAddr(cl.ServiceCIDR, 10); ok {
			cl.ClusterDNS = []string{ip.String()}
		}
	}
}

// nthAddr returns the n-th address of a CIDR, if the prefix holds it.
func nthAddr(cidr string, n int) (netip.Addr, bool) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return netip.Addr{}, false
	}
	a := p.Masked().Addr()
	for range n {
		a = a.Next()
		if !a.IsValid() || !p.Contains(a) {
			return netip.Addr{}, false
		}
	}
	return a, true
}

// Public returns a deep copy of c without credentials: what may be served to anyone.
func (c *NodeConfig) Public() NodeConfig {
	p := c.clone()
	p.Spec.Credentials = nil
	return p
}

// Merge returns a deep copy of public with the set fields of secret over its credentials: how a
// server or node recombines a config stored or fetched in two parts.
func Merge(public NodeConfig, secret Credentials) NodeConfig {
	m := public.clone()
	var cr Credentials
	if m.Spec.Credentials != nil {
		cr = *m.Spec.Credentials
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cr.BootstrapToken, secret.BootstrapToken)
	set(&cr.ClientCertificate, secret.ClientCertificate)
	set(&cr.ClientKey, secret.ClientKey)
	set(&cr.CertificateKey, secret.CertificateKey)
	set(&cr.CAKey, secret.CAKey)
	if len(secret.CACertHashes) > 0 {
		cr.CACertHashes = slices.Clone(secret.CACertHashes)
	}
	if cr.IsZero() {
		m.Spec.Credentials = nil
	} else {
		m.Spec.Credentials = &cr
	}
	return m
}

func (c *NodeConfig) clone() NodeConfig {
	d := *c
	d.Spec.Cluster.ClusterDNS = slices.Clone(c.Spec.Cluster.ClusterDNS)
	d.Spec.Kubelet.NodeLabels = maps.Clone(c.Spec.Kubelet.NodeLabels)
	d.Spec.Kubelet.RegisterWithTaints = slices.Clone(c.Spec.Kubelet.RegisterWithTaints)
	d.Spec.Kubelet.ExtraArgs = maps.Clone(c.Spec.Kubelet.ExtraArgs)
	if e := c.Spec.Update.Enabled; e != nil {
		v := *e
		d.Spec.Update.Enabled = &v
	}
	if c.Spec.Credentials != nil {
		cr := *c.Spec.Credentials
		cr.CACertHashes = slices.Clone(cr.CACertHashes)
		d.Spec.Credentials = &cr
	}
	return d
}
