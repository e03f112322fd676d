// Package install is the logic of kube-node-installation.service, the first bootstrap unit
// (modeled on GKE's configure.sh "kube-node-installation", DESIGN.md section 6). Nothing is
// downloaded: everything the node needs is baked into the image, so installing means checking
// and preparing what is there:
//
//  1. verify-binaries: hash every binary image.json lists and compare with the manifest (on a
//     dm-verity root only those outside it: verity checks every block the kernel reads)
//  2. modules: load the kernel modules containerd and kube-proxy need
//  3. sysctl: set (and persist) the kernel settings kubeadm and the kubelet check
//  4. directories: create the directories kubelet, kubeadm and containerd expect
//  5. swap-off: turn off every active swap area (the kubelet refuses to run with swap on)
//
// Each step prints one line to the console (package steplog); the first failure stops the
// run, and its error is returned so the unit fails.
package install

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
)

// Step names, as they appear in step=NAME on the console.
const (
	StepVerifyBinaries = "verify-binaries"
	StepModules        = "modules"
	StepSysctl         = "sysctl"
	StepDirectories    = "directories"
	StepSwapOff        = "swap-off"
)

// Options configure Run. Zero fields take the defaults documented on each.
type Options struct {
	// Root is the node's root directory: "/" on a node (also when empty), a temporary directory
	// in tests. Every path Run reads or writes is joined under it.
	Root string
	// Steps receives one line per step (nil: discarded).
	Steps *steplog.Logger
	// Logger receives details: per-file hashes, skipped modules, created directories (nil: discarded).
	Logger *slog.Logger
	// Modules to load; nil means DefaultModules(), an empty non-nil slice loads none.
	Modules []string
	// Sysctls to set, by dotted (or slash-separated, as in sysctl.d) name; nil means
	// DefaultSysctls(), an empty non-nil map sets none.
	Sysctls map[string]string
	// Run runs a command (modprobe; swapoff(8) when the swapoff syscall fails). The default runs
	// it with exec.CommandContext and puts its combined output, trimmed, in the error.
	Run func(ctx context.Context, name string, args ...string) error
	// Swapoff turns off one swap area (default: the swapoff(2) syscall; golang.org/x/sys/unix
	// has no wrapper for it).
	Swapoff func(path string) error
	// Parallel bounds how many binaries are hashed at once (default GOMAXPROCS).
	Parallel int
}

// DefaultModules returns the modules loaded when Options.Modules is nil:
//   - overlay: containerd's default snapshotter (overlayfs) mounts every container rootfs with it;
//   - br_netfilter: makes bridged pod traffic traverse iptables, so kube-proxy's Service rules
//     see it; the net.bridge.* sysctls below exist only once it is loaded.
func DefaultModules() []string { return []string{"overlay", "br_netfilter"} }

// DefaultSysctls returns the kernel settings applied when Options.Sysctls is nil.
//
// kubeadm 1.21's preflight fails unless these read 1 (FileContent-- checks):
//   - net.bridge.bridge-nf-call-iptables: bridged IPv4 pod traffic goes through iptables, where
//     kube-proxy's Service NAT lives;
//   - net.ipv4.ip_forward: the node routes pod traffic;
//   - net.bridge.bridge-nf-call-ip6tables: the same for IPv6 (checked when the API endpoint is
//     IPv6; cheap and harmless on IPv4 clusters, so always set).
//
// The kubelet (pkg/kubelet/cm setupKernelTunables) wants the next six values. With
// protectKernelDefaults: true (CIS benchmark 4.2.6) it refuses to start when any differs; with
// false it writes them itself at startup, so setting them here changes only when they apply:
//   - vm.overcommit_memory=1: always overcommit; memory limits are enforced by cgroups;
//   - vm.panic_on_oom=0: run the OOM killer instead of panicking the node;
//   - kernel.panic=10: reboot 10 s after a panic instead of hanging;
//   - kernel.panic_on_oops=1: an oops panics (and so reboots) rather than leaving a damaged kernel up;
//   - kernel.keys.root_maxkeys=1000000, kernel.keys.root_maxbytes=25000000: room for a keyring
//     per container (25 bytes per key).
//
// Not included: net.ipv6.conf.default.forwarding, which kubeadm checks only for an IPv6 API
// endpoint: setting it on every node would stop IPv4-only hosts from accepting IPv6 router
// advertisements on new interfaces, and fails where IPv6 is disabled. Dual-stack sites add it.
func DefaultSysctls() map[string]string {
	return map[string]string{
		"net.bridge.bridge-nf-call-iptables":  "1",
		"net.bridge.bridge-nf-call-ip6tables": "1",
		"net.ipv4.ip_forward":                 "1",
		"vm.overcommit_memory":                "1",
		"vm.panic_on_oom":                     "0",
		"kernel.panic":                        "10",
		"kernel.panic_on_oops":                "1",
		"kernel.keys.root_maxkeys":            "1000000",
		"kernel.keys.root_maxbytes":           "25000000",
	}
}

