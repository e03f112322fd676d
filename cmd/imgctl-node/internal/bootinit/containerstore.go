package bootinit

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
)

// ContainerStore is containerd's root directory (content store, snapshots, metadata) in the
// real root: its default, which the rendered config.toml keeps.
const ContainerStore = "/var/lib/containerd"

// stateContainerStore is where the store lives on STATE (beside /var's overlay layers).
const stateContainerStore = StateDir + "/containerd"

// mountContainerStore gives containerd's root a filesystem of its own. The root and /var are
// overlays, and the kernel refuses an overlay as the upper layer of another ("not supported as
// upperdir"): containerd's overlayfs snapshotter, the CRI's default, would not load and no pod
// could start. With STATE mounted the store is a directory of STATE, bound in (pulled and
// imported images survive a reboot, like the rest of /var); without STATE it is a tmpfs.
func mountContainerStore(log *steplog.Logger, state bool) error {
	s := log.Start("container-store")
	target := RootDir + ContainerStore
	if err := os.MkdirAll(target, 0o711); err != nil {
		return s.Fail(err)
	}
	if state {
		if err := os.MkdirAll(stateContainerStore, 0o711); err != nil {
			return s.Fail(err)
		}
		if err := unix.Mount(stateContainerStore, target, "", unix.MS_BIND, ""); err != nil {
			return s.Fail(fmt.Errorf("bind %s on %s: %w", stateContainerStore, target, err))
		}
		s.Done("dir", ContainerStore, "on", "state")
		return nil
	}
	if err := unix.Mount("tmpfs", target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0711"); err != nil {
		return s.Fail(fmt.Errorf("mount tmpfs on %s: %w", target, err))
	}
	s.Done("dir", ContainerStore, "on", "tmpfs")
	return nil
}
