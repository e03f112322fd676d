package test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
	"github.com/imgctl/imgctl/test/bootenv"
)

// OVMF firmware from Debian's ovmf package.
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS.fd"
)

func requireQEMU(t *testing.T) {
	t.Helper()
	testenv.Integration(t, "boots qemu")
	testenv.Tools(t, "qemu-system-x86_64")
	testenv.Files(t, ovmfCode, ovmfVars)
}

// vm is one qemu run under a watchdog: it is killed by PID when ctx ends, so a hung guest
// never outlives its test.
//
// A guest that reboots with vmOptions.allowReboot gets a power cycle: qemu runs with -no-reboot,
// exits when the guest resets, and is started again with the same disk, NVRAM and console. A
// warm reset under TCG hung qemu after the kernel's "reboot: machine restart" (no firmware
// output for 10 minutes; CI and an idle run here, in the in-place update e2e; kubevirt#6885
// describes the same with emulation), while cold starts never did.
type vm struct {
	console *bootenv.Console
	// done receives qemu's exit once the guest is off for good (powered off, killed, its ctx
	// ended, or a restart failed); exited is closed then.
	done   chan error
	exited chan struct{}

	bin  string
	args []string
	out  io.Writer

	mu     sync.Mutex
	cmd    *exec.Cmd // the current qemu process
	from   int       // the console's length when it started
	killed bool
	cycles int // power cycles so far
}

type vmOptions struct {
	disk        string
	vars        string // writable copy of OVMF_VARS (boot counting and NVRAM live there)
	allowReboot bool   // a guest reset is a power cycle (qemu starts again), not the end
	memoryMiB   int
	logFile     string
	// netdev, when set, replaces -nic none: a -netdev user,... spec (id n0) that the guest
	// sees as a virtio NIC. Keep restrict=on: no guest traffic leaves the machine.
	netdev string
	// bios boots SeaBIOS instead of OVMF (vars is then unused).
	bios bool
	// bootNIC boots from the NIC (-boot n) with its option ROM, qemu's iPXE (ipxe-qemu);
	// otherwise the NIC has no ROM. disk may then be empty.
	bootNIC bool
	// mac is the NIC's MAC address (aa:bb:cc:dd:ee:ff); empty: qemu's default 52:54:00:12:34:56.
	mac string
	// lan, when set, adds a second virtio NIC with MAC lanMAC on a cluster LAN: a -netdev dgram
	// spec (id n1) on 127.0.0.1 from clusterLAN.netdevArgs. It needs netdev (NIC 1).
	lan, lanMAC string
	// singleThread runs the guest's two vCPUs on one host thread (-accel tcg,thread=single):
	// with several guests on the machine's two cores, a thread per vCPU overcommits them and a
	// guest's vCPU waits on another that is not running (etcd's heartbeats, the API server's
	// requests time out); one thread per guest does not.
	singleThread bool
}

func startVM(ctx context.Context, t *testing.T, o vmOptions) *vm {
	t.Helper()
	if o.memoryMiB == 0 {
		o.memoryMiB = 1024
	}
	accel := "tcg"
	if o.singleThread {
		accel = "tcg,thread=single"
	}
	args := []string{
		"-accel", accel, "-cpu", "max", "-machine", "q35", "-m", fmt.Sprint(o.memoryMiB), "-smp", "2",
		"-nographic", "-serial", "stdio", "-monitor", "none",
	}
	if !o.bios {
		args = append(args,
			"-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,file="+o.vars)
	}
	if o.disk != "" {
		args = append(args, "-drive", "file="+o.disk+",format=raw,if=virtio")
	}
	if o.netdev != "" {
		if !strings.Contains(o.netdev, "restrict=on") {
			t.Fatalf("netdev %q: guests stay on this machine (restrict=on)", o.netdev)
		}
		nic := "virtio-net-pci,netdev=n0,romfile="
		if o.bootNIC {
			nic = "virtio-net-pci,netdev=n0" // qemu's default ROM: iPXE from ipxe-qemu
			args = append(args, "-boot", "n")
		}
		if o.mac != "" {
			nic += ",mac=" + o.mac
		}
		args = append(args, "-netdev", o.netdev, "-device", nic)
		if o.lan != "" {
			lan, err := lanArgs(o.lan, o.lanMAC)
			if err != nil {
				t.Fatal(err)
			}
			args = append(args, lan...)
		}
	} else {
		if o.lan != "" {
			t.Fatal("vmOptions.lan needs netdev: the cluster LAN is NIC 2")
		}
		args = append(args, "-nic", "none")
	}
	// Every guest reset ends qemu; with allowReboot, supervise starts it again.
	args = append(args, "-no-reboot")
	c := &bootenv.Console{}
	var out io.Writer = c
	if o.logFile != "" {
		f, err := os.Create(o.logFile)
		if err == nil {
			t.Cleanup(func() { f.Close() })
			out = io.MultiWriter(c, f)
		}
	}
	return runVM(ctx, t, "qemu-system-x86_64", args, c, out, o.allowReboot)
}

