// Command netrootinit is /sbin/init of the small root the netboot tests serve: it prints one
// console line saying how the root is mounted and which root it is (the id file the test
// wrote), then powers the guest off.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

func main() {
	id, err := os.ReadFile("/netroot-id")
	if err != nil {
		id = []byte("unreadable:" + err.Error())
	}
	fmt.Printf("IMGCTL-TEST-NETROOT pid=%d id=%s root=%s lower=%s\n", os.Getpid(),
		strings.TrimSpace(string(id)), mount("/"), mount("/run/imgctl/lower"))
	syscall.Sync()
	if err := syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Println("netrootinit: power off:", err)
	}
	for {
		time.Sleep(time.Hour) // not select{}: the runtime would call that a deadlock and exit
	}
}

// mount returns "SOURCE,FSTYPE,OPTIONS" of the last mount on dir in /proc/mounts.
func mount(dir string) string {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "unreadable"
	}
	found := "none"
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == dir {
			found = f[0] + "," + f[2] + "," + f[3]
		}
	}
	return found
}
