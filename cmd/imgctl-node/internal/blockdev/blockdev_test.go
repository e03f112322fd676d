package blockdev

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
)

// fakeSys lays out a sysfs tree like the kernel's: class/block/X -> ../../devices/…/block/disk/X.
func fakeSys(t *testing.T, uevents map[string]string) Sys {
	t.Helper()
	root := t.TempDir()
	class := filepath.Join(root, "class", "block")
	if err := os.MkdirAll(class, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, ue := range uevents {
		disk := strings.TrimRight(name, "0123456789")
		dir := filepath.Join(root, "devices", "virtio0", "block", disk)
		if disk != name {
			dir = filepath.Join(dir, name)
		}
		if err := os.MkdirAll(filepath.Join(dir, "queue"), 0o755); err != nil {
			t.Fatal(err)
		}
		must(t, os.WriteFile(filepath.Join(dir, "uevent"), []byte(ue), 0o644))
		must(t, os.WriteFile(filepath.Join(dir, "size"), []byte("131072\n"), 0o644))
		must(t, os.WriteFile(filepath.Join(dir, "queue", "logical_block_size"), []byte("512\n"), 0o644))
		rel, _ := filepath.Rel(class, dir)
		must(t, os.Symlink(rel, filepath.Join(class, name)))
	}
	return Sys{SysDir: root, DevDir: filepath.Join(root, "dev")}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var vda = map[string]string{
	"vda":  "MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\nDISKSEQ=1\n",
	"vda1": "MAJOR=254\nMINOR=1\nDEVNAME=vda1\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=1\nPARTNAME=ESP\n",
	"vda2": "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=2\nPARTNAME=ROOT-A\nPARTUUID=6A1F5C2E-0B7D-4A8E-9C3B-2D1E0F9A8B7C\n",
	"vda3": "MAJOR=254\nMINOR=3\nDEVNAME=vda3\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=3\nPARTNAME=STATE\nPARTUUID=11111111-2222-3333-4444-555555555555\n",
	"vdb1": "MAJOR=254\nMINOR=17\nDEVNAME=vdb1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=STATE\nPARTUUID=11111111-2222-3333-4444-555555555556\n",
}

func TestScanMatch(t *testing.T) {
	s := fakeSys(t, vda)
	devs, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 5 {
		t.Fatalf("devs = %+v", devs)
	}
	want := Dev{Name: "vda2", Major: 254, Minor: 2, Type: "partition", PartN: 2, PartName: "ROOT-A", PartUUID: "6a1f5c2e-0b7d-4a8e-9c3b-2d1e0f9a8b7c", Disk: "vda"}
	if !reflect.DeepEqual(devs[2], want) {
		t.Errorf("vda2 = %+v\nwant %+v", devs[2], want)
	}
	tests := []struct {
		spec string
		want []string
	}{
		{"PARTLABEL=ROOT-A", []string{"vda2"}},
		{"PARTLABEL=STATE", []string{"vda3", "vdb1"}},
		{"PARTLABEL=NOPE", nil},
		{"PARTUUID=6a1f5c2e-0b7d-4a8e-9c3b-2d1e0f9a8b7c", []string{"vda2"}},
		{"/dev/vda3", []string{"vda3"}},
		{"/dev/vda", []string{"vda"}},
	}
	for _, tc := range tests {
		spec, err := cmdline.ParseDevice(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range Match(devs, spec) {
			got = append(got, d.Name)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Match(%s) = %v, want %v", tc.spec, got, tc.want)
		}
	}
	if n, err := s.Size("vda"); err != nil || n != 64<<20 {
		t.Errorf("Size = %d, %v", n, err)
	}
	if n, err := s.SectorSize("vda"); err != nil || n != 512 {
		t.Errorf("SectorSize = %d, %v", n, err)
	}
}

func TestWait(t *testing.T) {
	s := fakeSys(t, vda)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d, err := s.Wait(ctx, cmdline.Device{Kind: cmdline.PartLabel, Value: "ROOT-A"}, 10*time.Millisecond)
	if err != nil || d.Name != "vda2" {
		t.Fatalf("Wait = %+v, %v", d, err)
	}
	if _, err := s.Wait(ctx, cmdline.Device{Kind: cmdline.PartLabel, Value: "STATE"}, 10*time.Millisecond); err == nil || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("ambiguous Wait err = %v", err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	_, err = s.Wait(short, cmdline.Device{Kind: cmdline.PartLabel, Value: "NOPE"}, 10*time.Millisecond)
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "PARTLABEL=NOPE") || !strings.Contains(err.Error(), "vda2[ROOT-A]") {
		t.Errorf("Wait(NOPE) err = %v", err)
	}
}

func TestWaitAppears(t *testing.T) {
	s := fakeSys(t, map[string]string{"vda": vda["vda"]})
	go func() {
		time.Sleep(50 * time.Millisecond)
		dir := filepath.Join(s.SysDir, "devices", "virtio0", "block", "vda", "vda2")
		_ = os.MkdirAll(dir, 0o755)
		_ = os.WriteFile(filepath.Join(dir, "uevent"), []byte(vda["vda2"]), 0o644)
		_ = os.Symlink("../../devices/virtio0/block/vda/vda2", filepath.Join(s.SysDir, "class", "block", "vda2"))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	d, err := s.Wait(ctx, cmdline.Device{Kind: cmdline.PartLabel, Value: "ROOT-A"}, 10*time.Millisecond)
	if err != nil || d.Name != "vda2" || d.Disk != "vda" {
		t.Fatalf("Wait = %+v, %v", d, err)
	}
}
