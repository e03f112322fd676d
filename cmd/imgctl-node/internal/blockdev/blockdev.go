// Package blockdev finds block devices and partitions through sysfs (no udev in the initrd).
package blockdev

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/gpt"
)

// Dev is one block device as sysfs describes it.
type Dev struct {
	Name     string // kernel name: vda2
	Major    uint32
	Minor    uint32
	Type     string // "disk" or "partition"
	PartN    int    // partition number (1-based), 0 for a disk
	PartName string // GPT partition name (PARTLABEL)
	PartUUID string // GPT unique partition GUID, lower case
	Disk     string // parent disk's kernel name for a partition: vda
}

// Path is the device node under devDir.
func (d Dev) Path(devDir string) string { return filepath.Join(devDir, d.Name) }

// Sys reads /sys/class/block and, for GPT partitions whose uevent lacks PARTNAME or PARTUUID
// (kernels before 6.10 never report PARTUUID), the partition tables of their disks.
type Sys struct {
	SysDir string // usually /sys
	DevDir string // usually /dev
}

// Lookup reads one block device by kernel name.
func (s Sys) Lookup(name string) (Dev, error) {
	d, err := readUevent(filepath.Join(s.SysDir, "class", "block", name, "uevent"))
	if err != nil {
		return Dev{}, fmt.Errorf("look up block device %s: %w", name, err)
	}
	if d.Name == "" {
		d.Name = name
	}
	return d, nil
}

// Scan lists all block devices, sorted by name, with PARTNAME/PARTUUID as the uevents give them.
func (s Sys) Scan() ([]Dev, error) {
	classDir := filepath.Join(s.SysDir, "class", "block")
	ents, err := os.ReadDir(classDir)
	if err != nil {
		return nil, fmt.Errorf("scan block devices: %w", err)
	}
	var devs []Dev
	for _, e := range ents {
		d, err := readUevent(filepath.Join(classDir, e.Name(), "uevent"))
		if err != nil {
			continue // raced with removal, or not a device
		}
		if d.Name == "" {
			d.Name = e.Name()
		}
		if d.Type == "partition" {
			if real, err := filepath.EvalSymlinks(filepath.Join(classDir, e.Name())); err == nil {
				d.Disk = filepath.Base(filepath.Dir(real))
			}
		}
		devs = append(devs, d)
	}
	sort.Slice(devs, func(i, j int) bool { return devs[i].Name < devs[j].Name })
	return devs, nil
}

func readUevent(path string) (Dev, error) {
	f, err := os.Open(path)
	if err != nil {
		return Dev{}, err
	}
	defer f.Close()
	var d Dev
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "MAJOR":
			n, _ := strconv.ParseUint(v, 10, 32)
			d.Major = uint32(n)
		case "MINOR":
			n, _ := strconv.ParseUint(v, 10, 32)
			d.Minor = uint32(n)
		case "DEVNAME":
			d.Name = v
		case "DEVTYPE":
			d.Type = v
		case "PARTN":
			d.PartN, _ = strconv.Atoi(v)
		case "PARTNAME":
			d.PartName = v
		case "PARTUUID":
			d.PartUUID = strings.ToLower(v)
		}
	}
	if err := sc.Err(); err != nil {
		return Dev{}, err
	}
	return d, nil
}

// FillFromGPT completes PartName/PartUUID from each disk's GPT, best effort.
func (s Sys) FillFromGPT(devs []Dev) {
	tables := map[string]*gpt.Table{}
	byName := map[string]Dev{}
	for _, d := range devs {
		byName[d.Name] = d
	}
	for i := range devs {
		d := &devs[i]
		if d.Type != "partition" || d.Disk == "" || d.PartN == 0 || (d.PartUUID != "" && d.PartName != "") {
			continue
		}
		t, seen := tables[d.Disk]
		if !seen {
			t, _ = s.readTable(byName[d.Disk])
			tables[d.Disk] = t
		}
		if t == nil {
			continue
		}
		for _, p := range t.Partitions {
			if p.Number == d.PartN {
				if d.PartUUID == "" {
					d.PartUUID = p.GUID
				}
				if d.PartName == "" {
					d.PartName = p.Name
				}
			}
		}
	}
}

