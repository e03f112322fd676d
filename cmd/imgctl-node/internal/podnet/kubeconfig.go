package podnet

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"sigs.k8s.io/yaml"
)

// kubeconfig is the part of client-go's clientcmd v1 Config a kubelet's kubeconfig uses: the
// current context's cluster (server, CA) and user (client certificate and key), each as a
// file or inline data. kubeadm writes kubelet.conf with inline CA data and the rotating
// /var/lib/kubelet/pki/kubelet-client-current.pem; imgctl's pre-issued nodes with files.
type kubeconfig struct {
	CurrentContext string `json:"current-context"`
	Clusters       []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server     string `json:"server"`
			CAFile     string `json:"certificate-authority"`
			CAData     []byte `json:"certificate-authority-data"`
			ServerName string `json:"tls-server-name"`
		} `json:"cluster"`
	} `json:"clusters"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			CertFile string `json:"client-certificate"`
			CertData []byte `json:"client-certificate-data"`
			KeyFile  string `json:"client-key"`
			KeyData  []byte `json:"client-key-data"`
		} `json:"user"`
	} `json:"users"`
}

// apiClient talks to the API server with the kubelet's identity.
type apiClient struct {
	server *url.URL
	http   *http.Client
}

// maxKubeconfig bounds the kubeconfig read (a few KiB with inline certificates).
const maxKubeconfig = 1 << 20

// loadClient reads the kubeconfig at path and returns a client for its current context. The
// files it names are read now: a rotated client certificate is picked up by the next call.
func loadClient(path string, timeout time.Duration) (*apiClient, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	if len(raw) > maxKubeconfig {
		return nil, fmt.Errorf("kubeconfig %s: %d bytes (expected at most %d)", path, len(raw), maxKubeconfig)
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(raw, &kc); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("kubeconfig %s: "+format, append([]any{path}, args...)...)
	}
	var clusterName, userName string
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			clusterName, userName = c.Context.Cluster, c.Context.User
		}
	}
	if clusterName == "" {
		return nil, bad("current-context %q names no context with a cluster", kc.CurrentContext)
	}
	dir := filepath.Dir(path)
	readPEM := func(field, file string, data []byte) ([]byte, error) {
		if len(data) > 0 {
			return data, nil
		}
		if file == "" {
			return nil, bad("%s: neither a file nor -data", field)
		}
		if !filepath.IsAbs(file) {
			file = filepath.Join(dir, file)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, bad("%s: %w", field, err)
		}
		return b, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	var server *url.URL
	for _, c := range kc.Clusters {
		if c.Name != clusterName {
			continue
		}
		u, err := url.Parse(c.Cluster.Server)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return nil, bad("cluster %q: server %q: expected https://HOST[:PORT]", clusterName, c.Cluster.Server)
		}
		server = u
		ca, err := readPEM("certificate-authority", c.Cluster.CAFile, c.Cluster.CAData)
		if err != nil {
			return nil, err
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(ca) {
			return nil, bad("cluster %q: certificate-authority: no PEM certificate", clusterName)
		}
		tc.ServerName = c.Cluster.ServerName
	}
	if server == nil {
		return nil, bad("context %q names cluster %q, which is not in clusters", kc.CurrentContext, clusterName)
	}
	found := false
	for _, u := range kc.Users {
		if u.Name != userName {
			continue
		}
		found = true
		certPEM, err := readPEM("client-certificate", u.User.CertFile, u.User.CertData)
		if err != nil {
			return nil, err
		}
		keyPEM, err := readPEM("client-key", u.User.KeyFile, u.User.KeyData)
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, bad("user %q: client certificate and key: %w", userName, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	if !found {
		return nil, bad("context %q names user %q, which is not in users", kc.CurrentContext, userName)
	}
	tr := &http.Transport{TLSClientConfig: tc, TLSHandshakeTimeout: timeout, ResponseHeaderTimeout: timeout, Proxy: nil}
	return &apiClient{server: server, http: &http.Client{Transport: tr, Timeout: timeout}}, nil
}

// close drops the client's connections: the next cycle connects anew with the current
// certificate.
func (c *apiClient) close() { c.http.CloseIdleConnections() }
