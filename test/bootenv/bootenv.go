// Package bootenv is the host side of a test boot on loopback: the guest's serial console, the
// relay that qemu's guestfwd runs to reach a loopback server, a fake EC2 instance metadata
// service (IMDSv2) serving user data, and a throwaway NodeConfig for a role node. The boot tests (test/) and the nightly boot
// check (test/bootcheck) share it.
package bootenv

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Relay copies between standard input/output (the guest's connection: qemu's
// guestfwd=…-cmd: starts one relay per connection) and the TCP server addr until both
// directions end, and returns the exit status for the relay process.
func Relay(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay:", err)
		return 1
	}
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(c, os.Stdin)
		_ = c.(*net.TCPConn).CloseWrite()
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(os.Stdout, c)
		// libslirp gives the command one socket as stdin, stdout and stderr: closing fd 1
		// alone sends nothing, so the guest would wait for more. Half-close the socket.
		if err := syscall.Shutdown(int(os.Stdout.Fd()), syscall.SHUT_WR); err != nil {
			_ = os.Stdout.Close() // not a socket (a pipe): closing it is the end
		}
		done <- struct{}{}
	}()
	<-done
	select { // the other direction finishes, or the relay gives up: it never outlives a boot
	case <-done:
	case <-time.After(2 * time.Minute):
	}
	return 0
}

// imdsToken is the session token the fake IMDS hands out and then requires.
const imdsToken = "imds-token-1"

// IMDS speaks EC2's IMDSv2 for user data: PUT /latest/api/token (with a TTL header), then GET
// /latest/user-data with the token. It records every request.
type IMDS struct {
	UserData string

	mu  sync.Mutex
	log []string
}

func (f *IMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.log = append(f.log, r.Method+" "+r.URL.Path)
	f.mu.Unlock()
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
		if r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			http.Error(w, "missing X-aws-ec2-metadata-token-ttl-seconds", http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, imdsToken)
	case r.Method == http.MethodGet && r.URL.Path == "/latest/user-data":
		if r.Header.Get("X-aws-ec2-metadata-token") != imdsToken {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, f.UserData)
	default:
		http.NotFound(w, r)
	}
}

// Requests returns "METHOD PATH" of every request so far, in order.
func (f *IMDS) Requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.log...)
}

// IMDSv2Flow reports whether requests (IMDS.Requests) start with the IMDSv2 token flow.
func IMDSv2Flow(requests []string) bool {
	return len(requests) >= 2 && requests[0] == "PUT /latest/api/token" && requests[1] == "GET /latest/user-data"
}

// APIServer is the address a test node's NodeConfig names: qemu's user-network host
// (net=169.254.0.0/16, host=169.254.0.2), which restrict=on keeps unreachable: the kubelet
// runs and answers /healthz without registering anywhere.
const APIServer = "https://169.254.0.2:6443"

// NodeConfig returns the user data of a role node named name with the node labels given: a
// NodeConfig with a cluster CA made for this call and a kubelet client certificate it issued.
func NodeConfig(name string, labels map[string]string) (string, error) {
	ca, cert, key, err := nodePKI(name)
	if err != nil {
		return "", err
	}
	var l []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		l = append(l, k+": "+strconv.Quote(labels[k]))
	}
	return fmt.Sprintf(`apiVersion: imgctl/v1alpha1
kind: NodeConfig
metadata:
  name: %s
spec:
  role: node
  cluster:
    apiServer: %s
    caCertificate: |
%s
  kubelet:
    nodeLabels: {%s}
  credentials:
    clientCertificate: |
%s
    clientKey: |
%s
`, name, APIServer, YAMLBlock(ca), strings.Join(l, ", "), YAMLBlock(cert), YAMLBlock(key)), nil
}

// YAMLBlock indents a PEM text as a YAML block scalar's body under "    key: |" (a NodeConfig's
// spec.cluster and spec.credentials fields).
func YAMLBlock(s string) string {
	return "      " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n      ")
}

// nodePKI returns a cluster CA and a kubelet client certificate and key for node name, PEM.
func nodePKI(name string) (ca, cert, key string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", "", err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return "", "", "", err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2),
		Subject:   pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
	if err != nil {
		return "", "", "", err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", "", "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})),
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})), nil
}

// Console collects a process's output (a guest's serial console, a server's log); it may be
// read while the process writes.
type Console struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

// String returns what was written so far.
func (c *Console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}
