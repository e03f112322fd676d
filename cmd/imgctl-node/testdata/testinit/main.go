// Command testinit is the /sbin/init of the tiny root image the qemu boot test builds: it
// reports what the initrd set up and powers the machine off.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	uptime, _ := os.ReadFile("/proc/uptime")
	up, _, _ := strings.Cut(string(uptime), " ")
	mounts := readMountinfo()
	lower := mounts["/run/imgctl/lower"]
	rootRO := lower.fstype == "squashfs" && hasOpt(lower.opts, "ro") && writeFails("/run/imgctl/lower/probe")

	boot := 1
	persisted := false
	const counter = "/var/lib/imgctl-test/boots"
	if b, err := os.ReadFile(counter); err == nil {
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		boot, persisted = n+1, true
	}
	varWritable := os.MkdirAll("/var/lib/imgctl-test", 0o755) == nil &&
		os.WriteFile(counter, []byte(strconv.Itoa(boot)+"\n"), 0o644) == nil
	_, err := os.Stat("/run/imgctl/verity.json")
	const store = "/var/lib/containerd"
	fmt.Printf("IMGCTL-TEST-INIT-REACHED uid=%d pid=%d root-ro=%t var-writable=%t var-overlay=%t state=%s var-persisted=%t boot=%d root=%s lower-src=%s verity-marker=%t store=%s store-overlay=%s uptime=%ss\n",
		os.Getuid(), os.Getpid(), rootRO, varWritable, mounts["/var"].fstype == "overlay",
		mounts["/run/imgctl/state"].fstype, persisted, boot, mounts["/"].fstype, lower.source, err == nil,
		mounts[store].fstype, overlayProbe(store), up)
	unix.Sync()
	time.Sleep(100 * time.Millisecond)
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Println("testinit: power off:", err)
	}
	for {
		time.Sleep(time.Hour)
	}
}

type mount struct{ fstype, opts, source string }

// readMountinfo maps mount points to their type and options (the last mount wins).
func readMountinfo() map[string]mount {
	out := map[string]mount{}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		g := strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 1 {
			continue
		}
		m := mount{fstype: g[0], opts: f[5]}
		if len(g) > 1 {
			m.source = g[1]
		}
		out[f[4]] = m
	}
	return out
}

func hasOpt(opts, o string) bool {
	for _, x := range strings.Split(opts, ",") {
		if x == o {
			return true
		}
	}
	return false
}

// overlayProbe mounts an overlay whose upper layer is in dir, as containerd's overlayfs
// snapshotter does in its root: "ok", or the error.
func overlayProbe(dir string) string {
	p := filepath.Join(dir, "imgctl-test-overlay")
	defer os.RemoveAll(p)
	var d [4]string
	for i, n := range []string{"lower", "upper", "work", "merged"} {
		d[i] = filepath.Join(p, n)
		if err := os.MkdirAll(d[i], 0o755); err != nil {
			return "mkdir:" + strings.ReplaceAll(err.Error(), " ", "_")
		}
	}
	if err := unix.Mount("overlay", d[3], "overlay", 0, "lowerdir="+d[0]+",upperdir="+d[1]+",workdir="+d[2]); err != nil {
		return "mount:" + strings.ReplaceAll(err.Error(), " ", "_")
	}
	_ = unix.Unmount(d[3], 0)
	return "ok"
}

func writeFails(p string) bool {
	err := os.WriteFile(p, nil, 0o644)
	return errors.Is(err, unix.EROFS)
}
