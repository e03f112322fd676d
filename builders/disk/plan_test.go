package disk

import (
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/boot/gpt"
)

func TestPlan(t *testing.T) {
	seed := []byte("sha256:0123")
	for _, tc := range []struct {
		name    string
		opts    Options
		root    int64
		wantErr string
		check   func(t *testing.T, l Layout)
	}{
		{
			name: "defaults",
			opts: Options{Seed: seed},
			root: 300 * MiB,
			check: func(t *testing.T, l Layout) {
				if l.DiskSize != 3*GiB {
					t.Errorf("disk size %d", l.DiskSize)
				}
				want := []Partition{
					{Name: "ESP", Type: gpt.TypeESP, Start: 1 * MiB, Size: 128 * MiB, Index: 1},
					{Name: "ROOT-A", Type: gpt.TypeRootX86_64, Start: 129 * MiB, Size: 1 * GiB, Index: 2},
					{Name: "ROOT-B", Type: gpt.TypeRootX86_64, Start: 1153 * MiB, Size: 1 * GiB, Index: 3},
					{Name: "STATE", Type: gpt.TypeLinuxData, Start: 2177 * MiB, Size: 3*GiB - 2178*MiB, Index: 4},
				}
				if len(l.Partitions) != len(want) {
					t.Fatalf("partitions %+v", l.Partitions)
				}
				for i, w := range want {
					got := l.Partitions[i]
					w.GUID = got.GUID
					if got != w {
						t.Errorf("partition %d = %+v, want %+v", i, got, w)
					}
				}
			},
		},
		{
			name: "root image exactly fills ROOT-A",
			opts: Options{Seed: seed, DiskSize: 1 * GiB, ESPSize: 64 * MiB, RootSize: 256 * MiB, MinStateSize: 64 * MiB},
			root: 256 * MiB,
			check: func(t *testing.T, l Layout) {
				p, ok := l.Find(boot.LabelState)
				if !ok || p.Start != 577*MiB || p.Size != 1*GiB-578*MiB {
					t.Errorf("STATE %+v", p)
				}
			},
		},
		{
			name: "smallest disk",
			opts: Options{Seed: seed, DiskSize: 450 * MiB, ESPSize: 64 * MiB, RootSize: 64 * MiB},
			check: func(t *testing.T, l Layout) {
				if p, _ := l.Find(boot.LabelState); p.Size != 256*MiB {
					t.Errorf("STATE %+v", p)
				}
			},
		},
		{
			name:    "root image too big",
			opts:    Options{Seed: seed},
			root:    1*GiB + 1,
			wantErr: "root image is 1024.0 MiB (1073741825 bytes) but ROOT-A is 1024 MiB: raise --disk-size/--root-size",
		},
		{
			name:    "disk too small",
			opts:    Options{Seed: seed, DiskSize: 2 * GiB},
			wantErr: "disk is 2048 MiB but needs at least 2434 MiB",
		},
		{
			name:    "disk one MiB short",
			opts:    Options{Seed: seed, DiskSize: 449 * MiB, ESPSize: 64 * MiB, RootSize: 64 * MiB},
			wantErr: "needs at least 450 MiB",
		},
		{
			name:    "disk size not aligned",
			opts:    Options{Seed: seed, DiskSize: 3*GiB + 512},
			wantErr: "disk size 3221225984 bytes is not a multiple of 1 MiB",
		},
		{
			name:    "root size not aligned",
			opts:    Options{Seed: seed, RootSize: GiB - 4096},
			wantErr: "root size 1073737728 bytes is not a multiple of 1 MiB: fix --root-size",
		},
		{
			name:    "ESP size not aligned",
			opts:    Options{Seed: seed, ESPSize: 100*MiB + 1},
			wantErr: "not a multiple of 1 MiB: fix --esp-size",
		},
		{
			name:    "ESP too small for FAT32",
			opts:    Options{Seed: seed, ESPSize: 16 * MiB},
			wantErr: "ESP is 16 MiB but FAT32 needs at least 33 MiB",
		},
		{
			name:    "negative",
			opts:    Options{Seed: seed, MinStateSize: -1},
			wantErr: "negative",
		},
		{
			name:    "no seed",
			opts:    Options{},
			wantErr: "Seed is required",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := Plan(tc.opts, tc.root)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range l.Partitions {
				if p.Start%MiB != 0 {
					t.Errorf("%s starts at %d, not MiB-aligned", p.Name, p.Start)
				}
			}
			last := l.Partitions[len(l.Partitions)-1]
			if end := last.Start + last.Size; end != l.DiskSize-MiB {
				t.Errorf("last partition ends at %d, disk %d", end, l.DiskSize)
			}
			tc.check(t, l)
		})
	}
}

