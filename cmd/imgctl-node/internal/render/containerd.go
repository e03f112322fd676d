package render

import "fmt"

// containerdConfig is containerd 1.6's /etc/containerd/config.toml (format version 2): the CRI
// plugin's sandbox image, runc through the v2 shim in the systemd cgroup driver (which the
// kubelet's cgroupDriver matches) and the CNI directories: the plugins of Debian's
// containernetworking-plugins (CNIBinDir) and the configuration imgctl-node podnet writes
// (CNIConfDir). The sandbox image was checked to need no TOML escaping.
func (r *renderer) containerdConfig() File {
	const cri = `plugins."io.containerd.grpc.v1.cri"`
	data := fmt.Appendf(nil, `# %s
version = 2

[%[2]s]
  sandbox_image = "%[3]s"

[%[2]s.containerd]
  default_runtime_name = "runc"

[%[2]s.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[%[2]s.containerd.runtimes.runc.options]
  SystemdCgroup = true

[%[2]s.cni]
  bin_dir = "%[4]s"
  conf_dir = "%[5]s"
`, header, cri, r.sandbox, CNIBinDir, CNIConfDir)
	return File{Path: ContainerdConfigPath, Mode: 0o644, Data: data}
}

// crictlConfig is /etc/crictl.yaml: crictl's runtime and image endpoints are containerd's CRI
// socket (without it crictl tries a list of sockets and warns about each).
func crictlConfig() File {
	data := fmt.Appendf(nil, `# %s
runtime-endpoint: %[2]s
image-endpoint: %[2]s
timeout: 10
`, header, ContainerdSocket)
	return File{Path: CrictlConfigPath, Mode: 0o644, Data: data}
}