// runVM starts bin (qemu) with args, its output to out (which feeds c), and supervises it.
func runVM(ctx context.Context, t *testing.T, bin string, args []string, c *bootenv.Console, out io.Writer, powerCycle bool) *vm {
	t.Helper()
	v := &vm{console: c, done: make(chan error, 1), exited: make(chan struct{}), bin: bin, args: args, out: out}
	if err := v.start(); err != nil {
		t.Fatal(err)
	}
	go v.supervise(ctx, powerCycle)
	t.Cleanup(v.kill)
	return v
}

// guestReset is what the guest kernel prints when it resets the machine: a reboot, or a
// panic's reboot (panic=N).
var guestReset = regexp.MustCompile(`reboot: Restarting system|reboot: machine restart|Rebooting in \d+ seconds`)

// start starts qemu (again), unless the vm was killed.
func (v *vm) start() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.killed {
		return errors.New("qemu was killed")
	}
	cmd := exec.Command(v.bin, v.args...)
	cmd.SysProcAttr = diesWithTest()
	cmd.Stdout, cmd.Stderr = v.out, v.out
	v.from = len(v.console.String())
	if err := cmd.Start(); err != nil {
		return err
	}
	v.cmd = cmd
	return nil
}

// supervise waits for qemu; with powerCycle it starts qemu again after a guest reset. It ends
// the vm (done, exited) when the guest is off for good; ctx's end kills it.
func (v *vm) supervise(ctx context.Context, powerCycle bool) {
	stop := context.AfterFunc(ctx, v.kill)
	defer stop()
	for {
		v.mu.Lock()
		cmd, from := v.cmd, v.from
		v.mu.Unlock()
		err := cmd.Wait()
		if powerCycle && err == nil && ctx.Err() == nil && guestReset.MatchString(v.console.String()[from:]) {
			v.mu.Lock()
			v.cycles++
			n := v.cycles
			v.mu.Unlock()
			fmt.Fprintf(v.out, "\n[test] the guest reset the machine: qemu starts again (power cycle %d)\n", n)
			if err = v.start(); err == nil {
				continue
			}
		}
		close(v.exited)
		v.done <- err
		return
	}
}

// kill ends qemu by PID (a power cut) and keeps it from being started again.
func (v *vm) kill() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.killed = true
	if v.cmd != nil && v.cmd.Process != nil {
		_ = v.cmd.Process.Kill()
	}
}

// hasExited reports whether the guest is off for good.
func (v *vm) hasExited() bool {
	select {
	case <-v.exited:
		return true
	default:
		return false
	}
}

// lanArgs are qemu's arguments for NIC 2 on a cluster LAN: spec must be a dgram netdev (id n1)
// that binds and sends only on 127.0.0.1, so no guest frame leaves the machine.
func lanArgs(spec, mac string) ([]string, error) {
	if !strings.HasPrefix(spec, "dgram,id=n1,") || !strings.Contains(spec, ",local.host=127.0.0.1,") ||
		!strings.Contains(spec, ",remote.host=127.0.0.1,") || strings.Count(spec, ".host=") != 2 {
		return nil, fmt.Errorf("cluster LAN netdev %q: want a dgram netdev with id n1 that binds and sends on 127.0.0.1 only (clusterLAN.netdevArgs)", spec)
	}
	if _, err := net.ParseMAC(mac); err != nil || len(mac) != len("aa:bb:cc:dd:ee:ff") {
		return nil, fmt.Errorf("cluster LAN NIC MAC %q: want aa:bb:cc:dd:ee:ff", mac)
	}
	return []string{"-netdev", spec, "-device", "virtio-net-pci,netdev=n1,romfile=,mac=" + mac}, nil
}

