package bootstrap

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// released records the content digest of every bootstrap Version. A change to the units without
// a new Version (and a new line here) fails: nodes report the version, so it must mean one thing.
var released = map[string]string{
	"1.0.0": "sha256:ef69e869954d0a6874d07e51baf96e10ad6119fba4c0b481f111998072a9a32c",
	"1.0.1": "sha256:930305d5e86b33f277c303fffa21d3c427e97d66a94cda33889c2a3a724afa5c",
	"1.1.0": "sha256:919c21ba083589be05c01b521a32efd966c8b29a06d5ee5ab7f158618cde206c", // not released before this change: the timer fix amends it
	"1.2.0": "sha256:ece8f316cff332742eb730db5240ea3c51b1192572a993380272f00d1e45d5b7", // imgctl-podnet.service
	"1.3.0": "sha256:23ab20bf5d26e25ff3f52be3ab1312859221a509a909c07ba545b7fad45ca898", // kube-node-configuration: TimeoutStartSec=90min for the kubeadm retries (issue 15)
}

func TestVersionRecordsContent(t *testing.T) {
	d, err := ContentDigest()
	if err != nil {
		t.Fatal(err)
	}
	if released[Version] != d {
		t.Fatalf("the bootstrap files changed (content %s) but Version %s records %s: bump Version and add it to released", d, Version, released[Version])
	}
}

func TestEntries(t *testing.T) {
	es, err := Entries()
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]Entry{}
	for i, e := range es {
		if i > 0 && es[i-1].Path >= e.Path {
			t.Errorf("entries not sorted/unique: %s then %s", es[i-1].Path, e.Path)
		}
		paths[e.Path] = e
	}
	for _, e := range es {
		if p := parent(e.Path); p != "" {
			if d, ok := paths[p]; !ok || !d.Mode.IsDir() {
				t.Errorf("%s: parent %s missing", e.Path, p)
			}
		}
		if e.Mode&fs.ModeSymlink != 0 {
			target := filepath.Join(filepath.Dir(e.Path), e.Target)
			if _, ok := paths[target]; !ok && !strings.Contains(e.Target, "systemd-networkd") && e.Target != "/dev/null" {
				t.Errorf("%s -> %s: target not in the layer", e.Path, e.Target)
			}
		}
	}
	for _, want := range []string{
		"usr/lib/systemd/system/kubernetes.target",
		"usr/lib/systemd/system/kube-node-installation.service",
		"usr/lib/systemd/system/kube-node-configuration.service",
		"usr/lib/systemd/system/kubelet-monitor.service",
		"usr/lib/systemd/system/kube-container-runtime-monitor.service",
		"usr/lib/systemd/system/kube-logrotate.timer",
		"usr/lib/systemd/system/kubelet.service",
		"etc/imgctl/hooks.d/post-configure.d",
		"usr/lib/systemd/system/imgctl-bless.service",
		"usr/lib/systemd/system/imgctl-update.service",
		"usr/lib/systemd/system/imgctl-update.timer",
		"etc/systemd/system/systemd-bless-boot.service",
		"usr/lib/systemd/system/imgctl-podnet.service",
	} {
		if _, ok := paths[want]; !ok {
			t.Errorf("missing %s", want)
		}
	}
}

// TestUpdateUnits: the A/B update units are wired as imgctl-node bless and update expect.
func TestUpdateUnits(t *testing.T) {
	es, err := Entries()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]Entry{}
	for _, e := range es {
		files[e.Path] = e
	}
	unit := func(name string) string { return string(files["usr/lib/systemd/system/"+name].Data) }
	for _, c := range []struct{ unit, line string }{
		// bless runs after configure whatever its outcome (Wants, not Requires) on every boot.
		{"imgctl-bless.service", "After=kube-node-configuration.service"},
		{"imgctl-bless.service", "Wants=kube-node-configuration.service"},
		{"imgctl-bless.service", "ExecStart=/usr/bin/imgctl-node bless"},
		{"imgctl-bless.service", "StandardOutput=journal+console"},
		{"kubernetes.target", "Wants=imgctl-bless.service"},
		// update never runs before this boot's bless.
		{"imgctl-update.service", "After=imgctl-bless.service"},
		{"imgctl-update.service", "ExecStart=/usr/bin/imgctl-node update"},
		{"imgctl-update.service", "StandardOutput=journal+console"},
		{"imgctl-update.service", "ConditionPathExists=/run/imgctl/update.json"},
		// configure's drop-in resets and sets OnUnitInactiveSec; the first check comes soon after.
		{"imgctl-update.timer", "OnActiveSec=15s"},
	} {
		if !strings.Contains(unit(c.unit), "\n"+c.line+"\n") {
			t.Errorf("%s lacks the line %s:\n%s", c.unit, c.line, unit(c.unit))
		}
	}
	if regexp.MustCompile(`(?m)^OnUnitInactiveSec=`).MatchString(unit("imgctl-update.timer")) {
		t.Error("imgctl-update.timer sets OnUnitInactiveSec=: configure's drop-in adds the NodeConfig's interval, and a drop-in cannot replace it without resetting OnActiveSec= too")
	}
	if strings.Contains(unit("imgctl-update.timer"), "[Install]") {
		t.Error("imgctl-update.timer has [Install]: configure starts it only when the NodeConfig enables updates")
	}
	// systemd's boot blessing would mark a slot good at boot-complete.target, before the kubelet
	// is healthy: masked, for bases that have it.
	if m := files["etc/systemd/system/systemd-bless-boot.service"]; m.Mode&fs.ModeSymlink == 0 || m.Target != "/dev/null" {
		t.Errorf("systemd-bless-boot.service not masked: %+v", m)
	}
}

