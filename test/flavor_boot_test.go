package test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
)

// flavorReport is the test layer's report for the flavor boots: the kernel release, how the
// root was mounted, whether multi-user was reached, and which server NIC drivers and firmware
// files the booted system has.
const flavorReport = `#!/bin/sh
lower=$(findmnt -no SOURCE,FSTYPE,OPTIONS /run/imgctl/lower | tr -s ' ' ',')
mods=""
for m in igb ixgbe i40e ice mlx5_core bnxt_en tg3 e1000e bnx2x megaraid_sas mpt3sas; do
	[ -n "$(find /lib/modules/$(uname -r)/kernel -name "$m.ko*" | head -n1)" ] && mods="$mods,$m"
done
fw=""
for f in intel/ice/ddp/ice.pkg tigon/tg3.bin bnx2x/bnx2x-e2-7.13.21.0.fw bnx2/bnx2-mips-09-6.2.1b.fw; do
	[ -e "/lib/firmware/$f" ] && fw="$fw,$f"
done
echo "IMGCTL-TEST-REPORT kernel=$(uname -r) lower=$lower target=$(systemctl is-active multi-user.target) modules=${mods#,} firmware=${fw#,} uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
systemctl --no-block poweroff
`

type flavorBuild struct {
	disk     string
	kernel   string   // Config.Kernel
	sources  []string // the kernel layer's source URIs
	locked   []string // what the lock resolved them to
	rootLen  int64    // the root squashfs
	rootfs   int64    // the rootfs tar
	duration time.Duration
}