// installer is one run: Options with the defaults applied.
type installer struct {
	root     string
	log      *slog.Logger
	modules  []string
	sysctls  map[string]string
	run      func(ctx context.Context, name string, args ...string) error
	swapoff  func(path string) error
	parallel int
}

// result is what a step reports on its line.
type result struct {
	skip bool  // status=skip instead of ok
	kv   []any // key, value pairs for the line (also on a fail line)
}

// Run performs the installation steps in order, one step line each, and stops at the first
// failure: the error returned names the step.
func Run(ctx context.Context, o Options) error {
	in := &installer{
		root:     o.Root,
		log:      o.Logger,
		modules:  o.Modules,
		sysctls:  o.Sysctls,
		run:      o.Run,
		swapoff:  o.Swapoff,
		parallel: o.Parallel,
	}
	if in.root == "" {
		in.root = "/"
	}
	if in.log == nil {
		in.log = slog.New(slog.DiscardHandler)
	}
	if in.modules == nil {
		in.modules = DefaultModules()
	}
	if in.sysctls == nil {
		in.sysctls = DefaultSysctls()
	}
	if in.run == nil {
		in.run = execRun
	}
	if in.swapoff == nil {
		in.swapoff = swapoffSyscall
	}
	if in.parallel <= 0 {
		in.parallel = runtime.GOMAXPROCS(0)
	}
	steps := o.Steps
	if steps == nil {
		steps = steplog.New(io.Discard)
	}

	for _, s := range []struct {
		name string
		fn   func(context.Context) (result, error)
	}{
		{StepVerifyBinaries, in.verifyBinaries},
		{StepModules, in.loadModules},
		{StepSysctl, in.applySysctls},
		{StepDirectories, in.makeDirectories},
		{StepSwapOff, in.swapOff},
	} {
		st := steps.Start(s.name)
		var (
			res result
			err = ctx.Err()
		)
		if err == nil {
			res, err = s.fn(ctx)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, st.Fail(err, res.kv...))
		}
		if res.skip {
			st.Skip(res.kv...)
		} else {
			st.Done(res.kv...)
		}
	}
	return nil
}

// path joins a node path under the root.
func (in *installer) path(p string) string { return filepath.Join(in.root, p) }

// maxCapturedOutput bounds how much of a command's output execRun keeps for its error.
const maxCapturedOutput = 4 << 10

// execRun runs name with args and returns an error carrying its combined output (the last
// maxCapturedOutput bytes, trimmed) when it fails.
func execRun(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var out tailBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = time.Second // a leftover child holding the output open cannot hang us
	if err := cmd.Run(); err != nil {
		line := strings.Join(append([]string{name}, args...), " ")
		if msg := strings.TrimSpace(out.String()); msg != "" {
			return fmt.Errorf("%s: %w: %s", line, err, msg)
		}
		return fmt.Errorf("%s: %w", line, err)
	}
	return nil
}

// tailBuffer keeps the last maxCapturedOutput bytes written to it.
type tailBuffer struct{ b bytes.Buffer }

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > maxCapturedOutput {
		p = p[len(p)-maxCapturedOutput:]
	}
	if over := t.b.Len() + len(p) - maxCapturedOutput; over > 0 {
		t.b.Next(over)
	}
	t.b.Write(p)
	return n, nil
}

func (t *tailBuffer) String() string { return t.b.String() }
