package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/imgctl/imgctl/layers/atomicfile"
)

// SysctlFile is where the applied settings are persisted, so that a later systemd-sysctl run
// (sysctl.d files are applied in lexical order; 90- comes after the distribution's) keeps them.
const SysctlFile = "/etc/sysctl.d/90-imgctl-kubernetes.conf"

// applySysctls writes every setting to /proc/sys, then persists them all in SysctlFile. A
// setting that cannot be written fails the step (after trying the others) and nothing is
// persisted.
func (in *installer) applySysctls(ctx context.Context) (result, error) {
	if len(in.sysctls) == 0 {
		return result{skip: true, kv: []any{"reason", "no sysctls configured"}}, nil
	}
	keys := slices.Sorted(maps.Keys(in.sysctls))
	var errs []error
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return result{}, err
		}
		if err := in.writeSysctl(k, in.sysctls[k]); err != nil {
			errs = append(errs, err)
		}
	}
	kv := []any{"keys", len(keys), "file", SysctlFile}
	if len(errs) > 0 {
		return result{kv: kv}, errors.Join(errs...)
	}
	written, err := in.persistSysctls(keys)
	if err != nil {
		return result{kv: kv}, err
	}
	if !written {
		kv = append(kv, "persisted", "unchanged")
	}
	return result{kv: kv}, nil
}

// writeSysctl sets one kernel parameter. The error names the key and the file.
func (in *installer) writeSysctl(key, value string) error {
	rel, err := sysctlPath(key)
	if err != nil {
		return err
	}
	if strings.ContainsAny(value, "\n\r") {
		return fmt.Errorf("sysctl %s: value %q spans lines", key, value)
	}
	p := in.path(filepath.Join("/proc/sys", rel))
	// No O_CREATE: a key the kernel does not have must fail, not become a new file.
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("sysctl %s: %w (unknown key, or its module is not loaded)", key, err)
		}
		return fmt.Errorf("sysctl %s: %w", key, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	in.log.Debug("sysctl set", "key", key, "value", value)
	return nil
}

// sysctlPath turns a sysctl name into its path under /proc/sys the way systemd-sysctl does:
// when the first separator is a dot, dots and slashes swap (net.ipv4.conf.eth0/1.forwarding is
// net/ipv4/conf/eth0.1/forwarding); when it is a slash, the name is already a path.
func sysctlPath(key string) (string, error) {
	if key == "" || strings.ContainsAny(key, " \t\n\r=") {
		return "", fmt.Errorf("sysctl %q: bad name", key)
	}
	p := key
	if i := strings.IndexAny(key, "./"); i >= 0 && key[i] == '.' {
		p = strings.Map(func(r rune) rune {
			switch r {
			case '.':
				return '/'
			case '/':
				return '.'
			}
			return r
		}, key)
	}
	for _, part := range strings.Split(p, "/") {
		if part == "" || part == "." || part == ".." {
			return "", fmt.Errorf("sysctl %q: bad name", key)
		}
	}
	return p, nil
}

// persistSysctls writes SysctlFile (sorted, atomically) unless it already has this content,
// as it does when the image bakes it. It reports whether it wrote.
func (in *installer) persistSysctls(keys []string) (bool, error) {
	var b bytes.Buffer
	b.WriteString("# Written by imgctl-node (kube-node-installation.service) at every boot: the kernel\n")
	b.WriteString("# settings kubeadm and the kubelet need. Local changes belong in a later file.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, in.sysctls[k])
	}
	p := in.path(SysctlFile)
	if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, b.Bytes()) {
		return false, nil
	}
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("persisting sysctls in %s: %w", SysctlFile, err)
	}
	if err := atomicfile.Write("", p, b.Bytes(), 0o644); err != nil {
		return false, fmt.Errorf("persisting sysctls in %s: %w", SysctlFile, err)
	}
	return true, nil
}
