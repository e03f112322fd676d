// Command bootcheck boots an unmodified imgctl raw disk in qemu (OVMF, TCG) and waits until the
// node has configured itself and its kubelet answers /healthz (step=kubelet-healthy status=ok):
// the nightly pipeline's boot check (scripts/nightly).
//
// The image carries no NodeConfig: bootcheck serves a throwaway one (role node, a kubelet client
// certificate from a CA made for this boot) as EC2 IMDSv2 user data. The guest reaches it at
// 169.254.169.254 through qemu's guestfwd, which runs this binary as a relay to an HTTP server on
// loopback; restrict=on keeps every other packet on the machine. The disk is copied first
// (sparse), so the image is never modified. Any step with status=fail ends the check, as does
// the guest stopping or the timeout; qemu is killed by PID whatever happens.
//
//	go run ./test/bootcheck [-timeout 10m] [-console FILE] DISK.raw
//	go run ./test/bootcheck -store STORE [-timeout 10m] [-console FILE] sha256:IMAGE
//
// With -store, the disk booted is the image's disk.simg from the OCI layout store, expanded:
// the stored bytes themselves, not an export.
//
// Exit status: 0 the kubelet is healthy, 1 the check failed, 2 usage or a missing prerequisite.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/imgctl/imgctl/images/sparse"
	"github.com/imgctl/imgctl/test/bootenv"
)

// relayEnv makes this binary a relay: qemu's guestfwd=…-cmd: starts one per guest connection
// with the connection as stdin and stdout, and it forwards to the loopback server named.
const relayEnv = "IMGCTL_BOOTCHECK_RELAY"

// OVMF firmware from Debian's ovmf package.
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS.fd"
)

const (
	healthyLine = "step=kubelet-healthy status=ok"
	nodeName    = "nightly-check"
)

// failedStep matches a step line that failed: imgctl-node step=NAME status=fail err="…".
var failedStep = regexp.MustCompile(`imgctl-node step=(\S+) status=fail[^\r\n]*`)

func main() {
	if addr := os.Getenv(relayEnv); addr != "" {
		os.Exit(bootenv.Relay(addr))
	}
	flags := flag.NewFlagSet("bootcheck", flag.ContinueOnError)
	timeout := flags.Duration("timeout", 10*time.Minute, "bound on the whole boot, from qemu's start to the kubelet's /healthz")
	consoleFile := flags.String("console", "", "also write the guest's serial console to this file")
	memory := flags.Int("memory", 1536, "guest memory in MiB")
	storeDir := flags.String("store", "", "boot the disk.simg of the image sha256:… in this OCI layout store (imgctl's --store)")
	flags.Usage = func() {
		fmt.Fprintf(flags.Output(), "usage: bootcheck [flags] DISK.raw\n       bootcheck -store STORE [flags] sha256:IMAGE\n\nBoots DISK.raw or the stored image's disk (unmodified: a copy is booted) in qemu with a\nthrowaway NodeConfig as IMDSv2 user data and waits for step=kubelet-healthy status=ok.\n\n")
		flags.PrintDefaults()
	}
	if err := flags.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if flags.NArg() != 1 {
		flags.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	disk := diskSource{path: flags.Arg(0)}
	if *storeDir != "" {
		disk = diskSource{store: *storeDir, image: flags.Arg(0)}
	}
	err := check(ctx, disk, *timeout, *consoleFile, *memory)
	var pre *prereqError
	switch {
	case errors.As(err, &pre):
		fmt.Fprintln(os.Stderr, "bootcheck:", err)
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "bootcheck:", err)
		os.Exit(1)
	}
}

// prereqError is a missing tool or file: not the image's fault.
type prereqError struct{ msg string }

func (e *prereqError) Error() string { return e.msg }

// diskSource is a raw disk file, or the disk.simg of an image in a store.
type diskSource struct {
	path         string
	store, image string
}

func (d diskSource) String() string {
	if d.store != "" {
		return d.image + " (store " + d.store + ")"
	}
	return d.path
}