// waitFor polls the console until every substring has appeared (in any order), the guest
// exits, or ctx ends.
func (v *vm) waitFor(ctx context.Context, subs ...string) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		out := v.console.String()
		missing := ""
		for _, s := range subs {
			if !strings.Contains(out, s) {
				missing = s
				break
			}
		}
		if missing == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out waiting for %q", missing)
		case <-tick.C:
			if v.hasExited() {
				return fmt.Errorf("guest exited before %q appeared", missing)
			}
		}
	}
}

// stop kills qemu and waits until it is gone.
func (v *vm) stop() {
	v.kill()
	<-v.exited
}

// kernelMessage matches a kernel log line that the console printed into the middle of one of
// ours (printk and a write to /dev/console interleave); lines that start with a timestamp,
// such as journald's, are left alone.
var kernelMessage = regexp.MustCompile(`([^\n])\[ *\d+\.\d+\] [^\n]*\n`)

// cleanConsole removes kernel log lines from a console log, mending lines they split.
func cleanConsole(log string) string { return kernelMessage.ReplaceAllString(log, "$1") }

// consoleContains reports whether want is in the console log, as written or with kernel lines
// taken out: a kernel message can split a line (cleanConsole mends it), and a line printed right
// after a kernel message that lacks its newline is taken out with it by cleanConsole.
func consoleContains(log, want string) bool {
	return strings.Contains(log, want) || strings.Contains(cleanConsole(log), want)
}

// stepLines returns the imgctl-node step lines of a console log.
func stepLines(log string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(cleanConsole(log)))
	for sc.Scan() {
		if i := strings.Index(sc.Text(), "imgctl-node step="); i >= 0 {
			out = append(out, strings.TrimSpace(sc.Text()[i:]))
		}
	}
	return out
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// goBinary is a Go program the tests run, built once per test binary.
type goBinary struct {
	dir, pkg string // go build pkg in dir (relative to test/)
	out      string // the binary, relative to imgctlBin's directory
	once     sync.Once
	path     string
	err      error
}

var nodeAgentBin = &goBinary{dir: "..", pkg: "./cmd/imgctl-node", out: "imgctl-node"}

// build builds b static (CGO_ENABLED=0, -trimpath) on its first call in the test binary and
// returns its path.
func (b *goBinary) build(t *testing.T) string {
	t.Helper()
	b.once.Do(func() {
		path := filepath.Join(filepath.Dir(imgctlBin), b.out)
		cmd := exec.Command("go", "build", "-trimpath", "-o", path, b.pkg)
		cmd.Dir = b.dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("building %s: %v\n%s", filepath.Base(path), err, out)
			return
		}
		t.Logf("built %s in %v", filepath.Base(path), time.Since(start).Round(time.Second))
		b.path = path
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// nodeAgent builds the static imgctl-node once per test binary.
func nodeAgent(t *testing.T) string { return nodeAgentBin.build(t) }
func TestCleanConsoleMendsSplitLines(t *testing.T) {
	in := "imgctl-node step[    2.975845] Not activating Mandatory Access Control.\r\n=switch-root status=ok x\n[   16.32] imgctl-node[139]: imgctl-node step=verify-binaries status=ok\n"
	want := "imgctl-node step=switch-root status=ok x\n[   16.32] imgctl-node[139]: imgctl-node step=verify-binaries status=ok\n"
	if got := cleanConsole(in); got != want {
		t.Fatalf("%q", got)
	}
}

// diesWithTest makes a child process get SIGKILL when the test binary dies: a test timeout
// panics without running cleanups, and CI once left a qemu guest running for minutes after one.
func diesWithTest() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
