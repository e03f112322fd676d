// Package bootinit is PID 1 of the initrd: it mounts the read-only root image under a tmpfs
// overlay, sets up the STATE partition as /var, gives containerd's store a filesystem that is
// not an overlay, and switches root to the image's init. The
// root image is a partition, or (imgctl.root=http(s)://…) downloaded into RAM after bringing
// up the boot NIC, verified against its sha256 digest and attached to a loop device.
//
// Every step prints one line to the console (see package steplog), so a failed boot can be
// diagnosed from the serial console alone.
package bootinit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/blockdev"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/kmod"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/report"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/switchroot"
	"github.com/imgctl/imgctl/images/boot"
)

// Where things are mounted in the initrd (and, after the switch, under /run of the real root).
const (
	LowerDir = "/run/imgctl/lower" // the read-only root image
	RWDir    = "/run/imgctl/rw"    // tmpfs with the overlay's upper and work dirs
	RootDir  = "/run/imgctl/root"  // the overlay: the real root until the switch
	StateDir = "/run/imgctl/state" // the STATE partition (ext4); /var's upper layer lives here
	Staging  = "/sysroot"          // on the initrd's rootfs: where the root is moved to switch

	rootUpper = RWDir + "/upper"        // the root overlay's upper layer (tmpfs)
	varUpper  = StateDir + "/var/upper" // /var's overlay's upper layer (on STATE)

	// moduleList is where the initrd lists the modules to load.
	moduleList = "/" + boot.ModuleListPath

	rebootDelay = 2 * time.Second
	pollEvery   = 50 * time.Millisecond
	stateWait   = 5 * time.Second
)

// Main runs the init and never returns: it execs the real init or, on failure, reboots
// (or, with imgctl.debug, waits forever so the console can be read).
func Main(ctx context.Context, args []string) {
	log := steplog.New(os.Stdout)
	if os.Getpid() != 1 {
		// Never mount, delete or reboot anything on a machine that is already up.
		_ = log.Start("preflight").Fail(errors.New("imgctl-node init must run as PID 1 of the initrd"))
		os.Exit(2)
	}
	cfg, err := Run(ctx, log, args)
	fmt.Fprintf(consoleOrStdout(), "imgctl-node: boot failed: %v\n", err)
	if cfg.Debug {
		fmt.Fprintln(consoleOrStdout(), "imgctl-node: imgctl.debug is set: not rebooting")
		for {
			time.Sleep(time.Hour) // not select{}: the runtime would call that a deadlock and exit
		}
	}
	fmt.Fprintf(consoleOrStdout(), "imgctl-node: rebooting in %s\n", rebootDelay)
	time.Sleep(rebootDelay)
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		fmt.Fprintf(consoleOrStdout(), "imgctl-node: reboot: %v\n", err)
	}
	os.Exit(1) // PID 1 exiting panics the kernel; panic=N reboots
}

func consoleOrStdout() *os.File {
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		return f
	}
	return os.Stdout
}

// Run performs the boot; the caller must be PID 1 of an initramfs. It returns only on failure (after printing the failed step) together
// with whatever configuration it had parsed; on success it execs the real init.
//
// A network root whose command line names an imgctl metadata server and a node credential
// reports the init phase to it once the network is up (package report): ok just before the
// switch, or the failed step before Main reboots.
func Run(ctx context.Context, log *steplog.Logger, args []string) (cfg cmdline.Config, err error) {
	if err := mountAPI(log); err != nil {
		return cmdline.Config{}, err
	}
	cfg, line, err := readCmdline(log)
	if err != nil {
		return cfg, err
	}
	rep := newInitReport(line, cfg, report.Options{Logger: slog.New(slog.NewTextHandler(os.Stdout, nil))})
	defer func() {
		if err != nil {
			rep.send(ctx, log, err)
		}
	}()
	if cfg.RootURL != "" {
		if err := refuseUnverified(log, cfg); err != nil {
			return cfg, err
		}
	}
	loadModules(ctx, log)

	sys := blockdev.Sys{SysDir: "/sys", DevDir: "/dev"}
	var vr *verityRoot
	defer func() { vr.readFailure(log, err) }() // a read error of a verity root: say so, with its status
	if cfg.RootURL != "" {
		loop, image, err := netRoot(ctx, log, cfg, netEnv{Up: rep.netUp})
		if err != nil {
			return cfg, err
		}
		dev := loop.Name()
		if cfg.Verity != nil {
			if vr, err = mapVerity(log, sys.DevDir, dev, cfg.Verity); err != nil {
				loop.Close()
				return cfg, err
			}
			dev = vr.path
		}
		err = mountRoot(log, dev, "file", image)
		loop.Close() // the mount (or the verity device) holds the device now; autoclear frees it with them
		if err != nil {
			return cfg, err
		}
	} else {
		root, rootPath, err := findDevice(ctx, log, sys, "find-root", cfg.Root, cfg.RootTimeout)
		if err != nil {
			return cfg, err
		}
		dev := rootPath
		if cfg.Verity != nil {
			if vr, err = mapVerity(log, sys.DevDir, rootPath, cfg.Verity); err != nil {
				return cfg, err
			}
			dev = vr.path
		}
		if err := mountRoot(log, dev, "label", root.PartName); err != nil {
			return cfg, err
		}
	}
	state := false
	if !cfg.State.IsZero() {
		if state, err = setupState(ctx, log, sys, cfg.State); err != nil {
			return cfg, err
		}
	}
	if err := mountContainerStore(log, state); err != nil {
		return cfg, err
	}
	if vr != nil {
		if err := vr.writeMarker(log); err != nil {
			return cfg, err
		}
	}
	rep.send(ctx, log, nil)
	return cfg, switchRoot(log, cfg, args)
}