// buildFlavor builds the embedded default spec in flavor as target raw, with a stand-in
// kubelet and the flavor report layer.
func buildFlavor(ctx context.Context, t *testing.T, work, flavor string) flavorBuild {
	t.Helper()
	testenv.Tools(t, "mmdebstrap")
	dir := filepath.Join(work, flavor)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	kubelet := filepath.Join(work, "kubelet")
	os.WriteFile(kubelet, []byte("#!/bin/sh\necho kubelet stand-in\n"), 0o755)
	layer := filepath.Join(work, "flavorlayer")
	writeTestLayer(t, layer, map[string]string{
		"etc/systemd/system/imgctl-test-report.service": "[Unit]\nDescription=imgctl flavor boot report\nAfter=multi-user.target\n\n[Service]\nType=oneshot\nExecStart=/usr/local/bin/imgctl-test-report\n\n[Install]\nWantedBy=multi-user.target\n",
		"usr/local/bin/imgctl-test-report":              flavorReport,
	})
	out := filepath.Join(dir, "out")
	start := time.Now()
	res, err := imgctl(ctx, t, dir, "-o", "json", "build", "--k8s", "1.21.13", "--flavor", flavor, "--target", "raw",
		"--lock", filepath.Join(dir, "imgctl.lock"), "--node-agent", nodeAgent(t), "--output", out,
		"--source", "kubelet=file://"+kubelet+"#path=/usr/bin/kubelet&mode=0755",
		"--source", "extra=file://"+layer+"/")
	if err != nil {
		t.Fatal(err)
	}
	b := flavorBuild{disk: filepath.Join(out, "disk.raw"), duration: time.Since(start)}
	var r struct {
		Digest string
		Config struct {
			Kernel string
			Flavor string
			Rootfs struct{ Size int64 }
			Layers []struct {
				Role    string
				Sources []struct{ URI string }
			}
		}
	}
	if err := json.Unmarshal([]byte(res), &r); err != nil {
		t.Fatalf("%v: %s", err, res)
	}
	b.kernel, b.rootfs = r.Config.Kernel, r.Config.Rootfs.Size
	if r.Config.Flavor != flavor {
		t.Errorf("the image manifest records flavor %q, want %q", r.Config.Flavor, flavor)
	}
	// The lock pins the flavor's kernel and firmware packages like any other source.
	lockData, err := os.ReadFile(filepath.Join(dir, "imgctl.lock"))
	if err != nil {
		t.Fatal(err)
	}
	var lock struct {
		Sources []struct{ Role, URI, Digest, Resolved string }
	}
	if err := json.Unmarshal(lockData, &lock); err != nil {
		t.Fatalf("imgctl.lock: %v", err)
	}
	for _, s := range lock.Sources {
		if s.Role == "kernel" {
			b.locked = append(b.locked, s.Resolved)
			if !strings.HasPrefix(s.Digest, "sha256:") {
				t.Errorf("lock: kernel source %s has digest %q", s.URI, s.Digest)
			}
		}
	}
	for _, l := range r.Config.Layers {
		if l.Role == "kernel" {
			for _, s := range l.Sources {
				b.sources = append(b.sources, s.URI)
			}
		}
	}
	info, err := imgctl(ctx, t, dir, "-o", "json", "images", "inspect", r.Digest)
	if err != nil {
		t.Fatal(err)
	}
	var insp struct {
		Manifest struct {
			Layers []struct{ Annotations map[string]string }
		}
	}
	json.Unmarshal([]byte(info), &insp)
	for _, l := range insp.Manifest.Layers {
		if v := l.Annotations["dev.imgctl.root.size"]; v != "" {
			b.rootLen, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return b
}

// TestFlavorsBoot builds the embedded default spec in each flavor as disk.raw and boots it
// with OVMF (TCG) to multi-user with the root mounted read-only from ROOT-A. Metal must run
// Debian's generic kernel with the server NIC and storage drivers and the NIC firmware the
// cloud kernel lacks. Run one flavor with -run 'TestFlavorsBoot/metal'.
func TestFlavorsBoot(t *testing.T) {
	requireQEMU(t)
	for _, tc := range []struct {
		flavor string
		kernel *regexp.Regexp
		// in the report: modules=… and firmware=… exactly
		modules, firmware string
	}{
		{"metal", regexp.MustCompile(`^6\.1\.0-\d+-amd64$`),
			"igb,ixgbe,i40e,ice,mlx5_core,bnxt_en,tg3,e1000e,bnx2x,megaraid_sas,mpt3sas",
			"intel/ice/ddp/ice.pkg,tigon/tg3.bin,bnx2x/bnx2x-e2-7.13.21.0.fw,bnx2/bnx2-mips-09-6.2.1b.fw"},
		{"cloud", regexp.MustCompile(`^6\.1\.0-\d+-cloud-amd64$`), "mlx5_core", ""},
	} {
		t.Run(tc.flavor, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
			defer cancel()
			work := t.TempDir()
			b := buildFlavor(ctx, t, work, tc.flavor)
			if !tc.kernel.MatchString(b.kernel) {
				t.Errorf("kernel = %q, want %v", b.kernel, tc.kernel)
			}
			firmware := 0
			for _, s := range b.sources {
				if strings.Contains(s, "component=non-free-firmware") {
					firmware++
				}
			}
			if want := map[string]int{"cloud": 0, "metal": 3}[tc.flavor]; firmware != want {
				t.Errorf("kernel layer sources = %q: %d from non-free-firmware, want %d", b.sources, firmware, want)
			}
			t.Logf("kernel layer locked: %q", b.locked)
			wantLocked := []string{"linux-image-6.1.0-"} // the lock lists sources by URI
			if tc.flavor == "metal" {
				wantLocked = append(wantLocked, "firmware-misc-nonfree=", "firmware-bnx2x=", "firmware-bnx2=")
			}
			for _, w := range wantLocked {
				if !slices.ContainsFunc(b.locked, func(l string) bool { return strings.HasPrefix(l, w) }) || len(b.locked) != len(b.sources) {
					t.Errorf("lock resolved the kernel layer's %d sources to %q, want one %s…", len(b.sources), b.locked, w)
				}
			}
			disk := filepath.Join(work, "boot.raw")
			run(t, "cp", "--sparse=always", b.disk, disk)
			vars := filepath.Join(work, "vars.fd")
			copyFile(t, ovmfVars, vars)
			bootCtx, bootCancel := context.WithTimeout(ctx, 10*time.Minute)
			defer bootCancel()
			start := time.Now()
			vm := startVM(bootCtx, t, vmOptions{disk: disk, vars: vars, logFile: filepath.Join(work, "boot.log")})
			err := vm.waitFor(bootCtx, "IMGCTL-TEST-REPORT")
			log := vm.console.String()
			if err != nil {
				t.Fatalf("boot: %v\nconsole:\n%s", err, tail(log, 6000))
			}
			<-vm.done
			report := regexp.MustCompile(`IMGCTL-TEST-REPORT [^\r\n]*`).FindString(log)
			t.Logf("%s: build %v, kernel %s, rootfs tar %d MiB, root squashfs %d MiB, multi-user after %v wall",
				tc.flavor, b.duration.Round(time.Second), b.kernel, b.rootfs>>20, b.rootLen>>20, time.Since(start).Round(time.Second))
			t.Log(report)
			for _, want := range []string{"kernel=" + b.kernel + " ", "squashfs,ro", "target=active",
				"modules=" + tc.modules + " ", "firmware=" + tc.firmware + " "} {
				if !strings.Contains(report, want) {
					t.Errorf("report lacks %q: %s", want, report)
				}
			}
			// mount-state: ext4 on STATE needs crc32c, a soft dependency the generic kernel has as a module.
			for _, step := range []string{"step=mount-root status=ok", "step=format-state status=ok", "step=mount-state status=ok", "step=switch-root status=ok"} {
				if !strings.Contains(log, step) {
					t.Errorf("console lacks %q", step)
				}
			}
		})
	}
}
