package serve

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/imgctl/imgctl/images/bootauth"
	"github.com/imgctl/imgctl/images/inventory"
	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/images/rollout"
)

// nodeConfig serves GET /v1/nodeconfig. With "Authorization: Bearer CREDENTIAL" (the boot
// credential of the node's script), the node's whole NodeConfig, secrets included, over TLS
// (or plain HTTP with InsecureSecrets). Without one, the public part of the machine named by
// ?mac=, ?uuid= or ?serial= (the node script's metadata URL carries it): anyone who knows a
// machine's MAC learns no more than its public config.
func (s *Server) nodeConfig(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if _, ok := r.Header[nodeapi.AuthorizationHeader]; !ok {
		s.publicConfig(w, r)
		return
	}
	b, ok := s.authorize(w, r)
	if !ok {
		return
	}
	m, ok := s.o.Inventory().Machine(b.Node)
	if !ok {
		s.log.Warn("node config asked for a node no longer in the inventory", "node", b.Node, "remote", r.RemoteAddr)
		http.Error(w, "node "+b.Node+" is not in the inventory", http.StatusNotFound)
		return
	}
	cfg := nodeconfig.Merge(m.Config.Public(), m.Secret)
	s.log.Info("served node config with credentials", "node", m.Name, "boot", b.ID, "remote", r.RemoteAddr)
	writeYAML(w, &cfg)
}

func (s *Server) publicConfig(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id, err := inventory.ParseIdentity(q.Get("mac"), q.Get("uuid"), q.Get("serial"))
	if err != nil {
		http.Error(w, "no node identity: without a credential, name the node with ?mac=, ?uuid= or ?serial= ("+err.Error()+")", http.StatusNotFound)
		return
	}
	m, ok := s.o.Inventory().Lookup(id)
	if !ok {
		s.log.Warn("node config asked for a machine not in the inventory", "mac", id.MAC, "uuid", id.UUID, "serial", id.Serial, "remote", r.RemoteAddr)
		http.Error(w, "no machine in the inventory has this identity", http.StatusNotFound)
		return
	}
	cfg := m.Config.Public()
	writeYAML(w, &cfg)
}

// remoteAddr is the client's address (IPv4-mapped IPv6 as IPv4); the zero Addr if unknown.
func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func writeYAML(w http.ResponseWriter, cfg *nodeconfig.NodeConfig) {
	data, err := yaml.Marshal(cfg)
	if err != nil {
		http.Error(w, "encoding the node config failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", nodeapi.NodeConfigMediaType)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	_, _ = w.Write(data)
}

// authorize checks the request's boot credential and answers the refusal itself (ok false):
// 401 for a missing, malformed or expired credential, 403 for one used from another address or
// superseded by a newer boot of its node, or sent over plain HTTP without InsecureSecrets.
// Neither the answer nor the log ever shows the credential.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) (bootauth.Boot, bool) {
	token := nodeapi.CredentialFromHeader(r.Header.Get(nodeapi.AuthorizationHeader))
	if token == "" {
		w.Header().Set("WWW-Authenticate", "Bearer")
		http.Error(w, "expected Authorization: Bearer CREDENTIAL (the node's imgctl.credential)", http.StatusUnauthorized)
		return bootauth.Boot{}, false
	}
	if r.TLS == nil && !s.o.InsecureSecrets {
		s.log.Warn("refused a node credential sent over plain http (start imgctl serve with --tls-cert/--tls-key, or --insecure-secrets)", "remote", r.RemoteAddr)
		http.Error(w, "credentials and secrets are served over https only: use the https metadata URL of the node's script", http.StatusForbidden)
		return bootauth.Boot{}, false
	}
	remote := remoteAddr(r)
	if !remote.IsValid() {
		http.Error(w, "cannot tell the client's address", http.StatusForbidden)
		return bootauth.Boot{}, false
	}
	// A machine's addresses are checked before the credential is bound: a credential sniffed
	// and used from elsewhere must not lock the real node out.
	b, err := s.o.Auth.Check(token, remote)
	if err == nil {
		if m, ok := s.o.Inventory().Machine(b.Node); ok && !m.AllowsAddr(remote) {
			s.log.Warn("boot credential used from outside its machine's addresses: a duplicate or spoofed node?",
				"node", b.Node, "boot", b.ID, "remote", r.RemoteAddr)
			http.Error(w, "credential refused: this address is not one of the node's", http.StatusForbidden)
			return bootauth.Boot{}, false
		}
		b, err = s.o.Auth.Authorize(r.Context(), token, remote)
	}
	switch {
	case err == nil:
		return b, true
	case errors.Is(err, bootauth.ErrAddressMismatch):
		s.log.Warn("boot credential used from another address than its first use: a duplicate or spoofed node?", "remote", r.RemoteAddr, "err", err)
		http.Error(w, "credential refused: it is bound to another address", http.StatusForbidden)
	case errors.Is(err, bootauth.ErrSuperseded):
		s.log.Warn("boot credential superseded by a newer boot of its node: a duplicate or spoofed node?", "remote", r.RemoteAddr, "err", err)
		http.Error(w, "credential refused: a newer boot of this node has used its own", http.StatusForbidden)
	case errors.Is(err, bootauth.ErrRetired):
		s.log.Warn("boot credential used after its node was configured: read from the node, or replayed?", "remote", r.RemoteAddr, "err", err)
		http.Error(w, "credential refused: the node reported it is configured (reboot it for a new credential)", http.StatusForbidden)
	case errors.Is(err, bootauth.ErrExpired):
		s.log.Warn("expired boot credential", "remote", r.RemoteAddr, "err", err)
		w.Header().Set("WWW-Authenticate", "Bearer")
		http.Error(w, "credential refused: expired (reboot the node for a new one)", http.StatusUnauthorized)
	case errors.Is(err, bootauth.ErrInvalidToken):
		s.log.Warn("invalid boot credential", "remote", r.RemoteAddr, "err", err)
		w.Header().Set("WWW-Authenticate", "Bearer")
		http.Error(w, "credential refused: invalid", http.StatusUnauthorized)
	default:
		s.log.Error("checking a boot credential", "remote", r.RemoteAddr, "err", err)
		http.Error(w, "internal error checking the credential (see the server's log)", http.StatusInternalServerError)
	}
	return bootauth.Boot{}, false
}

