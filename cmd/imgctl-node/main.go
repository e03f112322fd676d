// Command imgctl-node is the node agent: PID 1 of the initrd (as /init or `imgctl-node init`),
// and the logic behind the bootstrap units (install, configure, monitor).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/bless"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/blockdev"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/bootinit"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/configure"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/esp"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/health"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/hooks"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/install"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/podnet"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/report"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/updater"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/updatestate"
	"github.com/imgctl/imgctl/images/nodeapi"
)

func main() {
	if os.Args[0] == "/init" {
		bootinit.Main(context.Background(), os.Args[1:])
		return
	}
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	if cmd == "init" {
		bootinit.Main(context.Background(), args)
		return
	}
	// The units are stopped with SIGTERM: end the work in progress and exit.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var err error
	switch cmd {
	case "install":
		err = runInstall(ctx, args)
	case "configure":
		err = runConfigure(ctx, args)
	case "monitor":
		err = runMonitor(ctx, args)
	case "cri-version":
		err = runCRIVersion(ctx, args)
	case "bless":
		err = runBless(ctx, args)
	case "update":
		err = runUpdate(ctx, args)
	case "podnet":
		err = runPodNet(ctx, args)
	case "help", "-h", "--help":
		fmt.Print(usageText)
		return
	default:
		fmt.Fprintf(os.Stderr, "imgctl-node: unknown command %q\n", cmd)
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "imgctl-node %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

const usageText = `usage: imgctl-node COMMAND [flags]

  init                      PID 1 of the initrd (also when run as /init): mount the root image, switch root;
                            imgctl.root=http(s)://…/sha256:HEX (or imgctl.root-digest=) brings up the boot NIC
                            (BOOTIF=, ip=, DHCP) and boots a verified copy downloaded into RAM
  install [--root DIR]      kube-node-installation: verify the baked binaries against /etc/imgctl/image.json,
                            load modules, set sysctls, create directories, turn swap off; hooks pre-/post-install
  configure [--root DIR --dry-run]
                            kube-node-configuration: read the NodeConfig (imgctl.metadata=URL, EC2 IMDSv2,
                            /etc/imgctl/node.yaml; order: imgctl.metadata-order=), write the kubelet, kubeadm
                            and containerd configuration for the role, start containerd and the kubelet or run
                            kubeadm init/join; hooks pre-/post-configure. The credential (imgctl.credential=)
                            goes to an http:// imgctl.metadata URL only with imgctl.metadata-insecure=1;
                            imgctl.metadata-pin=sha256:HEX (the server certificate's) accepts only that
                            certificate over https. With imgctl.metadata= and imgctl.credential=, init (network
                            root) and configure POST their step results to the server (a boot report)
                            --root DIR --dry-run writes everything under DIR and runs nothing (no command,
                            hook or sethostname; a status=skip line says what each step would have run)
  monitor kubelet|runtime   health loop: restart the kubelet (its /healthz) or containerd (its CRI) when they
                            fail for a sustained period
  cri-version [--socket S]  ask the container runtime's CRI endpoint for its version
  bless                     imgctl-bless.service: on an A/B disk, mark the running slot's boot entry good once
                            configure succeeded (kubelet healthy), else reboot without blessing (systemd-boot
                            falls back after 3 tries); record, report and remove the other slot's used-up entry
  update                    imgctl-update.service (disk nodes): ask the NodeConfig's update server for the channel's
                            image (/run/imgctl/update.json); if it is new here, write it into the inactive A/B slot
                            (reusing the running slot's blocks, fetching the rest by Range, every block verified),
                            put its kernel, initrd and a boot-counting entry (+3) on the ESP and reboot inside the
                            window. Refuses another architecture, a Kubernetes minor jump, an image that failed here
                            and any update while the running boot is not blessed
  podnet [--node NAME --cluster-cidr CIDR --kubeconfig FILE]
                            imgctl-podnet.service (kubeadm roles with spec.cluster.podCIDR): with the kubelet's
                            credentials, wait for the Node's spec.podCIDR, write the CNI configuration
                            (/etc/cni/net.d/10-imgctl.conflist: bridge cni0, host-local, portmap) and every 10 s
                            route each other Node's pod CIDR via its InternalIP (routes marked proto 201)

Every install/configure step prints one line to stdout (the units send it to the console and the journal):
  imgctl-node step=NAME status=ok|fail|skip latency=NNms key=value ...
`

func usage() {
	fmt.Fprint(os.Stderr, usageText)
	os.Exit(2)
}

// logger writes details to stderr (the journal under systemd).
func logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func parse(name string, args []string, define func(fs *flag.FlagSet)) {
	fs := flag.NewFlagSet("imgctl-node "+name, flag.ExitOnError)
	if define != nil {
		define(fs)
	}
	_ = fs.Parse(args)
	if fs.NArg() > 0 && name != "monitor" {
		fmt.Fprintf(os.Stderr, "imgctl-node %s: unexpected argument %q\n", name, fs.Arg(0))
		os.Exit(2)
	}
}

func runInstall(ctx context.Context, args []string) error {
	root := "/"
	parse("install", args, func(fs *flag.FlagSet) { fs.StringVar(&root, "root", root, "the node's root directory") })
	steps := steplog.New(os.Stdout)
	hook := func(phase string) error {
		return hooks.Run(ctx, hooks.Options{Root: root, Phase: phase, Steps: steps, Output: os.Stdout})
	}
	if err := hook(hooks.PreInstall); err != nil {
		return err
	}
	if err := install.Run(ctx, install.Options{Root: root, Steps: steps, Logger: logger()}); err != nil {
		return err
	}
	return hook(hooks.PostInstall)
}

func runConfigure(ctx context.Context, args []string) error {
	root, dryRun := "/", false
	parse("configure", args, func(fs *flag.FlagSet) {
		fs.StringVar(&root, "root", root, "the node's root directory (other than / only with --dry-run)")
		fs.BoolVar(&dryRun, "dry-run", false, "write the configuration under --root DIR and run nothing: no command, hook or sethostname")
	})
	if err := checkConfigureRoot(root, dryRun); err != nil {
		return err
	}
	line, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	return configure.Run(ctx, configure.Options{
		Root: root, Cmdline: string(line), Steps: steplog.New(os.Stdout), Logger: logger(), Output: os.Stdout, DryRun: dryRun,
	})
}

// checkConfigureRoot allows configure on this host's / for real, or under another directory as
// a dry run, and nothing in between: the host's containerd, kubelet and kubeadm read this
// host's /etc, so running them after writing files under another root configures nothing
// and disturbs the host; and a dry run into / would overwrite this host's configuration.
func checkConfigureRoot(root string, dryRun bool) error {
	isHost := filepath.Clean(root) == "/"
	switch {
	case !isHost && !dryRun:
		return fmt.Errorf("--root %s without --dry-run: configure would still set this host's hostname, restart its containerd "+
			"and start its kubelet or run kubeadm, which read this host's /etc, not %s; add --dry-run to only write the configuration under %s",
			root, root, root)
	case isHost && dryRun:
		return errors.New("--dry-run needs --root DIR (not /): a dry run writes what it renders under DIR and must not overwrite this host's configuration")
	}
	return nil
}

func runMonitor(ctx context.Context, args []string) error {
	parse("monitor", args, nil)
	if len(args) != 1 {
		return errors.New("expected one of: kubelet, runtime")
	}
	var m *health.Monitor
	switch args[0] {
	case "kubelet":
		m = health.KubeletMonitor(health.SystemctlRestart("kubelet.service"), logger())
	case "runtime":
		m = health.RuntimeMonitor(health.DefaultCRISocket, health.SystemctlRestart("containerd.service"), logger())
	default:
		return fmt.Errorf("unknown monitor %q (expected kubelet or runtime)", args[0])
	}
	err := m.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil // stopped by systemd
	}
	return err
}

func runUpdate(ctx context.Context, args []string) error {
	parse("update", args, nil)
	line, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	log := logger()
	return updater.Run(ctx, updater.Options{
		Cmdline: string(line), Steps: steplog.New(os.Stdout), Logger: log,
		Report: report.FromCmdline(string(line), report.Options{Logger: log}), Reboot: systemctlReboot,
	})
}

// runPodNet is imgctl-podnet.service: pod networking until stopped (package podnet).
func runPodNet(ctx context.Context, args []string) error {
	var name, cidr, kubeconfig string
	parse("podnet", args, func(fs *flag.FlagSet) {
		fs.StringVar(&name, "node", "", "this node's Node name (default: /etc/hostname, which configure wrote)")
		fs.StringVar(&cidr, "cluster-cidr", "", "the cluster's pod CIDR (spec.cluster.podCIDR): nodes' pod CIDRs outside it are ignored")
		fs.StringVar(&kubeconfig, "kubeconfig", "", "the kubelet's kubeconfig (default /etc/kubernetes/kubelet.conf)")
	})
	if name == "" {
		b, err := os.ReadFile("/etc/hostname")
		if err != nil {
			return fmt.Errorf("no --node and %w", err)
		}
		name = strings.TrimSpace(string(b))
	}
	var cluster netip.Prefix
	if cidr != "" {
		var err error
		if cluster, err = netip.ParsePrefix(cidr); err != nil || cluster != cluster.Masked() {
			return fmt.Errorf("--cluster-cidr %q: expected a network prefix such as 10.244.0.0/16", cidr)
		}
	}
	return podnet.Run(ctx, podnet.Options{NodeName: name, ClusterCIDR: cluster, Kubeconfig: kubeconfig, Steps: steplog.New(os.Stdout), Logger: logger()})
}

func runCRIVersion(ctx context.Context, args []string) error {
	socket := health.DefaultCRISocket
	parse("cri-version", args, func(fs *flag.FlagSet) { fs.StringVar(&socket, "socket", socket, "CRI socket") })
	v, err := health.CRIVersion(ctx, socket)
	if err != nil {
		return err
	}
	_, err = io.WriteString(os.Stdout, fmt.Sprintf("RuntimeName: %s\nRuntimeVersion: %s\nRuntimeApiVersion: %s\nAPI: %s\n",
		v.RuntimeName, v.RuntimeVersion, v.RuntimeAPIVersion, v.API))
	return err
}

// runBless is imgctl-bless.service: find the running slot and the ESP on its disk, mount the
// ESP and bless, reboot or record (package bless).
func runBless(ctx context.Context, args []string) error {
	parse("bless", args, nil)
	steps := steplog.New(os.Stdout)
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	line := string(raw)
	cfg, _ := cmdline.Parse(line) // a host without imgctl.root= has no Root: not an A/B node
	sys := blockdev.Sys{SysDir: "/sys", DevDir: "/dev"}
	loc, err := esp.Locate(sys, cfg.Root)
	if errors.Is(err, esp.ErrNotAB) {
		steps.Start("update-bless").Skip("reason", err.Error())
		return nil
	}
	if err != nil {
		return steps.Start("update-bless").Fail(err)
	}
	dev, err := sys.EnsureNode(loc.ESP)
	if err != nil {
		return steps.Start("update-bless").Fail(err)
	}
	e, err := esp.Mount(ctx, dev, esp.MountPoint)
	if err != nil {
		return steps.Start("update-bless").Fail(err)
	}
	defer func() {
		if err := e.Close(); err != nil {
			logger().Warn("ESP left mounted", "err", err)
		}
	}()
	_, serr := os.Stat(configure.MarkerPath)
	sender := report.FromCmdline(line, report.Options{Logger: logger()})
	return bless.Run(ctx, bless.Options{
		ESP: e, Slot: loc.Slot, Configured: serr == nil, RootDigest: cmdline.SlotParams(line).RootDigest, Debug: cfg.Debug,
		StatePath: updatestate.StatePath, Steps: steps, Logger: logger(), Sender: sender,
		Reboot: systemctlReboot,
		Report: func(ctx context.Context, r nodeapi.Report) { _ = sender.Send(ctx, r) },
	})
}

// systemctlReboot asks systemd for a clean reboot (units stop, the kubelet's graceful node
// shutdown runs).
func systemctlReboot(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "systemctl", "reboot")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("systemctl reboot: %w", err)
	}
	return nil
}
