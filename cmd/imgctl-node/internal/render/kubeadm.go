package render

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/layers/kubeversion"
)

// The kubeadm configuration types below are the fields Render sets, shaped as kubeadm's
// v1beta2 (1.21), v1beta3 (1.22–1.30) and v1beta4 (1.31 on). The three agree on every field used
// here except nodeRegistration.kubeletExtraArgs (see extraArgs); the apiVersion tells them apart.

// typeMeta is a document's apiVersion and kind.
type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// initConfiguration is kubeadm's InitConfiguration.
type initConfiguration struct {
	typeMeta
	BootstrapTokens  []bootstrapToken `json:"bootstrapTokens,omitempty"`
	NodeRegistration nodeRegistration `json:"nodeRegistration"`
	LocalAPIEndpoint *apiEndpoint     `json:"localAPIEndpoint,omitempty"`
	CertificateKey   string           `json:"certificateKey,omitempty"`
	Timeouts         *initTimeouts    `json:"timeouts,omitempty"` // v1beta4
}

// initTimeouts is v1beta4's InitConfiguration.timeouts, which took over
// apiServer.timeoutForControlPlane.
type initTimeouts struct {
	ControlPlaneComponentHealthCheck string `json:"controlPlaneComponentHealthCheck"`
}

// ControlPlaneTimeout bounds kubeadm init's wait for the control plane it started as static
// pods (kubeadm's default: 4 minutes). Under TCG, with the node also importing the control-plane
// images, etcd and the API server took longer than 4 minutes to answer; a control plane that
// does not come up still fails the attempt well inside KubeadmAttemptTimeout's 10 minutes.
const ControlPlaneTimeout = 7 * time.Minute

// bootstrapToken is one of kubeadm init's bootstrap tokens; kubeadm defaults its TTL (24 h),
// usages and groups to those of a join token.
type bootstrapToken struct {
	Token string `json:"token"`
}

// clusterConfiguration is kubeadm's ClusterConfiguration.
type clusterConfiguration struct {
	typeMeta
	KubernetesVersion    string     `json:"kubernetesVersion"`
	ClusterName          string     `json:"clusterName,omitempty"`
	ControlPlaneEndpoint string     `json:"controlPlaneEndpoint,omitempty"`
	ImageRepository      string     `json:"imageRepository,omitempty"`
	Networking           networking `json:"networking"`
	Etcd                 *etcd      `json:"etcd,omitempty"`
	DNS                  *dns       `json:"dns,omitempty"`
	APIServer            *apiServer `json:"apiServer,omitempty"` // before v1beta4
}

// apiServer is ClusterConfiguration.apiServer.
type apiServer struct {
	TimeoutForControlPlane string `json:"timeoutForControlPlane"`
}

// etcd is ClusterConfiguration.etcd: the local etcd's image tag, when it is not kubeadm's
// default, and its flags (spec.cluster.etcd's Raft timing).
type etcd struct {
	Local localEtcd `json:"local"`
}

type localEtcd struct {
	ImageTag  string    `json:"imageTag,omitempty"`
	ExtraArgs extraArgs `json:"extraArgs,omitzero"`
}

// dns is ClusterConfiguration.dns: CoreDNS's image tag, when it is not kubeadm's default.
type dns struct {
	ImageTag string `json:"imageTag"`
}

type networking struct {
	ServiceSubnet string `json:"serviceSubnet,omitempty"`
	PodSubnet     string `json:"podSubnet,omitempty"`
	DNSDomain     string `json:"dnsDomain,omitempty"`
}

// joinConfiguration is kubeadm's JoinConfiguration.
type joinConfiguration struct {
	typeMeta
	NodeRegistration nodeRegistration  `json:"nodeRegistration"`
	Discovery        discovery         `json:"discovery"`
	ControlPlane     *joinControlPlane `json:"controlPlane,omitempty"`
	Timeouts         *joinTimeouts     `json:"timeouts,omitempty"` // v1beta4
}

type discovery struct {
	BootstrapToken bootstrapTokenDiscovery `json:"bootstrapToken"`
	Timeout        string                  `json:"timeout,omitempty"` // before v1beta4
}

// joinTimeouts is v1beta4's JoinConfiguration.timeouts, which took over discovery.timeout.
type joinTimeouts struct {
	Discovery string `json:"discovery"`
}

// DiscoveryTimeout bounds a join's discovery (kubeadm's default: 5 minutes), so that a wrong
// token or an unreachable API server ends one kubeadm join attempt in time for the next.
const DiscoveryTimeout = 2 * time.Minute

type bootstrapTokenDiscovery struct {
	APIServerEndpoint string   `json:"apiServerEndpoint"`
	Token             string   `json:"token"`
	CACertHashes      []string `json:"caCertHashes"`
}

