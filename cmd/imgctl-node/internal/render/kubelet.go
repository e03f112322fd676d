package render

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode"

	"github.com/imgctl/imgctl/images/nodeconfig"
)

// StaticPodPath is where kubeadm writes control-plane static pods.
const StaticPodPath = "/etc/kubernetes/manifests"

// Kubelet flags derived from dedicated NodeConfig fields; extraArgs must not set them too.
const (
	flagNodeLabels = "node-labels"
	flagTaints     = "register-with-taints"
	flagMaxPods    = "max-pods"
)

const fieldExtraArgs = "spec.kubelet.extraArgs"

// flagNodeIP is the kubelet's node address; a control-plane machine advertises it too.
const flagNodeIP = "node-ip"

// Besides whitespace and control characters, the runes a flag value must not hold (envUnsafe).
const (
	envUnsafeRunes   = "\"'\\$`"
	envUnsafeAllowed = "no whitespace, quotes, backslashes, '$' or '`'"
)

// checkKubelet checks what Validate leaves to the renderer: extraArgs that the kubelet's
// environment files can carry and that do not fight a dedicated field, and for a node with a
// client certificate, that it has no bootstrap token too and a certificate the Node authorizer
// admits for this node.
func (r *renderer) checkKubelet() []error {
	var errs []error
	k := r.cfg.Spec.Kubelet
	for _, name := range slices.Sorted(maps.Keys(k.ExtraArgs)) {
		f := fieldExtraArgs + "." + name
		if i := strings.IndexFunc(k.ExtraArgs[name], envUnsafe); i >= 0 {
			errs = append(errs, &fieldError{Field: f, Detail: fmt.Sprintf(
				"value %q contains %q, which kubelet.service's word-split environment variables cannot carry (expected %s)",
				k.ExtraArgs[name], k.ExtraArgs[name][i:i+1], envUnsafeAllowed)})
		}
	}
	conflict := func(flag, field string, set bool) {
		if _, ok := k.ExtraArgs[flag]; ok && set {
			errs = append(errs, &fieldError{Field: fieldExtraArgs + "." + flag,
				Detail: "conflicts with " + field + " (set one of them)"})
		}
	}
	conflict(flagNodeLabels, "spec.kubelet.nodeLabels", len(k.NodeLabels) > 0)
	conflict(flagTaints, "spec.kubelet.registerWithTaints", len(k.RegisterWithTaints) > 0)
	conflict(flagMaxPods, "spec.kubelet.maxPods", k.MaxPods > 0)

	if cr := r.cfg.Spec.Credentials; r.cfg.Spec.Role == nodeconfig.RoleNode && cr != nil && cr.ClientCertificate != "" {
		if cr.BootstrapToken != "" {
			errs = append(errs, &fieldError{Field: "spec.credentials",
				Detail: "bootstrapToken and clientCertificate are both set (expected one way to join: a token or a pre-issued certificate)"})
		}
		if err := checkNodeCert(cr.ClientCertificate, r.in.NodeName); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// envUnsafe reports runes that systemd's EnvironmentFile parsing or the unit's unquoted $VAR
// expansion would split, strip or reinterpret.
func envUnsafe(c rune) bool {
	return unicode.IsSpace(c) || unicode.IsControl(c) || strings.ContainsRune(envUnsafeRunes, c)
}

// checkNodeCert checks that the client certificate names the node as the Node authorizer and
// NodeRestriction expect: CN system:node:NAME in group (O) system:nodes. A certificate that does
// not parse was already reported by Validate.
func checkNodeCert(certPEM, nodeName string) error {
	b, _ := pem.Decode([]byte(certPEM))
	if b == nil {
		return nil
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil
	}
	wantCN := "system:node:" + nodeName
	if c.Subject.CommonName != wantCN || !slices.Contains(c.Subject.Organization, "system:nodes") {
		return &fieldError{Field: "spec.credentials.clientCertificate", Detail: fmt.Sprintf(
			"subject CN %q, O %q (expected CN %q, O system:nodes: the API server admits a kubelet only as its own node)",
			c.Subject.CommonName, c.Subject.Organization, wantCN)}
	}
	return nil
}

// kubeletFlag is one command-line flag without its leading dashes.
type kubeletFlag struct{ name, value string }

// joinFlags renders flags as the unit expands them: --name=value, space separated.
func joinFlags(flags []kubeletFlag) string {
	s := make([]string, len(flags))
	for i, f := range flags {
		s[i] = "--" + f.name + "=" + f.value
	}
	return strings.Join(s, " ")
}

// envFile is a systemd EnvironmentFile setting one variable to flags.
func envFile(name string, flags []kubeletFlag) []byte {
	return fmt.Appendf(nil, "# %s\n%s=\"%s\"\n", header, name, joinFlags(flags))
}

// labelsFlag renders node labels as --node-labels wants them: k=v, sorted, comma separated.
func labelsFlag(labels map[string]string) string {
	s := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		s = append(s, k+"="+labels[k])
	}
	return strings.Join(s, ",")
}

// extraArgFlags returns extraArgs as flags, sorted by name.
func extraArgFlags(args map[string]string) []kubeletFlag {
	flags := make([]kubeletFlag, 0, len(args))
	for _, k := range slices.Sorted(maps.Keys(args)) {
		flags = append(flags, kubeletFlag{k, args[k]})
	}
	return flags
}

// certNodeFlags are KUBELET_KUBEADM_ARGS for a node that registers itself, sorted by name. What
// Kubernetes 1.21's KubeletConfiguration lacks is a flag; what each version dropped is left out:
//
//   - --container-runtime=remote: before 1.24 (the flag is gone in 1.27; remote is the only runtime from 1.24).
//   - --container-runtime-endpoint: before 1.27; later it is the config field containerRuntimeEndpoint.
//   - --pod-infra-container-image: before 1.35, which removed it. Older kubelets exempt that image
//     from garbage collection, which containerd 1.6 does not ask for.
//   - --hostname-override, --node-labels, --register-node and --register-with-taints: flags in
//     every version (1.21's KubeletConfiguration has no registerNode or registerWithTaints).
func (r *renderer) certNodeFlags() []kubeletFlag {
	k := r.cfg.Spec.Kubelet
	var flags []kubeletFlag
	if !r.v.AtLeast(24) {
		flags = append(flags, kubeletFlag{"container-runtime", "remote"})
	}
	if !r.v.AtLeast(27) {
		flags = append(flags, kubeletFlag{"container-runtime-endpoint", ContainerdSocket})
	}
	flags = append(flags, kubeletFlag{"hostname-override", r.in.NodeName})
	if len(k.NodeLabels) > 0 {
		flags = append(flags, kubeletFlag{flagNodeLabels, labelsFlag(k.NodeLabels)})
	}
	if !r.v.AtLeast(35) {
		flags = append(flags, kubeletFlag{"pod-infra-container-image", r.sandbox})
	}
	flags = append(flags, kubeletFlag{"register-node", "true"})
	if len(k.RegisterWithTaints) > 0 {
		flags = append(flags, kubeletFlag{flagTaints, strings.Join(k.RegisterWithTaints, ",")})
	}
	return flags
}

// kubeletConfig is the subset of kubelet.config.k8s.io/v1beta1 KubeletConfiguration we set,
// with the upstream JSON names. The real type (k8s.io/kubelet) would pull ~345 packages into the
// node agent, which is also the initrd's /init (19 MB instead of 2 MB): the tests decode every
// rendered file strictly into the real type instead, so a misspelt or mistyped field fails them.
type kubeletConfig struct {
	APIVersion               string                `json:"apiVersion"`
	Kind                     string                `json:"kind"`
	Authentication           kubeletAuthentication `json:"authentication"`
	Authorization            kubeletAuthorization  `json:"authorization"`
	CgroupDriver             string                `json:"cgroupDriver,omitempty"`
	ClusterDNS               []string              `json:"clusterDNS,omitempty"`
	ClusterDomain            string                `json:"clusterDomain,omitempty"`
	ContainerRuntimeEndpoint string                `json:"containerRuntimeEndpoint,omitempty"`
	HealthzBindAddress       string                `json:"healthzBindAddress,omitempty"`
	HealthzPort              *int32                `json:"healthzPort,omitempty"`
	MaxPods                  int32                 `json:"maxPods,omitempty"`
	ResolverConfig           *string               `json:"resolvConf,omitempty"`
	RotateCertificates       bool                  `json:"rotateCertificates,omitempty"`
	// Graceful node shutdown (GracefulNodeShutdown, beta and on by default from 1.21): the
	// kubelet holds a systemd-logind inhibitor lock and stops pods before the node powers off.
	ShutdownGracePeriod             string `json:"shutdownGracePeriod,omitempty"`
	ShutdownGracePeriodCriticalPods string `json:"shutdownGracePeriodCriticalPods,omitempty"`
	StaticPodPath                   string `json:"staticPodPath,omitempty"`
}

// Graceful node shutdown: an update's reboot (systemctl reboot) gives pods ShutdownGracePeriod
// in all, the last ShutdownGracePeriodCriticalPods of it reserved for critical pods.
const (
	ShutdownGracePeriod             = "30s"
	ShutdownGracePeriodCriticalPods = "10s"
)

type kubeletAuthentication struct {
	Anonymous struct {
		Enabled *bool `json:"enabled,omitempty"`
	} `json:"anonymous"`
	Webhook struct {
		Enabled *bool `json:"enabled,omitempty"`
	} `json:"webhook"`
	X509 struct {
		ClientCAFile string `json:"clientCAFile,omitempty"`
	} `json:"x509"`
}

type kubeletAuthorization struct {
	Mode string `json:"mode,omitempty"`
}

// kubeletConfiguration is the KubeletConfiguration every role shares: for a node with a client
// certificate its config.yaml, for a master the cluster-wide document kubeadm init uploads (so
// per-node settings such as maxPods stay out of it: withMaxPods is for the former only). It sets
// only fields that Kubernetes 1.21's kubelet knows, plus containerRuntimeEndpoint from 1.27.
func (r *renderer) kubeletConfiguration(withMaxPods bool) ([]byte, error) {
	cl := r.cfg.Spec.Cluster
	c := kubeletConfig{
		APIVersion:         "kubelet.config.k8s.io/v1beta1",
		Kind:               "KubeletConfiguration",
		Authorization:      kubeletAuthorization{Mode: "Webhook"},
		CgroupDriver:       "systemd",
		ClusterDNS:         slices.Clone(cl.ClusterDNS),
		ClusterDomain:      cl.DNSDomain,
		StaticPodPath:      StaticPodPath,
		HealthzBindAddress: "127.0.0.1",
		HealthzPort:        ptr[int32](10248),
		RotateCertificates: true,
		ResolverConfig:     ptr("/etc/resolv.conf"),

		ShutdownGracePeriod:             ShutdownGracePeriod,
		ShutdownGracePeriodCriticalPods: ShutdownGracePeriodCriticalPods,
	}
	c.Authentication.Anonymous.Enabled = ptr(false)
	c.Authentication.Webhook.Enabled = ptr(true)
	c.Authentication.X509.ClientCAFile = CACertPath
	if withMaxPods {
		c.MaxPods = int32(r.cfg.Spec.Kubelet.MaxPods) // nodeconfig admits 32-bit integers only
	}
	if r.v.AtLeast(27) {
		c.ContainerRuntimeEndpoint = ContainerdSocket
	}
	return marshalYAML(c)
}

// kubeconfig is the subset of client-go's clientcmd v1 Config the kubelet needs.
type kubeconfig struct {
	APIVersion     string         `json:"apiVersion"`
	Kind           string         `json:"kind"`
	Clusters       []namedCluster `json:"clusters"`
	Contexts       []namedContext `json:"contexts"`
	CurrentContext string         `json:"current-context"`
	Users          []namedUser    `json:"users"`
}

type namedCluster struct {
	Name    string `json:"name"`
	Cluster struct {
		Server               string `json:"server"`
		CertificateAuthority string `json:"certificate-authority"`
	} `json:"cluster"`
}

type namedContext struct {
	Name    string `json:"name"`
	Context struct {
		Cluster string `json:"cluster"`
		User    string `json:"user"`
	} `json:"context"`
}

type namedUser struct {
	Name string `json:"name"`
	User struct {
		ClientCertificate string `json:"client-certificate"`
		ClientKey         string `json:"client-key"`
	} `json:"user"`
}

// kubeletKubeconfig points the kubelet at the API server with the pre-issued client certificate.
// The names are those the kubelet itself writes after a TLS bootstrap.
func (r *renderer) kubeletKubeconfig() ([]byte, error) {
	var cl namedCluster
	cl.Name = "default-cluster"
	cl.Cluster.Server = "https://" + r.apiEndpoint()
	cl.Cluster.CertificateAuthority = CACertPath
	var ctx namedContext
	ctx.Name = "default-context"
	ctx.Context.Cluster = cl.Name
	ctx.Context.User = "default-auth"
	var u namedUser
	u.Name = ctx.Context.User
	u.User.ClientCertificate = KubeletClientPath
	u.User.ClientKey = KubeletClientPath
	return marshalYAML(kubeconfig{
		APIVersion: "v1", Kind: "Config",
		Clusters: []namedCluster{cl}, Contexts: []namedContext{ctx}, CurrentContext: ctx.Name, Users: []namedUser{u},
	})
}

// certNode renders a node that registers itself with a pre-issued client certificate: the kubelet's
// credentials, kubeconfig, configuration and flags. The caller starts kubelet.
func (r *renderer) certNode() ([]File, error) {
	cr := r.creds()
	kubeconfig, err := r.kubeletKubeconfig()
	if err != nil {
		return nil, err
	}
	config, err := r.kubeletConfiguration(true)
	if err != nil {
		return nil, err
	}
	return []File{
		{Path: CACertPath, Mode: 0o644, Data: pemText(r.cfg.Spec.Cluster.CACertificate)},
		{Path: KubeletClientPath, Mode: 0o600, Data: append(pemText(cr.ClientCertificate), pemText(cr.ClientKey)...)},
		{Path: KubeletKubeconfigPath, Mode: 0o600, Data: yamlFile(kubeconfig)},
		{Path: KubeletConfigPath, Mode: 0o644, Data: yamlFile(config)},
		{Path: KubeletFlagsPath, Mode: 0o644, Data: envFile("KUBELET_KUBEADM_ARGS", r.certNodeFlags())},
		{Path: KubeletExtraArgsPath, Mode: 0o644, Data: envFile("KUBELET_EXTRA_ARGS", extraArgFlags(r.cfg.Spec.Kubelet.ExtraArgs))},
	}, nil
}

// pemText returns PEM text ending in exactly one newline.
func pemText(s string) []byte {
	return []byte(strings.TrimRight(s, "\n") + "\n")
}

func ptr[T any](v T) *T { return &v }