func TestPlanGUIDs(t *testing.T) {
	a, err := Plan(Options{Seed: []byte("a")}, 0)
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := Plan(Options{Seed: []byte("a")}, 0)
	b, _ := Plan(Options{Seed: []byte("b")}, 0)
	seen := map[string]bool{a.DiskGUID: true}
	for i, p := range a.Partitions {
		if p.GUID != a2.Partitions[i].GUID {
			t.Errorf("%s: GUID not deterministic", p.Name)
		}
		if p.GUID == b.Partitions[i].GUID {
			t.Errorf("%s: same GUID for different seeds", p.Name)
		}
		if seen[p.GUID] {
			t.Errorf("%s: GUID %s reused", p.Name, p.GUID)
		}
		seen[p.GUID] = true
		if p.GUID[14] != '5' || !strings.ContainsRune("89ab", rune(p.GUID[19])) {
			t.Errorf("%s: %s is not a version 5, RFC 4122 variant UUID", p.Name, p.GUID)
		}
	}
	if a.DiskGUID != a2.DiskGUID || a.DiskGUID == b.DiskGUID {
		t.Errorf("disk GUIDs %s %s %s", a.DiskGUID, a2.DiskGUID, b.DiskGUID)
	}
	if fatVolumeID([]byte("a")) == fatVolumeID([]byte("b")) {
		t.Error("same FAT volume ID for different seeds")
	}
}

func TestShortName(t *testing.T) {
	used := map[[11]byte]bool{}
	for _, tc := range []struct {
		long  string
		short string
		lfn   bool
	}{
		{"EFI", "EFI        ", false},
		{"BOOTX64.EFI", "BOOTX64 EFI", false},
		{"loader", "LOADER     ", true},
		{"loader.conf", "LOADER~1CON", true},
		{"Boot.efi", "BOOT    EFI", true},
		{"imgctl-a+3.conf", "IMGCTL~1CON", true},
		{"imgctl-b+3.conf", "IMGCTL~2CON", true},
		{"IMGCTL~1.CON", "IMGCTL~3CON", true},
		{".hidden", "HIDDEN~1   ", true},
		{"a b.tar.gz", "ABTAR~1 GZ ", true},
		{"systemd-bootx64.efi", "SYSTEM~1EFI", true},
	} {
		sn, lfn := shortName(tc.long, used)
		used[sn] = true
		if string(sn[:]) != tc.short || (lfn != nil) != tc.lfn {
			t.Errorf("shortName(%q) = %q, lfn %v; want %q, %v", tc.long, sn, lfn != nil, tc.short, tc.lfn)
		}
	}
}

func TestDOSTime(t *testing.T) {
	d, tm, tenth := dosTime(time.Date(2023, 11, 14, 22, 13, 21, 0, time.UTC))
	if d != uint16(43)<<9|11<<5|14 || tm != 22<<11|13<<5|10 || tenth != 100 {
		t.Errorf("dosTime = %#x %#x %d", d, tm, tenth)
	}
	if d, tm, _ := dosTime(time.Time{}); d != 1<<5|1 || tm != 0 {
		t.Errorf("zero time = %#x %#x", d, tm)
	}
}

func TestFATGeometry(t *testing.T) {
	for _, size := range []int64{fatMinSize(), 64 * MiB, 128 * MiB, 260 * MiB, 261 * MiB, 512 * MiB, 1 * GiB, 9 * GiB} {
		g, err := newFATGeometry(size)
		if err != nil {
			t.Fatalf("%d: %v", size, err)
		}
		used := g.reserved + 2*g.fatSectors + g.clusters*g.secPerClus
		if used > g.totalSectors || g.totalSectors-used >= g.secPerClus {
			t.Errorf("%d: geometry %+v leaves a whole cluster unused", size, g)
		}
		if (g.reserved+2*g.fatSectors)%8 != 0 || g.reserved < 32 || g.reserved >= 48 {
			t.Errorf("%d: data area at sector %d is not 4 KiB aligned (reserved %d)", size, g.reserved+2*g.fatSectors, g.reserved)
		}
		if g.fatSectors*128 < g.clusters+2 {
			t.Errorf("%d: FAT of %d sectors cannot map %d clusters", size, g.fatSectors, g.clusters)
		}
		if g.fatSectors > 1 {
			// one sector less would not map the clusters it frees
			c := (g.totalSectors - g.reserved - 2*(g.fatSectors-1)) / g.secPerClus
			if (g.fatSectors-1)*128 >= c+2 {
				t.Errorf("%d: FAT of %d sectors is larger than needed", size, g.fatSectors)
			}
		}
	}
	if _, err := newFATGeometry(fatMinSize() - MiB); err == nil {
		t.Error("below the minimum: no error")
	}
}