// TestPodNetUnit: imgctl-podnet.service runs imgctl-node podnet with configure's environment,
// restarts on failure, and is started by configure only (no target wants it; no ordering after
// configure, which starts it while it runs).
func TestPodNetUnit(t *testing.T) {
	es, err := Entries()
	if err != nil {
		t.Fatal(err)
	}
	var unit string
	for _, e := range es {
		if e.Path == "usr/lib/systemd/system/imgctl-podnet.service" {
			unit = string(e.Data)
		}
		if e.Mode&fs.ModeSymlink != 0 && strings.HasSuffix(e.Path, "/imgctl-podnet.service") {
			t.Errorf("%s: imgctl-podnet.service is enabled; configure starts it", e.Path)
		}
		if strings.HasSuffix(e.Path, ".target") && strings.Contains(string(e.Data), "imgctl-podnet") {
			t.Errorf("%s names imgctl-podnet.service; configure starts it", e.Path)
		}
	}
	for _, line := range []string{
		"ConditionPathExists=/run/imgctl/podnet.env",
		"EnvironmentFile=/run/imgctl/podnet.env",
		"ExecStart=/usr/bin/imgctl-node podnet --node ${IMGCTL_NODE_NAME} --cluster-cidr ${IMGCTL_POD_CIDR}",
		"Restart=on-failure",
		"RestartSec=5",
		"StandardOutput=journal+console",
	} {
		if !strings.Contains(unit, "\n"+line+"\n") {
			t.Errorf("imgctl-podnet.service lacks the line %s:\n%s", line, unit)
		}
	}
	for _, bad := range []string{"[Install]", "After=kube-node-configuration.service"} {
		if strings.Contains(unit, bad) {
			t.Errorf("imgctl-podnet.service has %s", bad)
		}
	}
}

// TestUnitsVerify runs systemd-analyze verify on the units inside a root that has them plus the
// binaries and units they reference from other layers (stand-ins), so it checks our syntax,
// directives and dependencies, not the host.
func TestUnitsVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("runs systemd-analyze")
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze not installed (scripts/install-deps.sh installs systemd)")
	}
	dir := t.TempDir()
	// systemd's own units (sysinit.target, systemd-networkd, ...) from the host's systemd, the
	// same Debian 12 package the image's base layer has.
	sys := filepath.Join(dir, "usr/lib/systemd/system")
	os.MkdirAll(filepath.Dir(sys), 0o755)
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", sys).CombinedOutput(); err != nil {
		t.Fatalf("copying the host's systemd units: %v\n%s", err, out)
	}
	es, err := Entries()
	if err != nil {
		t.Fatal(err)
	}
	var units []string
	for _, e := range es {
		p := filepath.Join(dir, e.Path)
		switch {
		case e.Mode.IsDir():
			err = os.MkdirAll(p, 0o755)
		case e.Mode&fs.ModeSymlink != 0:
			os.Remove(p)
			err = os.Symlink(e.Target, p)
		default:
			err = os.WriteFile(p, e.Data, 0o644)
			if filepath.Dir(e.Path) == "usr/lib/systemd/system" {
				units = append(units, p)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// What other layers provide: the agent, kubelet, logrotate, containerd.
	for _, bin := range []string{AgentPath, "usr/bin/kubelet", "usr/sbin/logrotate", "usr/bin/containerd", "usr/lib/systemd/systemd-networkd-wait-online"} {
		p := filepath.Join(dir, bin)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("usr/lib", filepath.Join(dir, "lib"))
	os.Symlink("usr/bin", filepath.Join(dir, "bin"))
	os.Symlink("usr/sbin", filepath.Join(dir, "sbin"))
	if _, err := os.Stat(filepath.Join(sys, "containerd.service")); err != nil {
		os.WriteFile(filepath.Join(sys, "containerd.service"), []byte("[Service]\nExecStart=/usr/bin/containerd\n"), 0o644)
	}
	args := append([]string{"verify", "--root=" + dir, "--man=no"}, units...)
	out, err := exec.Command("systemd-analyze", args...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
