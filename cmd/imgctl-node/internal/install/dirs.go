package install

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// directory is one directory the node's services expect.
type directory struct {
	path string
	mode fs.FileMode
}

// directories are created when missing, parents first, with these modes (a missing parent not
// listed gets 0755). Existing directories keep their mode: the image or an operator chose it.
// Where the owning program creates the directory itself, the mode is the one it would use or
// stricter, so creating it early changes nothing but timing.
var directories = []directory{
	// kubeadm writes kubeconfigs (0600) and the kubelet's config here.
	{"/etc/kubernetes", 0o755},
	// The kubelet's staticPodPath: kubeadm writes control-plane manifests here (kubeadm creates
	// it 0700); the kubelet watches it on every role. kubeadm's preflight requires it empty.
	{"/etc/kubernetes/manifests", 0o700},
	// Cluster CA and (on masters) the control plane's keys. kubeadm would make it 0755; 0700
	// because only root reads it (kubelet, kubeadm, and the control-plane pods, root in 1.21).
	{"/etc/kubernetes/pki", 0o700},
	// The kubelet's root directory (pods, volumes, plugins); the kubelet creates it 0750.
	{"/var/lib/kubelet", 0o750},
	// The kubelet's client and serving certificates and keys (its --cert-dir default).
	{"/var/lib/kubelet/pki", 0o700},
	// CNI network configs: the network plugin's DaemonSet writes here, containerd's CRI reads it.
	{"/etc/cni/net.d", 0o755},
	// CNI plugin binaries: containerd's default bin_dir; network DaemonSets install here.
	{"/opt/cni/bin", 0o755},
	// containerd's config (config.toml) and drop-ins.
	{"/etc/containerd", 0o755},
	// containerd's root (content store, snapshots); containerd creates it 0711.
	{"/var/lib/containerd", 0o711},
	// Pod logs: the kubelet writes /var/log/pods/NS_POD_UID/CONTAINER/N.log (creates it 0755)…
	{"/var/log/pods", 0o755},
	// …and symlinks them as /var/log/containers/*.log, where log shippers look (0755 as well).
	{"/var/log/containers", 0o755},
	// imgctl-node's own state on the node (boot reports, cached metadata): root only.
	{"/var/lib/imgctl", 0o700},
}

// makeDirectories creates the missing directories.
func (in *installer) makeDirectories(ctx context.Context) (result, error) {
	var created, existing int
	for _, d := range directories {
		if err := ctx.Err(); err != nil {
			return result{}, err
		}
		made, err := in.mkdir(d.path, d.mode)
		if err != nil {
			return result{kv: []any{"created", created}}, err
		}
		if made {
			created++
		} else {
			existing++
		}
	}
	return result{kv: []any{"created", created, "existing", existing}}, nil
}

// mkdir creates node path p (and missing parents, 0755) with exactly mode, umask aside.
// It reports whether p was created; an existing p must be a directory (or a symlink to one).
func (in *installer) mkdir(p string, mode fs.FileMode) (bool, error) {
	var made bool
	cur := in.root
	parts := strings.Split(strings.Trim(p, "/"), "/")
	for i, part := range parts {
		cur = filepath.Join(cur, part)
		m := fs.FileMode(0o755)
		if i == len(parts)-1 {
			m = mode
		}
		fi, err := os.Stat(cur)
		switch {
		case err == nil && fi.IsDir():
			continue
		case err == nil:
			return made, fmt.Errorf("directory %s: exists and is not a directory", "/"+filepath.Join(parts[:i+1]...))
		case !errors.Is(err, fs.ErrNotExist):
			return made, fmt.Errorf("directory %s: %w", p, err)
		}
		if err := os.Mkdir(cur, m); errors.Is(err, fs.ErrExist) {
			if fi, err := os.Stat(cur); err != nil || !fi.IsDir() {
				return made, fmt.Errorf("directory %s: exists and is not a directory", "/"+filepath.Join(parts[:i+1]...))
			}
			continue // created meanwhile by someone else: theirs
		} else if err != nil {
			return made, fmt.Errorf("directory %s: %w", p, err)
		}
		if err := os.Chmod(cur, m); err != nil { // Mkdir's mode is filtered by the umask
			return made, fmt.Errorf("directory %s: %w", p, err)
		}
		in.log.Debug("directory created", "path", "/"+filepath.Join(parts[:i+1]...), "mode", m)
		made = i == len(parts)-1
	}
	return made, nil
}