type apiMount struct{ dir, fstype, data string }

var apiMounts = []apiMount{
	{"/proc", "proc", ""},
	{"/sys", "sysfs", ""},
	{"/dev", "devtmpfs", "mode=0755"},
	{"/run", "tmpfs", "mode=0755"},
}

func mountAPI(log *steplog.Logger) error {
	for _, m := range apiMounts {
		s := log.Start("mount-" + strings.TrimPrefix(m.dir, "/"))
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return s.Fail(fmt.Errorf("mount %s: %w", m.dir, err))
		}
		flags := uintptr(unix.MS_NOSUID)
		if m.fstype != "devtmpfs" {
			flags |= unix.MS_NODEV | unix.MS_NOEXEC
		}
		if m.fstype == "tmpfs" {
			flags &^= unix.MS_NOEXEC
		}
		err := unix.Mount(m.fstype, m.dir, m.fstype, flags, m.data)
		if errors.Is(err, unix.EBUSY) {
			s.Done("dir", m.dir, "fstype", m.fstype, "already", true)
			continue
		}
		if err != nil {
			return s.Fail(fmt.Errorf("mount %s %s: %w", m.fstype, m.dir, err))
		}
		if m.dir == "/dev" {
			attachConsole(log)
		}
		s.Done("dir", m.dir, "fstype", m.fstype)
	}
	return nil
}

// attachConsole points the step log, and stdin/out/err if the kernel could not open
// /dev/console for us (no /dev/console in the initrd), at the console.
func attachConsole(log *steplog.Logger) {
	f, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return
	}
	var st unix.Stat_t
	if unix.Fstat(1, &st) != nil {
		for fd := 0; fd <= 2; fd++ {
			_ = unix.Dup2(int(f.Fd()), fd)
		}
	}
	log.SetOutput(f)
}

// readCmdline parses /proc/cmdline; it returns the line too (the boot report reads its keys).
func readCmdline(log *steplog.Logger) (cmdline.Config, string, error) {
	s := log.Start("cmdline")
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return cmdline.Config{}, "", s.Fail(fmt.Errorf("read kernel cmdline: %w", err))
	}
	cfg, err := cmdline.Parse(string(b))
	if err != nil {
		return cfg, "", s.Fail(err)
	}
	kv := []any{"root", cfg.Root, "init", cfg.Init, "root-timeout", cfg.RootTimeout.String()}
	if cfg.RootURL != "" {
		kv = []any{"root", cfg.RootURL, "root-digest", cfg.RootDigest, "init", cfg.Init}
		if cfg.BootIF != nil {
			kv = append(kv, "bootif", cfg.BootIF.String())
		}
	}
	if !cfg.State.IsZero() {
		kv = append(kv, "state", cfg.State)
	}
	if cfg.Debug {
		kv = append(kv, "debug", true)
	}
	s.Done(kv...)
	return cfg, string(b), nil
}

// loadModules loads /etc/imgctl/modules. Failures are printed but not fatal: a missing driver
// shows up as a missing root device, and the module's error is then on the console above it.
func loadModules(ctx context.Context, log *steplog.Logger) {
	s := log.Start("modules")
	f, err := os.Open(moduleList)
	if errors.Is(err, os.ErrNotExist) {
		s.Skip("list", moduleList, "reason", "no module list")
		return
	}
	if err != nil {
		_ = s.Fail(fmt.Errorf("read module list: %w", err))
		return
	}
	paths, err := kmod.ParseList(f)
	f.Close()
	if err != nil {
		_ = s.Fail(err)
		return
	}
	var loaded, already int
	var firstErr error
	failed := kmod.LoadAll(ctx, "/", paths, func(r kmod.Result) {
		switch {
		case r.Err != nil:
			_ = log.Start("module").Fail(r.Err, "path", r.Path)
			if firstErr == nil {
				firstErr = r.Err
			}
		case r.Already:
			already++
		default:
			loaded++
		}
	})
	kv := []any{"count", len(paths), "loaded", loaded, "already", already, "failed", failed}
	if failed > 0 {
		_ = s.Fail(fmt.Errorf("%d of %d modules failed, first: %w", failed, len(paths), firstErr), kv...)
		return
	}
	s.Done(kv...)
}

