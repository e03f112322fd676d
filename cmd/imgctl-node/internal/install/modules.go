package install

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// loadModules runs `modprobe -a` for the modules that are neither loaded (/proc/modules) nor
// present in /sys/module (built in, or loaded).
func (in *installer) loadModules(ctx context.Context) (result, error) {
	if len(in.modules) == 0 {
		return result{skip: true, kv: []any{"reason", "no modules configured"}}, nil
	}
	for _, m := range in.modules {
		if m == "" || strings.HasPrefix(m, "-") || strings.ContainsAny(m, "/ \t\n") {
			return result{}, fmt.Errorf("bad module name %q: expected a module name such as br_netfilter (no leading \"-\", no \"/\" or whitespace)", m)
		}
	}
	loaded := in.loadedModules()
	var want, already []string
	for _, m := range in.modules {
		name := strings.ReplaceAll(m, "-", "_") // the kernel's spelling; modprobe accepts both
		if loaded[name] {
			already = append(already, m)
			continue
		}
		if fi, err := os.Stat(in.path("/sys/module/" + name)); err == nil && fi.IsDir() {
			already = append(already, m)
			continue
		}
		want = append(want, m)
	}
	kv := []any{}
	if len(already) > 0 {
		in.log.Debug("modules already loaded or built in", "modules", already)
		kv = append(kv, "already", strings.Join(already, ","))
	}
	if len(want) == 0 {
		return result{skip: true, kv: kv}, nil
	}
	kv = append([]any{"loaded", strings.Join(want, ",")}, kv...)
	if err := in.run(ctx, "modprobe", append([]string{"-a", "--"}, want...)...); err != nil {
		return result{kv: kv}, fmt.Errorf("loading %s: %w", strings.Join(want, ", "), err)
	}
	return result{kv: kv}, nil
}

// loadedModules reads the names in /proc/modules. A missing or unreadable file (a kernel
// without module support, a test root) counts as no module loaded: modprobe is idempotent.
func (in *installer) loadedModules() map[string]bool {
	p := in.path("/proc/modules")
	data, err := os.ReadFile(p)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			in.log.Warn("cannot read the loaded modules; asking modprobe for all", "err", err)
		}
		return nil
	}
	loaded := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if name, _, _ := strings.Cut(sc.Text(), " "); name != "" {
			loaded[name] = true
		}
	}
	return loaded
}
