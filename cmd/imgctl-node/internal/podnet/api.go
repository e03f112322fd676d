package podnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
)

// apiNode is the part of a core/v1 Node podnet reads. Everything in it comes from the API
// server and is checked (podCIDR, internalIP) before use.
type apiNode struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		PodCIDR  string   `json:"podCIDR"`
		PodCIDRs []string `json:"podCIDRs"`
	} `json:"spec"`
	Status struct {
		Addresses []struct {
			Type    string `json:"type"`
			Address string `json:"address"`
		} `json:"addresses"`
	} `json:"status"`
}

type nodeList struct {
	Metadata struct {
		Continue string `json:"continue"`
	} `json:"metadata"`
	Items []apiNode `json:"items"`
}

// maxResponse bounds one answer of the API server (a page of 500 Nodes is far less).
const maxResponse = 32 << 20

// get decodes the JSON answer to GET path?query into v; a non-2xx answer is an error naming
// the URL, the status and the API's message.
func (c *apiClient) get(ctx context.Context, path string, query url.Values, v any) error {
	u := *c.server
	u.Path, u.RawQuery = path, query.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u.String(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("GET %s: %w", u.String(), err)
	}
	if len(body) > maxResponse {
		return fmt.Errorf("GET %s: answer larger than %d bytes", u.String(), maxResponse)
	}
	if resp.StatusCode/100 != 2 {
		var st struct {
			Message string `json:"message"`
		}
		_ = json.Unmarshal(body, &st)
		return fmt.Errorf("GET %s: %s: %w", u.String(), resp.Status, &apiError{code: resp.StatusCode, message: st.Message})
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: decoding the answer: %w", u.String(), err)
	}
	return nil
}

// apiError is the API server's refusal.
type apiError struct {
	code    int
	message string
}

func (e *apiError) Error() string {
	if e.message == "" {
		return http.StatusText(e.code)
	}
	return e.message
}

// maxPages bounds the pages of one list: 500 Nodes each.
const maxPages = 100

// listNodes lists every Node, page by page.
func (c *apiClient) listNodes(ctx context.Context) ([]apiNode, error) {
	var out []apiNode
	q := url.Values{"limit": {"500"}}
	for range maxPages {
		var l nodeList
		if err := c.get(ctx, "/api/v1/nodes", q, &l); err != nil {
			return nil, err
		}
		out = append(out, l.Items...)
		if l.Metadata.Continue == "" {
			return out, nil
		}
		q.Set("continue", l.Metadata.Continue)
	}
	return nil, fmt.Errorf("listing Nodes: more than %d pages", maxPages)
}

// errNoPodCIDR: the Node has no IPv4 pod CIDR yet (the controller-manager allocates it).
var errNoPodCIDR = errors.New("no IPv4 spec.podCIDR yet")

// podCIDR is the Node's IPv4 pod CIDR, checked: a masked IPv4 prefix of /8 to /30 that is
// not loopback, link-local, multicast or unspecified and, when cluster is valid, inside it.
// IPv6 pod CIDRs (dual stack) are not routed by podnet.
func podCIDR(n apiNode, cluster netip.Prefix) (netip.Prefix, error) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("spec.podCIDRs: %q: expected an IP prefix (a.b.c.d/n)", clip(s))
		}
		if !p.Addr().Is4() {
			continue
		}
		if err := checkPodCIDR(p, cluster); err != nil {
			return netip.Prefix{}, fmt.Errorf("spec.podCIDRs: %s: %w", p, err)
		}
		return p, nil
	}
	return netip.Prefix{}, errNoPodCIDR
}

func checkPodCIDR(p, cluster netip.Prefix) error {
	a := p.Addr()
	switch {
	case p != p.Masked():
		return fmt.Errorf("host bits set (expected %s)", p.Masked())
	case p.Bits() < 8 || p.Bits() > 30:
		return fmt.Errorf("prefix length /%d (expected /8 to /30)", p.Bits())
	case a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified() || !a.IsGlobalUnicast():
		return errors.New("not a unicast network (loopback, link-local, multicast or reserved)")
	case cluster.IsValid() && !(cluster.Bits() <= p.Bits() && cluster.Contains(a)):
		return fmt.Errorf("outside the cluster's pod CIDR %s", cluster)
	}
	return nil
}

// internalIP is the Node's first IPv4 InternalIP: a unicast address outside the cluster's
// pod CIDR.
func internalIP(n apiNode, cluster netip.Prefix) (netip.Addr, error) {
	for _, a := range n.Status.Addresses {
		if a.Type != "InternalIP" {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || !ip.Unmap().Is4() {
			continue
		}
		ip = ip.Unmap()
		if !ip.IsGlobalUnicast() || ip.IsLinkLocalUnicast() {
			return netip.Addr{}, fmt.Errorf("status.addresses: InternalIP %s: not a unicast address", ip)
		}
		if cluster.IsValid() && cluster.Contains(ip) {
			return netip.Addr{}, fmt.Errorf("status.addresses: InternalIP %s: inside the cluster's pod CIDR %s", ip, cluster)
		}
		return ip, nil
	}
	return netip.Addr{}, errors.New("status.addresses: no IPv4 InternalIP")
}

// Route sends one other node's pod CIDR to its InternalIP.
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

func (r Route) String() string { return r.Dst.String() + " via " + r.Via.String() }

// desiredRoutes is one route per other Node with a valid pod CIDR and InternalIP, in name
// order; a Node whose pod CIDR overlaps this node's or an earlier Node's is left out. ignored
// says why each left-out Node was (a Node without a pod CIDR yet is not ignored: it has none
// to route).
func desiredRoutes(nodes []apiNode, self string, own, cluster netip.Prefix) (routes []Route, ignored []string) {
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b apiNode) int { return strings.Compare(a.Metadata.Name, b.Metadata.Name) })
	taken := []netip.Prefix{own}
	for _, n := range nodes {
		name := n.Metadata.Name
		if name == self {
			continue
		}
		p, err := podCIDR(n, cluster)
		if errors.Is(err, errNoPodCIDR) {
			continue
		}
		if err == nil {
			for _, t := range taken {
				if t.Overlaps(p) {
					err = fmt.Errorf("spec.podCIDRs: %s overlaps %s", p, t)
					break
				}
			}
		}
		var via netip.Addr
		if err == nil {
			via, err = internalIP(n, cluster)
		}
		if err != nil {
			ignored = append(ignored, fmt.Sprintf("node %q: %v", clip(name), err))
			continue
		}
		taken = append(taken, p)
		routes = append(routes, Route{Dst: p, Via: via})
	}
	return routes, ignored
}

// clip shortens a value from the API for an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