func check(ctx context.Context, disk diskSource, timeout time.Duration, consoleFile string, memoryMiB int) error {
	if disk.store != "" {
		p, err := storedDisk(disk.store, disk.image)
		if err != nil {
			return &prereqError{err.Error()}
		}
		disk.path = p
	} else if st, err := os.Stat(disk.path); err != nil {
		return &prereqError{fmt.Sprintf("disk %s: %v", disk.path, err)}
	} else if !st.Mode().IsRegular() {
		return &prereqError{fmt.Sprintf("disk %s: not a regular file (want the raw target's disk.raw)", disk.path)}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return &prereqError{"qemu-system-x86_64 missing (apt-get install qemu-system-x86)"}
	}
	for _, f := range []string{ovmfCode, ovmfVars} {
		if _, err := os.Stat(f); err != nil {
			return &prereqError{fmt.Sprintf("%s missing (apt-get install ovmf)", f)}
		}
	}
	self, err := os.Executable()
	if err != nil {
		return &prereqError{fmt.Sprintf("finding this program for the relay: %v", err)}
	}
	work, err := os.MkdirTemp("", "imgctl-bootcheck-")
	if err != nil {
		return fmt.Errorf("temporary directory: %w", err)
	}
	defer os.RemoveAll(work)

	copyDisk := filepath.Join(work, "disk.raw")
	if disk.store != "" {
		if err := expand(ctx, disk.path, copyDisk); err != nil {
			return err
		}
	} else if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", "--", disk.path, copyDisk).CombinedOutput(); err != nil {
		return fmt.Errorf("copying %s: %w: %s", disk, err, bytes.TrimSpace(out))
	}
	// Room for STATE to grow into at first boot.
	if err := os.Truncate(copyDisk, 4<<30); err != nil {
		return fmt.Errorf("enlarging the copy of %s: %w", disk, err)
	}
	vars := filepath.Join(work, "vars.fd")
	if err := copyFile(ovmfVars, vars); err != nil {
		return err
	}

	userData, err := bootenv.NodeConfig(nodeName, map[string]string{"imgctl.dev/boot-check": "true"})
	if err != nil {
		return fmt.Errorf("the throwaway NodeConfig: %w", err)
	}
	imds := &bootenv.IMDS{UserData: userData}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("the IMDS server on loopback: %w", err)
	}
	srv := &http.Server{Handler: imds, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	// The guest's network is 169.254.0.0/16 so that 169.254.169.254 is on it (slirp forwards only
	// addresses inside its network); restrict=on keeps everything else off.
	netdev := fmt.Sprintf("user,id=n0,restrict=on,net=169.254.0.0/16,host=169.254.0.2,dhcpstart=169.254.0.15,"+
		"guestfwd=tcp:169.254.169.254:80-cmd:env %s=%s %s", relayEnv, ln.Addr(), self)
	if strings.ContainsAny(self, " ,'\"\\") {
		return &prereqError{fmt.Sprintf("this program's path %q has characters qemu's guestfwd command cannot carry", self)}
	}
	args := []string{
		"-accel", "tcg", "-cpu", "max", "-machine", "q35", "-m", fmt.Sprint(memoryMiB), "-smp", "2",
		"-nographic", "-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-drive", "if=pflash,format=raw,readonly=on,file=" + ovmfCode,
		"-drive", "if=pflash,format=raw,file=" + vars,
		"-drive", "file=" + copyDisk + ",format=raw,if=virtio",
		"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile=",
	}
	console := &bootenv.Console{}
	var out io.Writer = console
	if consoleFile != "" {
		f, err := os.Create(consoleFile)
		if err != nil {
			return fmt.Errorf("console file: %w", err)
		}
		defer f.Close()
		out = io.MultiWriter(console, f)
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting qemu: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() { // the watchdog: qemu never outlives the check
		_ = cmd.Process.Kill()
		<-exited
	}()
	fmt.Fprintf(os.Stderr, "bootcheck: booting a copy of %s in qemu (TCG, pid %d), NodeConfig %q from IMDS on %s\n", disk, cmd.Process.Pid, nodeName, ln.Addr())

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		log := console.String()
		if m := failedStep.FindStringSubmatch(log); m != nil {
			printSteps(log)
			return fmt.Errorf("step %s failed after %v: %s", m[1], time.Since(start).Round(time.Second), strings.TrimSpace(m[0]))
		}
		if strings.Contains(log, healthyLine) {
			printSteps(log)
			if r := imds.Requests(); !bootenv.IMDSv2Flow(r) {
				return fmt.Errorf("the kubelet is healthy but the node never read its NodeConfig from IMDS (requests %q)", r)
			}
			fmt.Printf("boot check passed: kubelet healthy after %v (wall, TCG)\n", time.Since(start).Round(time.Second))
			return nil
		}
		select {
		case <-exited:
			printSteps(log)
			return fmt.Errorf("the guest stopped after %v before %q; console tail:\n%s", time.Since(start).Round(time.Second), healthyLine, tail(log, 3000))
		case <-ctx.Done():
			printSteps(log)
			if context.Cause(ctx) == context.DeadlineExceeded || errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("no %q within %v; console tail:\n%s", healthyLine, timeout, tail(log, 3000))
			}
			return fmt.Errorf("interrupted after %v", time.Since(start).Round(time.Second))
		case <-tick.C:
		}
	}
}

// storedDisk returns the path of the disk.simg blob of image (sha256:HEX) in the OCI layout
// store dir: the layer of the image manifest titled disk.simg.
func storedDisk(dir, image string) (string, error) {
	hex, ok := strings.CutPrefix(image, "sha256:")
	if !ok || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", fmt.Errorf("image %q: expected a digest sha256:<64 hex digits>", image)
	}
	b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", hex))
	if err != nil {
		return "", fmt.Errorf("image %s in store %s: %w", image, dir, err)
	}
	var m struct {
		Layers []struct {
			Digest      string
			Annotations map[string]string
		}
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return "", fmt.Errorf("image %s in store %s: manifest: %w", image, dir, err)
	}
	for _, l := range m.Layers {
		if l.Annotations["org.opencontainers.image.title"] == "disk.simg" {
			h, ok := strings.CutPrefix(l.Digest, "sha256:")
			if !ok || strings.ContainsAny(h, "/.") {
				return "", fmt.Errorf("image %s in store %s: disk.simg has digest %q (expected sha256:…)", image, dir, l.Digest)
			}
			return filepath.Join(dir, "blobs", "sha256", h), nil
		}
	}
	return "", fmt.Errorf("image %s in store %s has no disk.simg (build it with --target raw)", image, dir)
}

// expand writes the raw disk of the sparse image src to dst (holes stay holes).
func expand(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("reading the stored disk: %w", err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("expanding the stored disk: %w", err)
	}
	defer out.Close()
	if _, err := sparse.Expand(ctx, out, in); err != nil {
		return fmt.Errorf("expanding %s: %w", src, err)
	}
	return out.Close()
}

// printSteps writes the imgctl-node step lines of the console log to standard error.
func printSteps(log string) {
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if i := strings.Index(sc.Text(), "imgctl-node step="); i >= 0 {
			fmt.Fprintln(os.Stderr, "  "+strings.TrimSpace(sc.Text()[i:]))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	return nil
}
