package nodeconfig

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Validate reports every problem with c, joined, one *FieldError each: malformed values and the
// fields c's role requires. Call Defaults first for a config that relies on them.
//
//   - node: cluster.apiServer, and credentials bootstrapToken + caCertHashes, or clientCertificate +
//     clientKey + cluster.caCertificate.
//   - masterFollower: cluster.apiServer and credentials bootstrapToken, caCertHashes, certificateKey.
//   - master: cluster.name; optionally bootstrapToken (created by kubeadm init) and certificateKey
//     (kubeadm init --upload-certs encrypts the control-plane certificates with it).
func (c *NodeConfig) Validate() error {
	probs := c.checkValues()
	if c.Spec.Role != "" && slices.Contains(Roles, c.Spec.Role) {
		probs = append(probs, c.checkRole()...)
	}
	errs := make([]error, len(probs))
	for i, p := range probs {
		errs[i] = p
	}
	return errors.Join(errs...)
}

var (
	tokenRE   = regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`)
	hashRE    = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	certKeyRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	labelRE   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	// Kubernetes label name / value part: alphanumeric ends, [-_.] inside, at most 63.
	qualNameRE = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	argRE      = regexp.MustCompile(`^[a-z0-9][-a-z0-9.]*$`)
)

var taintEffects = []string{"NoSchedule", "PreferNoSchedule", "NoExecute"}

// checkValues checks the form of every set field, not whether required ones are set.
func (c *NodeConfig) checkValues() []*FieldError {
	var probs []*FieldError
	add := func(f, format string, args ...any) {
		probs = append(probs, &FieldError{f, fmt.Sprintf(format, args...)})
	}
	if c.APIVersion != APIVersion {
		add("apiVersion", "got %q (expected %s)", c.APIVersion, APIVersion)
	}
	if c.Kind != Kind {
		add("kind", "got %q (expected %s)", c.Kind, Kind)
	}
	if n := c.Metadata.Name; n != "" {
		if err := CheckNodeName(n); err != nil {
			add("metadata.name", "%v", err)
		}
	}
	switch r := c.Spec.Role; {
	case r == "":
		add("spec.role", "missing (expected %s)", orList(Roles))
	case !slices.Contains(Roles, r):
		add("spec.role", "unknown role %q (expected %s)", r, orList(Roles))
	}

	cl := c.Spec.Cluster
	if cl.Name != "" && !labelRE.MatchString(cl.Name) {
		add("spec.cluster.name", "%q is not a DNS-1123 label (lower-case letters, digits and '-', at most 63)", cl.Name)
	}
	if cl.APIServer != "" {
		if err := checkAPIServer(cl.APIServer); err != nil {
			add("spec.cluster.apiServer", "%v", err)
		}
	}
	if cl.DNSDomain != "" && !isDNSSubdomain(cl.DNSDomain) {
		add("spec.cluster.dnsDomain", "%q is not a DNS-1123 subdomain", cl.DNSDomain)
	}
	var svc netip.Prefix
	if cl.ServiceCIDR != "" {
		var err error
		if svc, err = parseCIDR(cl.ServiceCIDR); err != nil {
			add("spec.cluster.serviceCIDR", "%v", err)
		}
	}
	if cl.PodCIDR != "" {
		if pod, err := parseCIDR(cl.PodCIDR); err != nil {
			add("spec.cluster.podCIDR", "%v", err)
		} else if svc.IsValid() && pod.Overlaps(svc) {
			add("spec.cluster.podCIDR", "%s overlaps serviceCIDR %s", pod, svc)
		}
	}
	for i, s := range cl.ClusterDNS {
		f := fmt.Sprintf("spec.cluster.clusterDNS[%d]", i)
		ip, err := netip.ParseAddr(s)
		switch {
		case err != nil:
			add(f, "%q is not an IP address", s)
		case svc.IsValid() && !svc.Contains(ip):
			add(f, "%s is outside serviceCIDR %s", ip, svc)
		}
	}
	if cl.CACertificate != "" {
		if err := checkCerts(cl.CACertificate); err != nil {
			add("spec.cluster.caCertificate", "%v", err)
		}
	}
	if p := cl.AdminKubeconfig; p != "" {
		if err := checkFilePath(p); err != nil {
			add("spec.cluster.adminKubeconfig", "%v", err)
		}
	}
	probs = append(probs, cl.Etcd.check()...)

	k := c.Spec.Kubelet
	for _, key := range sortedKeys(k.NodeLabels) {
		f := "spec.kubelet.nodeLabels." + key
		if err := checkLabelKey(key); err != nil {
			add(f, "bad label key: %v", err)
		}
		if v := k.NodeLabels[key]; v != "" && !qualNameRE.MatchString(v) {
			add(f, "bad label value %q (expected at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends)", v)
		}
	}
	for i, t := range k.RegisterWithTaints {
		if err := checkTaint(t); err != nil {
			add(fmt.Sprintf("spec.kubelet.registerWithTaints[%d]", i), "%v", err)
		}
	}
	for _, key := range sortedKeys(k.ExtraArgs) {
		if !argRE.MatchString(key) {
			add("spec.kubelet.extraArgs."+key, "bad flag name (expected the kubelet flag without leading dashes, e.g. v or node-ip)")
		}
	}
	if k.MaxPods < 0 {
		add("spec.kubelet.maxPods", "%d is negative", k.MaxPods)
	}

	probs = append(probs, c.Spec.Update.check()...)

	cr := c.Spec.Credentials
	if cr == nil {
		return probs
	}
	if cr.BootstrapToken != "" && !tokenRE.MatchString(cr.BootstrapToken) {
		add("spec.credentials.bootstrapToken", "malformed (expected [a-z0-9]{6}.[a-z0-9]{16})") // never echo a secret
	}
	for i, h := range cr.CACertHashes {
		if !hashRE.MatchString(h) {
			add(fmt.Sprintf("spec.credentials.caCertHashes[%d]", i), "%q is malformed (expected sha256: and 64 lower-case hex digits)", h)
		}
	}
	if cr.CertificateKey != "" && !certKeyRE.MatchString(cr.CertificateKey) {
		add("spec.credentials.certificateKey", "malformed (expected 64 lower-case hex digits, as kubeadm certs certificate-key prints)")
	}
	switch {
	case cr.ClientCertificate != "" && cr.ClientKey != "":
		if _, err := tls.X509KeyPair([]byte(cr.ClientCertificate), []byte(cr.ClientKey)); err != nil {
			add("spec.credentials.clientCertificate", "not a certificate matching clientKey: %v", err)
		}
	case cr.ClientCertificate != "":
		if err := checkCerts(cr.ClientCertificate); err != nil {
			add("spec.credentials.clientCertificate", "%v", err)
		}
	case cr.ClientKey != "":
		if err := checkKey(cr.ClientKey); err != nil {
			add("spec.credentials.clientKey", "%v", err)
		}
	}
	if cr.CAKey != "" {
		if k, err := parsePrivateKey(cr.CAKey); err != nil {
			add("spec.credentials.caKey", "%v", err)
		} else {
			probs = append(probs, checkCAKey(k, cl.CACertificate)...)
		}
	}
	return probs
}

// checkCAKey checks a master's CA key as kubeadm init uses it: an RSA or ECDSA key (what
// kubeadm loads) that matches the first certificate of caCerts (kubeadm reads ca.crt's first),
// which must be a CA. A missing or malformed caCertificate is reported elsewhere.
func checkCAKey(k crypto.PrivateKey, caCerts string) []*FieldError {
	const keyField, certField = "spec.credentials.caKey", "spec.cluster.caCertificate"
	switch k.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey:
	case ed25519.PrivateKey:
		return []*FieldError{{keyField, "an Ed25519 key: kubeadm uses RSA or ECDSA CA keys"}}
	default:
		return []*FieldError{{keyField, fmt.Sprintf("a %T key: kubeadm uses RSA or ECDSA CA keys", k)}}
	}
	b, _ := pem.Decode([]byte(caCerts))
	if b == nil || b.Type != "CERTIFICATE" {
		return nil
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil
	}
	var probs []*FieldError
	if !cert.IsCA {
		probs = append(probs, &FieldError{certField, "the first certificate is not a CA (basicConstraints CA:TRUE): kubeadm refuses it as the cluster CA"})
	}
	if pub, ok := k.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		probs = append(probs, &FieldError{keyField, "does not match the first certificate of " + certField + " (kubeadm uses that one)"})
	}
	return probs
}

// checkRole checks the fields c's (valid) role needs, and forbids those it must not carry.
func (c *NodeConfig) checkRole() []*FieldError {
	var probs []*FieldError
	req := func(f string, set bool) {
		if !set {
			probs = append(probs, &FieldError{f, fmt.Sprintf("required for role %s", c.Spec.Role)})
		}
	}
	only := func(f string, set bool, role Role) {
		if set && c.Spec.Role != role {
			probs = append(probs, &FieldError{f, fmt.Sprintf("only allowed for role %s (role is %s)", role, c.Spec.Role)})
		}
	}
	cl := c.Spec.Cluster
	var cr Credentials
	if c.Spec.Credentials != nil {
		cr = *c.Spec.Credentials
	}
	switch c.Spec.Role {
	case RoleMaster:
		req("spec.cluster.name", cl.Name != "")
		if cr.CAKey != "" {
			req("spec.cluster.caCertificate", cl.CACertificate != "")
		}
	case RoleMasterFollower:
		req("spec.cluster.apiServer", cl.APIServer != "")
		req("spec.credentials.bootstrapToken", cr.BootstrapToken != "")
		req("spec.credentials.caCertHashes", len(cr.CACertHashes) > 0)
		req("spec.credentials.certificateKey", cr.CertificateKey != "")
	case RoleNode:
		req("spec.cluster.apiServer", cl.APIServer != "")
		token := cr.BootstrapToken != "" || len(cr.CACertHashes) > 0
		cert := cr.ClientCertificate != "" || cr.ClientKey != ""
		switch {
		case token:
			req("spec.credentials.bootstrapToken", cr.BootstrapToken != "")
			req("spec.credentials.caCertHashes", len(cr.CACertHashes) > 0)
		case cert:
			req("spec.credentials.clientCertificate", cr.ClientCertificate != "")
			req("spec.credentials.clientKey", cr.ClientKey != "")
			req("spec.cluster.caCertificate", cl.CACertificate != "")
		default:
			probs = append(probs, &FieldError{"spec.credentials", "role node needs bootstrapToken and caCertHashes, " +
				"or clientCertificate, clientKey and spec.cluster.caCertificate"})
		}
	}
	controlPlaneOnly := func(f string, set bool) {
		if set && c.Spec.Role == RoleNode {
			probs = append(probs, &FieldError{f, fmt.Sprintf(
				"only allowed for roles %s and %s (role is %s)", RoleMaster, RoleMasterFollower, c.Spec.Role)})
		}
	}
	controlPlaneOnly("spec.cluster.adminKubeconfig", cl.AdminKubeconfig != "")
	controlPlaneOnly("spec.credentials.certificateKey", cr.CertificateKey != "")
	only("spec.credentials.caKey", cr.CAKey != "", RoleMaster)
	only("spec.credentials.clientCertificate", cr.ClientCertificate != "", RoleNode)
	only("spec.credentials.clientKey", cr.ClientKey != "", RoleNode)
	return probs
}

func checkAPIServer(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL", s)
	}
	if u.Scheme != "https" || u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("%q: expected https://HOST[:PORT]", s)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q: expected https://HOST[:PORT] without path, query or user", s)
	}
	if p := u.Port(); p != "" {
		var n int
		if _, err := fmt.Sscan(p, &n); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q: bad port %q", s, p)
		}
	}
	return nil
}

// maxPathLen is Linux's PATH_MAX.
const maxPathLen = 4096

// checkFilePath checks a file path on the node: absolute, clean (no "..", "//" or trailing
// "/"), not the root directory, printable and at most maxPathLen bytes.
func checkFilePath(p string) error {
	if strings.ContainsFunc(p, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return fmt.Errorf("%q contains a control character", p)
	}
	if !path.IsAbs(p) || p == "/" {
		return fmt.Errorf("%q is not an absolute file path (expected e.g. /root/.kube/config)", p)
	}
	if c := path.Clean(p); c != p {
		return fmt.Errorf("%q is not a clean absolute file path (expected %s)", p, c)
	}
	if len(p) > maxPathLen {
		return fmt.Errorf("path is %d bytes (expected at most %d)", len(p), maxPathLen)
	}
	return nil
}

func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%q is not a CIDR (expected e.g. 10.96.0.0/12)", s)
	}
	if p != p.Masked() {
		return p, fmt.Errorf("%q has host bits set (expected %s)", s, p.Masked())
	}
	return p, nil
}

// checkCerts checks that s is one or more PEM certificates and nothing else.
func checkCerts(s string) error {
	rest := []byte(s)
	n := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %d is %q (expected CERTIFICATE)", n+1, b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("PEM block %d: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate (expected -----BEGIN CERTIFICATE-----)")
	}
	if len(strings.TrimSpace(string(rest))) > 0 {
		return errors.New("trailing data after the PEM certificates")
	}
	return nil
}

func checkKey(s string) error {
	_, err := parsePrivateKey(s)
	return err
}

// parsePrivateKey parses a PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
func parsePrivateKey(s string) (crypto.PrivateKey, error) {
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		return nil, errors.New("no PEM private key")
	}
	var (
		k   crypto.PrivateKey
		err error
	)
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)", b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("bad private key: %w", err) // the parsers' errors carry no key material
	}
	return k, nil
}

// MaxNodeNameLen is the longest node name: the node agent makes it the host name, and Linux
// host names hold at most 64 bytes (HOST_NAME_MAX).
const MaxNodeNameLen = 64

// CheckNodeName checks a node name (metadata.name, or the host name standing in for it): a
// Kubernetes node name, i.e. a DNS-1123 subdomain (RFC 1123: dot-separated labels of 1 to 63
// lower-case letters, digits and '-', starting and ending with a letter or digit), that also
// fits a Linux host name (MaxNodeNameLen). Such a name is safe as a file name component, in an
// environment variable and as a command argument (it cannot start with '-').
func CheckNodeName(name string) error {
	if !isDNSSubdomain(name) {
		return fmt.Errorf("%q is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.'; "+
			"dot-separated labels of at most 63, each starting and ending with a letter or digit)", name)
	}
	if len(name) > MaxNodeNameLen {
		return fmt.Errorf("%q is %d characters: the node name becomes the host name, at most %d", name, len(name), MaxNodeNameLen)
	}
	return nil
}

func isDNSSubdomain(s string) bool {
	if len(s) > 253 {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if !labelRE.MatchString(l) {
			return false
		}
	}
	return true
}

// checkLabelKey checks a Kubernetes label key: [PREFIX/]NAME with a DNS subdomain prefix.
func checkLabelKey(k string) error {
	name := k
	if prefix, n, ok := strings.Cut(k, "/"); ok {
		if !isDNSSubdomain(prefix) {
			return fmt.Errorf("prefix %q is not a DNS-1123 subdomain", prefix)
		}
		name = n
	}
	if !qualNameRE.MatchString(name) {
		return fmt.Errorf("name %q: expected at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends", name)
	}
	return nil
}

// checkTaint checks key[=value]:Effect.
func checkTaint(t string) error {
	kv, effect, ok := strings.Cut(t, ":")
	if !ok {
		return fmt.Errorf("%q: expected key[=value]:Effect", t)
	}
	if !slices.Contains(taintEffects, effect) {
		return fmt.Errorf("%q: unknown effect %q (expected %s)", t, effect, orList(taintEffects))
	}
	k, v, _ := strings.Cut(kv, "=")
	if err := checkLabelKey(k); err != nil {
		return fmt.Errorf("%q: bad key: %w", t, err)
	}
	if v != "" && !qualNameRE.MatchString(v) {
		return fmt.Errorf("%q: bad value %q", t, v)
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