func findDevice(ctx context.Context, log *steplog.Logger, sys blockdev.Sys, step string, spec cmdline.Device, timeout time.Duration) (blockdev.Dev, string, error) {
	s := log.Start(step)
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d, err := sys.Wait(wctx, spec, pollEvery)
	if err != nil {
		return d, "", s.Fail(fmt.Errorf("%s: %w", step, err), "want", spec, "timeout", timeout.String())
	}
	p, err := sys.EnsureNode(d)
	if err != nil {
		return d, "", s.Fail(err, "want", spec)
	}
	s.Done("want", spec, "device", p, "label", d.PartName)
	return d, p, nil
}

// mountRoot mounts the root image on dev read-only under a tmpfs overlay; kv says where dev
// came from, for the step line.
func mountRoot(log *steplog.Logger, dev string, kv ...any) error {
	s := log.Start("mount-root")
	fstype, err := detectImage(dev)
	if err != nil {
		return s.Fail(err, "device", dev)
	}
	if err := os.MkdirAll(LowerDir, 0o755); err != nil {
		return s.Fail(err)
	}
	if err := unix.Mount(dev, LowerDir, fstype, unix.MS_RDONLY, ""); err != nil {
		return s.Fail(fmt.Errorf("mount %s %s on %s: %w", fstype, dev, LowerDir, err), "device", dev)
	}
	s.Done(append(append([]any{"device", dev}, kv...), "fstype", fstype, "dir", LowerDir)...)

	s = log.Start("mount-overlay")
	if err := os.MkdirAll(RWDir, 0o755); err != nil {
		return s.Fail(err)
	}
	if err := unix.Mount("tmpfs", RWDir, "tmpfs", 0, "mode=0755"); err != nil {
		return s.Fail(fmt.Errorf("mount tmpfs on %s: %w", RWDir, err))
	}
	upper, work := rootUpper, RWDir+"/work"
	if err := mkdirs(upper, work, RootDir); err != nil {
		return s.Fail(err)
	}
	opts := "lowerdir=" + LowerDir + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", RootDir, "overlay", 0, opts); err != nil {
		return s.Fail(fmt.Errorf("mount overlay on %s (%s): %w", RootDir, opts, err))
	}
	s.Done("dir", RootDir, "lower", LowerDir, "upper", upper)
	return nil
}

// detectImage tells squashfs from erofs by their magic numbers.
func detectImage(dev string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", fmt.Errorf("detect root filesystem: %w", err)
	}
	defer f.Close()
	b := make([]byte, 1028)
	if _, err := f.ReadAt(b, 0); err != nil {
		return "", fmt.Errorf("detect root filesystem on %s: %w", dev, err)
	}
	switch {
	case string(b[:4]) == "hsqs":
		return "squashfs", nil
	case b[1024] == 0xe2 && b[1025] == 0xe1 && b[1026] == 0xf5 && b[1027] == 0xe0:
		return "erofs", nil
	}
	return "", fmt.Errorf("%s holds neither squashfs nor erofs (first bytes %x)", dev, b[:4])
}

func mkdirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func switchRoot(log *steplog.Logger, cfg cmdline.Config, args []string) error {
	s := log.Start("switch-root")
	freed, err := switchroot.Switch(switchroot.Options{
		NewRoot: RootDir,
		Staging: Staging,
		Move:    []string{"/dev", "/proc", "/sys", "/run"},
	})
	if err != nil {
		return s.Fail(err)
	}
	candidates := []string{cfg.Init}
	if !cfg.InitSet {
		candidates = append(candidates, cmdline.FallbackInit)
	}
	init, err := switchroot.FindInit(candidates...)
	if err != nil {
		return s.Fail(err)
	}
	s.Done("init", init, "freed-initrd-files", freed, "uptime", uptime())
	argv := append([]string{init}, args...)
	env := os.Environ()
	if err := unix.Exec(init, argv, env); err != nil {
		return log.Start("exec-init").Fail(fmt.Errorf("exec %s: %w", init, err))
	}
	return nil
}

// uptime is the kernel's uptime, for boot timings on the console.
func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	f, _, _ := strings.Cut(string(b), " ")
	return f + "s"
}
