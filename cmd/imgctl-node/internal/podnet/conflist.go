package podnet

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/imgctl/imgctl/layers/atomicfile"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/render"
)

// ConfPath is the network configuration containerd's CRI plugin uses for every pod (the first
// file in render.CNIConfDir by name).
var ConfPath = filepath.Join(render.CNIConfDir, "10-imgctl.conflist")

// CNIVersion is the CNI spec version of the configuration: 1.0.0, which both Debian 12's
// containernetworking-plugins 1.1.1 and its containerd 1.6.20 (libcni with types/100) speak.
const CNIVersion = "1.0.0"

// BridgeName is the Linux bridge the pods of this node attach to.
const BridgeName = "cni0"

// Conflist is the CNI network configuration list for a node whose pods get addresses from
// podCIDR: the bridge plugin (cni0 is the pods' gateway, traffic leaving podCIDR is
// masqueraded, hairpin lets a pod reach itself through a Service) with host-local addresses
// and a default route, then portmap for hostPort. containerd's CRI adds the loopback
// interface itself (the loopback plugin, also in render.CNIBinDir).
func Conflist(podCIDR netip.Prefix) ([]byte, error) {
	if !podCIDR.IsValid() || podCIDR != podCIDR.Masked() || !podCIDR.Addr().Is4() {
		return nil, fmt.Errorf("pod CIDR %q: expected a masked IPv4 prefix", podCIDR)
	}
	type rng struct {
		Subnet string `json:"subnet"`
	}
	type route struct {
		Dst string `json:"dst"`
	}
	conf := map[string]any{
		"cniVersion": CNIVersion,
		"name":       "imgctl",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      BridgeName,
				"isGateway":   true,
				"ipMasq":      true,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]rng{{{Subnet: podCIDR.String()}}},
					"routes": []route{{Dst: "0.0.0.0/0"}},
				},
			},
			map[string]any{
				"type":         "portmap",
				"capabilities": map[string]bool{"portMappings": true},
			},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// writeAtomic replaces path with data (atomicfile: temp file, fsync, rename, directory fsync),
// creating the directory.
func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := atomicfile.Write("", path, data, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
