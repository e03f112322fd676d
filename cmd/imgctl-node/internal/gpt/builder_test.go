package gpt

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/builders/disk"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/layers/testenv"
)

// TestReadsBuilderDisk: the node agent reads the disk the builder writes exactly as the builder
// planned it, and grows its STATE partition when the disk is enlarged (as on first boot of a
// larger volume). Both sides go through images/boot/gpt; this checks they agree end to end (the
// test may import the builder: only the agent's own code may not).
func TestReadsBuilderDisk(t *testing.T) {
	opts := disk.Options{DiskSize: 256 << 20, ESPSize: 64 << 20, RootSize: 48 << 20, MinStateSize: 16 << 20,
		Seed: []byte("sha256:feedface"), MTime: time.Unix(1700000000, 0)}
	l, err := disk.Plan(opts, 0)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "disk.raw")
	if err := disk.Write(t.Context(), path, l, nil, nil, 0, opts); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tab, err := Read(f, 512)
	if err != nil {
		t.Fatal(err)
	}
	if tab.DiskGUID != l.DiskGUID || len(tab.Partitions) != len(l.Partitions) {
		t.Fatalf("node reads disk %s with %d partitions, builder planned %s with %d", tab.DiskGUID, len(tab.Partitions), l.DiskGUID, len(l.Partitions))
	}
	for i, want := range l.Partitions {
		got := tab.Partitions[i]
		if got.Number != want.Index || got.Name != want.Name || got.TypeGUID != want.Type || got.GUID != want.GUID ||
			got.FirstLBA != uint64(want.Start/512) || got.LastLBA != uint64((want.Start+want.Size)/512-1) {
			t.Errorf("partition %d: node reads %+v, builder planned %+v", i+1, got, want)
		}
	}

	// Enlarge the disk by 64 MiB: STATE grows to the new end, the backup GPT moves there.
	state, _ := l.Find(boot.LabelState)
	grown := l.DiskSize + 64<<20
	if err := f.Truncate(grown); err != nil {
		t.Fatal(err)
	}
	res, err := Grow(f, 512, grown, state.Index)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(grown/512) - 34; !res.Grown || !res.MovedBackup || res.Partition.LastLBA != want || res.Partition.Name != boot.LabelState {
		t.Errorf("Grow = %+v, want STATE to end at sector %d", res, want)
	}
	testenv.Tools(t, "sgdisk")
	if out := sgdisk(t, "-v", path); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v after Grow:\n%s", out)
	}
}