func (s Sys) readTable(disk Dev) (*gpt.Table, error) {
	if disk.Name == "" {
		return nil, errors.New("unknown disk")
	}
	p, err := s.EnsureNode(disk)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ss, err := s.SectorSize(disk.Name)
	if err != nil {
		return nil, err
	}
	return gpt.Read(f, ss)
}

// SectorSize is the logical sector size of a disk.
func (s Sys) SectorSize(disk string) (int, error) {
	b, err := os.ReadFile(filepath.Join(s.SysDir, "class", "block", disk, "queue", "logical_block_size"))
	if err != nil {
		return 0, fmt.Errorf("sector size of %s: %w", disk, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 512 {
		return 0, fmt.Errorf("sector size of %s: bad value %q", disk, b)
	}
	return n, nil
}

// Size is the size of a device in bytes (sysfs counts 512-byte sectors whatever the sector size).
func (s Sys) Size(name string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(s.SysDir, "class", "block", name, "size"))
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", name, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", name, err)
	}
	return n * 512, nil
}

// Match returns the devices that spec names.
func Match(devs []Dev, spec cmdline.Device) []Dev {
	var out []Dev
	for _, d := range devs {
		var ok bool
		switch spec.Kind {
		case cmdline.PartLabel:
			ok = d.Type == "partition" && d.PartName == spec.Value
		case cmdline.PartUUID:
			ok = d.Type == "partition" && d.PartUUID == spec.Value
		case cmdline.Path:
			ok = d.Name == strings.TrimPrefix(spec.Value, "/dev/")
		}
		if ok {
			out = append(out, d)
		}
	}
	return out
}

// ErrNotFound is returned by Wait when no device matches before the timeout.
var ErrNotFound = errors.New("device not found")

// Wait polls sysfs every poll until exactly one device matches spec, or ctx ends.
// A spec matching two devices (the same PARTLABEL on two disks) is an error.
func (s Sys) Wait(ctx context.Context, spec cmdline.Device, poll time.Duration) (Dev, error) {
	t := time.NewTicker(poll)
	defer t.Stop()
	var last []Dev
	for {
		devs, err := s.Scan()
		if err == nil {
			last = devs
			m := Match(devs, spec)
			if len(m) == 0 && spec.Kind != cmdline.Path {
				s.FillFromGPT(devs) // uevents before Linux 6.10 carry no PARTUUID
				m = Match(devs, spec)
			}
			switch len(m) {
			case 1:
				return m[0], nil
			case 0:
			default:
				names := make([]string, len(m))
				for i, d := range m {
					names[i] = d.Name
				}
				return Dev{}, fmt.Errorf("%s is ambiguous: %s", spec, strings.Join(names, ", "))
			}
		}
		select {
		case <-ctx.Done():
			return Dev{}, fmt.Errorf("%w: %s (seen: %s): %w", ErrNotFound, spec, describe(last), ctx.Err())
		case <-t.C:
		}
	}
}

func describe(devs []Dev) string {
	if len(devs) == 0 {
		return "no block devices"
	}
	parts := make([]string, len(devs))
	for i, d := range devs {
		parts[i] = d.Name
		if d.PartName != "" {
			parts[i] += "[" + d.PartName + "]"
		}
	}
	return strings.Join(parts, " ")
}

// EnsureNode creates the device node if devtmpfs did not, and returns its path.
func (s Sys) EnsureNode(d Dev) (string, error) {
	p := d.Path(s.DevDir)
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == unix.Mkdev(d.Major, d.Minor) {
			return p, nil
		}
		return "", fmt.Errorf("%s exists but is not block device %d:%d", p, d.Major, d.Minor)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("create device node: %w", err)
	}
	if err := unix.Mknod(p, unix.S_IFBLK|0o600, int(unix.Mkdev(d.Major, d.Minor))); err != nil && !errors.Is(err, unix.EEXIST) {
		return "", fmt.Errorf("create device node %s: %w", p, err)
	}
	return p, nil
}