// report takes POST /v1/reports: a node's boot report, with its credential. The body is
// bounded (nodeapi.MaxReportBytes) and parsed strictly; a bad one is refused with 400 and the
// reason. The record keeps what the server knows (node, channel, the image it served) beside
// what the node says.
func (s *Server) report(w http.ResponseWriter, r *http.Request) {
	b, ok := s.authorize(w, r)
	if !ok {
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, nodeapi.MaxReportBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			http.Error(w, fmt.Sprintf("report larger than %d bytes", nodeapi.MaxReportBytes), http.StatusBadRequest)
			return
		}
		http.Error(w, "reading the report failed", http.StatusBadRequest)
		return
	}
	rep, err := nodeapi.ParseReport(data)
	if err != nil {
		s.log.Warn("malformed boot report", "node", b.Node, "remote", r.RemoteAddr, "err", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	role := rep.Role
	if m, ok := s.o.Inventory().Machine(b.Node); ok {
		role = string(m.Role)
	}
	rec := rollout.Record{Node: b.Node, Channel: b.Channel, Role: role, Image: b.Image, BootID: b.ID,
		Addr: b.Addr, Received: s.o.Now().UTC(), Report: *rep}
	if rec.Addr == "" {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			rec.Addr = ap.Addr().Unmap().String()
		}
	}
	if err := s.o.Reports.Save(r.Context(), rec); err != nil {
		s.log.Error("saving a boot report", "node", b.Node, "err", err)
		http.Error(w, "saving the report failed (see the server's log)", http.StatusInternalServerError)
		return
	}
	if rep.Phase == nodeapi.PhaseConfigure && rep.OK {
		// The node has its secrets; the credential stays in its /proc/cmdline, readable by any
		// process there, so it must open nothing from now on.
		if err := s.o.Auth.Retire(r.Context(), b); err != nil {
			s.log.Error("retiring a configured node's credential", "node", b.Node, "boot", b.ID, "err", err)
		}
	}
	s.m.reports.WithLabelValues(b.Channel, string(rep.Phase), strconv.FormatBool(rep.OK)).Inc()
	if !rep.OK {
		s.m.bootFailures.WithLabelValues(b.Channel).Inc()
	}
	s.log.Info("boot report", "node", b.Node, "phase", rep.Phase, "ok", rep.OK, "failed", rep.Failed, "image", b.Image, "boot", b.ID)
	if rep.RootDigest != "" {
		if cat, err := s.cat.get(r.Context(), false); err == nil {
			if nb, ok := cat.netboot[b.Image]; ok && string(nb.Root) != rep.RootDigest {
				s.log.Warn("node runs another root than the server served it", "node", b.Node, "served", nb.Root, "reported", rep.RootDigest)
			}
		}
	}
	w.WriteHeader(http.StatusNoContent)
}