type joinControlPlane struct {
	LocalAPIEndpoint *apiEndpoint `json:"localAPIEndpoint,omitempty"`
	CertificateKey   string       `json:"certificateKey"`
}

type apiEndpoint struct {
	AdvertiseAddress string `json:"advertiseAddress,omitempty"`
}

// nodeRegistration is kubeadm's NodeRegistrationOptions. Taints left nil let kubeadm apply its
// default: the control-plane taint for master and masterFollower, none for a node.
type nodeRegistration struct {
	Name                  string    `json:"name"`
	CRISocket             string    `json:"criSocket"`
	Taints                []taint   `json:"taints,omitempty"`
	KubeletExtraArgs      extraArgs `json:"kubeletExtraArgs,omitzero"`
	IgnorePreflightErrors []string  `json:"ignorePreflightErrors,omitempty"`
}

// PreflightHTTPProxyCIDR is the kubeadm preflight check a control-plane node ignores. For the
// Service and pod CIDRs it parses "https://[10.96.0.1]:1234/", which Go 1.26's net/url refuses
// ("invalid IP-literal"): a kubeadm built with Go 1.26 (ours, from the Go module proxy) fails
// every kubeadm init and control-plane join in preflight. All the check does is warn that an
// HTTP proxy would catch those addresses, and imgctl nodes set no proxy for kubeadm.
const PreflightHTTPProxyCIDR = "HTTPProxyCIDR"

// taint is a core/v1 Taint.
type taint struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Effect string `json:"effect"`
}

// extraArgs are flags without their leading dashes, sorted by name. v1beta4 writes them as a
// list of {name, value} (which allows duplicates); v1beta2 and v1beta3 as a map.
type extraArgs struct {
	list  bool
	flags []kubeletFlag
}

// IsZero reports whether there are no flags, for omitzero.
func (a extraArgs) IsZero() bool { return len(a.flags) == 0 }

// MarshalJSON writes the map or list form.
func (a extraArgs) MarshalJSON() ([]byte, error) {
	if a.list {
		type arg struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		}
		l := make([]arg, len(a.flags))
		for i, f := range a.flags {
			l[i] = arg{f.name, f.value}
		}
		return json.Marshal(l)
	}
	m := make(map[string]string, len(a.flags))
	for _, f := range a.flags {
		m[f.name] = f.value
	}
	return json.Marshal(m)
}

// nodeRegistration registers this node: its name, containerd's socket, and the kubelet's
// per-node settings: nodeLabels as --node-labels, maxPods as --max-pods (kubeadm has no per-node
// KubeletConfiguration before 1.25's patches, and a master's KubeletConfiguration is cluster-wide)
// and extraArgs; registerWithTaints as taints, which replace kubeadm's default control-plane taint
// on a control-plane node.
func (r *renderer) nodeRegistration() nodeRegistration {
	k := r.cfg.Spec.Kubelet
	nr := nodeRegistration{Name: r.in.NodeName, CRISocket: ContainerdSocket}
	for _, t := range k.RegisterWithTaints {
		nr.Taints = append(nr.Taints, parseTaint(t))
	}
	args := make(map[string]string, len(k.ExtraArgs)+2)
	for n, v := range k.ExtraArgs {
		args[n] = v
	}
	if len(k.NodeLabels) > 0 {
		args[flagNodeLabels] = labelsFlag(k.NodeLabels)
	}
	if k.MaxPods > 0 {
		args[flagMaxPods] = strconv.Itoa(k.MaxPods)
	}
	nr.KubeletExtraArgs = extraArgs{list: r.v.KubeadmAPIVersion() == kubeversion.KubeadmV1beta4, flags: extraArgFlags(args)}
	if r.cfg.Spec.Role == nodeconfig.RoleMaster || r.cfg.Spec.Role == nodeconfig.RoleMasterFollower {
		nr.IgnorePreflightErrors = []string{PreflightHTTPProxyCIDR}
	}
	return nr
}

// parseTaint splits a validated key[=value]:Effect.
func parseTaint(s string) taint {
	kv, effect, _ := strings.Cut(s, ":")
	k, v, _ := strings.Cut(kv, "=")
	return taint{Key: k, Value: v, Effect: effect}
}

// localAPIEndpoint is the advertise address, when the caller gave one.
func (r *renderer) localAPIEndpoint() *apiEndpoint {
	if r.in.AdvertiseAddress == "" {
		return nil
	}
	return &apiEndpoint{AdvertiseAddress: r.in.AdvertiseAddress}
}

