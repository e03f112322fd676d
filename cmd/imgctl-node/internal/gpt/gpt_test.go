package gpt

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/testenv"
)

const mib = 1 << 20

func sgdisk(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("sgdisk", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("sgdisk %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// makeDisk creates a GPT disk image of size bytes with sgdisk and the given partitions
// (sgdisk -n specs, names).
func makeDisk(t *testing.T, size int64, parts [][2]string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	args := []string{"-o"}
	for i, pt := range parts {
		n := i + 1
		args = append(args, "-n", strings.Replace(pt[0], "N", itoa(n), 1), "-c", itoa(n)+":"+pt[1])
	}
	sgdisk(t, append(args, p)...)
	return p
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestGrow(t *testing.T) {
	testenv.Tools(t, "sgdisk")
	three := [][2]string{{"N:0:+8M", "ESP"}, {"N:0:+16M", "ROOT-A"}, {"N:0:+4M", "STATE"}}
	tests := []struct {
		name      string
		size      int64
		grownSize int64
		parts     [][2]string
		number    int
		wantErr   string
		wantGrown bool
		wantMoved bool
	}{
		{name: "enlarged disk", size: 64 * mib, grownSize: 96 * mib, parts: three, number: 3, wantGrown: true, wantMoved: true},
		{name: "same disk, small last partition", size: 64 * mib, grownSize: 64 * mib, parts: three, number: 3, wantGrown: true},
		{name: "odd size", size: 64 * mib, grownSize: 96*mib + 3*512, parts: three, number: 3, wantGrown: true, wantMoved: true},
		{name: "already full", size: 64 * mib, grownSize: 64 * mib, parts: [][2]string{{"N:0:+8M", "ESP"}, {"N:0:0", "STATE"}}, number: 2},
		{name: "not last", size: 64 * mib, grownSize: 96 * mib, parts: three, number: 2, wantErr: "not the last"},
		{name: "missing partition", size: 64 * mib, grownSize: 96 * mib, parts: three, number: 7, wantErr: "no partition 7"},
		{name: "shrunk disk", size: 64 * mib, grownSize: 32 * mib, parts: [][2]string{{"N:0:+8M", "ESP"}}, number: 1, wantErr: "shrank"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := makeDisk(t, tc.size, tc.parts)
			if err := os.Truncate(p, tc.grownSize); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			res, err := Grow(f, 512, tc.grownSize, tc.number)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Grow error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Grow: %v", err)
			}
			if res.Grown != tc.wantGrown || res.MovedBackup != tc.wantMoved {
				t.Errorf("Grown=%v MovedBackup=%v, want %v %v", res.Grown, res.MovedBackup, tc.wantGrown, tc.wantMoved)
			}
			sectors := uint64(tc.grownSize / 512)
			if want := sectors - 34; res.Partition.LastLBA != want {
				t.Errorf("last LBA = %d, want %d", res.Partition.LastLBA, want)
			}
			out := sgdisk(t, "-v", p)
			if !strings.Contains(out, "No problems found") {
				t.Errorf("sgdisk -v:\n%s", out)
			}
			// sgdisk's own view of the partition end.
			info := sgdisk(t, "-i", itoa(tc.number), p)
			if want := "Last sector: " + uitoa(sectors-34); !strings.Contains(info, want) {
				t.Errorf("sgdisk -i missing %q:\n%s", want, info)
			}
			// Idempotent.
			res2, err := Grow(f, 512, tc.grownSize, tc.number)
			if err != nil || res2.Changed() {
				t.Errorf("second Grow: changed=%v err=%v", res2.Changed(), err)
			}
			tab, err := Read(f, 512)
			if err != nil {
				t.Fatal(err)
			}
			if len(tab.Partitions) != len(tc.parts) {
				t.Fatalf("partitions = %d, want %d", len(tab.Partitions), len(tc.parts))
			}
			for i, pt := range tab.Partitions {
				if pt.Name != tc.parts[i][1] || pt.Number != i+1 {
					t.Errorf("partition %d = %d %q, want %q", i, pt.Number, pt.Name, tc.parts[i][1])
				}
			}
		})
	}
}

func uitoa(n uint64) string { return strconv.FormatUint(n, 10) }

func TestReadGUIDs(t *testing.T) {
	testenv.Tools(t, "sgdisk")
	p := makeDisk(t, 8*mib, [][2]string{{"N:0:+1M", "ROOT-A"}})
	const guid = "0fc63daf-8483-4772-8e79-3d69d8477de4"
	const part = "6a1f5c2e-0b7d-4a8e-9c3b-2d1e0f9a8b7c"
	sgdisk(t, "-t", "1:"+guid, "-u", "1:"+part, p)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tab, err := Read(readOnly{f}, 512)
	if err != nil {
		t.Fatal(err)
	}
	got := tab.Partitions[0]
	if got.TypeGUID != guid || got.GUID != part || got.Name != "ROOT-A" || got.FirstLBA != 2048 {
		t.Errorf("partition = %+v", got)
	}
}

func TestReadNoGPT(t *testing.T) {
	p := filepath.Join(t.TempDir(), "zero")
	if err := os.WriteFile(p, make([]byte, 1*mib), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Read(readOnly{f}, 512); !errors.Is(err, ErrNoGPT) {
		t.Fatalf("err = %v, want ErrNoGPT", err)
	}
}

type readOnly struct{ *os.File }

func (readOnly) WriteAt([]byte, int64) (int, error) { return 0, errors.New("read-only") }
