package configure

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/imgctl/imgctl/images/nodeconfig"
)

// PodNetUnit keeps the node's pod network (imgctl-node podnet); PodNetEnv is its environment:
// the node name and the cluster's pod CIDR. The unit does not start without the file.
const (
	PodNetUnit = "imgctl-podnet.service"
	PodNetEnv  = "/run/imgctl/podnet.env"
)

// The command that starts the pod network; a dry run names it.
var startPodNet = []string{"systemctl", "start", PodNetUnit}

// podNet starts imgctl-podnet.service on a node kubeadm brings in (kubeadm is true) whose
// NodeConfig has spec.cluster.podCIDR: the controller-manager then allocates each Node a pod
// CIDR, which podnet turns into the CNI configuration and routes. Any other node gets no step
// line and no unit (a node with a client certificate boots as before), and a PodNetEnv an
// earlier run of this boot left is removed.
func (o Options) podNet(ctx context.Context, cl nodeconfig.Cluster, kubeadm bool, name string) error {
	envPath := filepath.Join(o.Root, PodNetEnv)
	if !kubeadm || cl.PodCIDR == "" {
		if err := os.Remove(envPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return o.Steps.Start("podnet-start").Fail(err)
		}
		return nil
	}
	s := o.Steps.Start("podnet-start")
	// Both values are validated: the name by nodeconfig.CheckNodeName, the CIDR by Validate.
	env := fmt.Sprintf("# Written by imgctl-node configure from the NodeConfig.\nIMGCTL_NODE_NAME=%s\nIMGCTL_POD_CIDR=%s\n", name, cl.PodCIDR)
	if err := writeFile(o.Root, PodNetEnv, 0o644, []byte(env)); err != nil {
		return s.Fail(err)
	}
	kv := []any{"unit", PodNetUnit, "cluster-cidr", cl.PodCIDR}
	if o.DryRun {
		s.Skip(append([]any{"reason", "dry run", "command", strings.Join(startPodNet, " ")}, kv...)...)
		return nil
	}
	if err := o.Run(ctx, startPodNet[0], startPodNet[1:]...); err != nil {
		return s.Fail(fmt.Errorf("%s: %w", strings.Join(startPodNet, " "), err), kv...)
	}
	s.Done(kv...)
	return nil
}