// join renders the JoinConfiguration of a node joining with a bootstrap token, or with
// controlPlane of a masterFollower.
func (r *renderer) join(controlPlane bool) (File, error) {
	cr := r.creds()
	jc := joinConfiguration{
		typeMeta:         typeMeta{APIVersion: r.v.KubeadmAPIVersion(), Kind: "JoinConfiguration"},
		NodeRegistration: r.nodeRegistration(),
		Discovery: discovery{BootstrapToken: bootstrapTokenDiscovery{
			APIServerEndpoint: r.apiEndpoint(),
			Token:             cr.BootstrapToken,
			CACertHashes:      cr.CACertHashes,
		}},
	}
	if r.v.KubeadmAPIVersion() == kubeversion.KubeadmV1beta4 {
		jc.Timeouts = &joinTimeouts{Discovery: DiscoveryTimeout.String()}
	} else {
		jc.Discovery.Timeout = DiscoveryTimeout.String()
	}
	if controlPlane {
		jc.ControlPlane = &joinControlPlane{LocalAPIEndpoint: r.localAPIEndpoint(), CertificateKey: cr.CertificateKey}
	}
	doc, err := marshalYAML(jc)
	if err != nil {
		return File{}, err
	}
	return File{Path: KubeadmConfigPath, Mode: 0o600, Data: yamlFile(doc)}, nil
}

// master renders kubeadm init's configuration and, when the config carries the cluster CA's key,
// the CA kubeadm then uses instead of generating one.
func (r *renderer) master() ([]File, error) {
	cl := r.cfg.Spec.Cluster
	apiVersion := r.v.KubeadmAPIVersion()
	cr := r.creds()
	ic := initConfiguration{
		typeMeta:         typeMeta{APIVersion: apiVersion, Kind: "InitConfiguration"},
		NodeRegistration: r.nodeRegistration(),
		LocalAPIEndpoint: r.localAPIEndpoint(),
		CertificateKey:   cr.CertificateKey,
	}
	if cr.BootstrapToken != "" {
		ic.BootstrapTokens = []bootstrapToken{{Token: cr.BootstrapToken}}
	}
	cc := clusterConfiguration{
		typeMeta:          typeMeta{APIVersion: apiVersion, Kind: "ClusterConfiguration"},
		KubernetesVersion: "v" + r.v.String(),
		ClusterName:       cl.Name,
		Networking:        networking{ServiceSubnet: cl.ServiceCIDR, PodSubnet: cl.PodCIDR, DNSDomain: cl.DNSDomain},
	}
	if cl.APIServer != "" {
		cc.ControlPlaneEndpoint = r.apiEndpoint()
	}
	cc.ImageRepository = r.cp.repo
	if flags := cl.Etcd.Flags(); r.cp.etcdTag != "" || len(flags) > 0 {
		cc.Etcd = &etcd{Local: localEtcd{ImageTag: r.cp.etcdTag,
			ExtraArgs: extraArgs{list: apiVersion == kubeversion.KubeadmV1beta4, flags: extraArgFlags(flags)}}}
	}
	if r.cp.dnsTag != "" {
		cc.DNS = &dns{ImageTag: r.cp.dnsTag}
	}
	if apiVersion == kubeversion.KubeadmV1beta4 {
		ic.Timeouts = &initTimeouts{ControlPlaneComponentHealthCheck: ControlPlaneTimeout.String()}
	} else {
		cc.APIServer = &apiServer{TimeoutForControlPlane: ControlPlaneTimeout.String()}
	}
	var docs [][]byte
	for _, v := range []any{ic, cc} {
		d, err := marshalYAML(v)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d)
	}
	kc, err := r.kubeletConfiguration(false)
	if err != nil {
		return nil, err
	}
	docs = append(docs, kc)
	files := []File{{Path: KubeadmConfigPath, Mode: 0o600, Data: yamlFile(docs...)}}
	if cr.CAKey != "" {
		key, err := kubeadmKeyPEM(cr.CAKey)
		if err != nil {
			return nil, &fieldError{Field: "spec.credentials.caKey", Detail: err.Error()}
		}
		files = append(files,
			File{Path: CACertPath, Mode: 0o644, Data: pemText(cl.CACertificate)},
			File{Path: CAKeyPath, Mode: 0o600, Data: key})
	}
	return files, nil
}

// kubeadmKeyPEM is a PEM private key in the form kubeadm writes its own: a PKCS#8 ECDSA key
// becomes SEC1 (EC PRIVATE KEY), a PKCS#8 RSA key PKCS#1 (RSA PRIVATE KEY); anything else is
// kept. kubeadm 1.21 uploads ca.key to the kubeadm-certs Secret as is, and a follower's
// download-certs phase (client-go's keyutil.ParsePublicKeysPEM) reads ECDSA keys only as SEC1.
func kubeadmKeyPEM(s string) ([]byte, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil || b.Type != "PRIVATE KEY" {
		return pemText(s), nil
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("bad PKCS#8 private key: %w", err) // carries no key material
	}
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("ECDSA key: %w", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	}
	return pemText(s), nil
}
