package dm

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/layers/testenv"
)

// The offsets written out in layout.go agree with the C layout x/sys generated from
// linux/dm-ioctl.h (an independent copy of the header's struct).
func TestLayoutMatchesKernelHeader(t *testing.T) {
	var h unix.DmIoctl
	for _, c := range []struct {
		field     string
		ours, cgo uintptr
	}{
		{"sizeof(struct dm_ioctl)", HeaderSize, unsafe.Sizeof(h)},
		{"version", offVersion, unsafe.Offsetof(h.Version)},
		{"data_size", offDataSize, unsafe.Offsetof(h.Data_size)},
		{"data_start", offDataStart, unsafe.Offsetof(h.Data_start)},
		{"target_count", offTargetCount, unsafe.Offsetof(h.Target_count)},
		{"open_count", offOpenCount, unsafe.Offsetof(h.Open_count)},
		{"flags", offFlags, unsafe.Offsetof(h.Flags)},
		{"event_nr", offEventNr, unsafe.Offsetof(h.Event_nr)},
		{"dev", offDev, unsafe.Offsetof(h.Dev)},
		{"name", offName, unsafe.Offsetof(h.Name)},
		{"name length", nameLen, unsafe.Sizeof(h.Name)},
		{"uuid", offUUID, unsafe.Offsetof(h.Uuid)},
		{"uuid length", uuidLen, unsafe.Sizeof(h.Uuid)},
	} {
		if c.ours != c.cgo {
			t.Errorf("dm_ioctl %s: ours %d, linux/dm-ioctl.h %d", c.field, c.ours, c.cgo)
		}
	}
	var s unix.DmTargetSpec
	for _, c := range []struct {
		field     string
		ours, cgo uintptr
	}{
		{"sizeof(struct dm_target_spec)", SpecSize, unsafe.Sizeof(s)},
		{"sector_start", offSectorStart, unsafe.Offsetof(s.Sector_start)},
		{"length", offLength, unsafe.Offsetof(s.Length)},
		{"status", offStatus, unsafe.Offsetof(s.Status)},
		{"next", offNext, unsafe.Offsetof(s.Next)},
		{"target_type", offTargetType, unsafe.Offsetof(s.Target_type)},
		{"target_type length", typeLen, unsafe.Sizeof(s.Target_type)},
	} {
		if c.ours != c.cgo {
			t.Errorf("dm_target_spec %s: ours %d, linux/dm-ioctl.h %d", c.field, c.ours, c.cgo)
		}
	}
	if HeaderSize != 312 || SpecSize != 40 {
		t.Errorf("HeaderSize %d, SpecSize %d: want 312 and 40", HeaderSize, SpecSize)
	}
}

func requireLittleEndian(t *testing.T) {
	t.Helper()
	if ne.Uint16([]byte{1, 0}) != 1 {
		t.Fatal("the golden bytes are little-endian (amd64, arm64): this machine is not")
	}
}

// golden builds a byte slice from (offset, hex) pieces over zeros.
func golden(t *testing.T, size int, pieces ...any) []byte {
	t.Helper()
	b := make([]byte, size)
	for i := 0; i < len(pieces); i += 2 {
		off := pieces[i].(int)
		var v []byte
		switch p := pieces[i+1].(type) {
		case string:
			var err error
			if v, err = hex.DecodeString(strings.ReplaceAll(p, " ", "")); err != nil {
				t.Fatal(err)
			}
		case []byte:
			v = p
		}
		copy(b[off:], v)
	}
	return b
}

func TestHeaderGoldenBytes(t *testing.T) {
	requireLittleEndian(t)
	h := Header{
		Version: [3]uint32{4, 0, 0}, DataSize: 16384, DataStart: 312, TargetCount: 1, OpenCount: -1,
		Flags: unix.DM_READONLY_FLAG, EventNr: 7, Dev: unix.Mkdev(253, 0x1234), Name: "imgctl-root", UUID: "u",
	}
	buf := bytes.Repeat([]byte{0xee}, HeaderSize) // MarshalTo must clear what it does not set
	if err := h.MarshalTo(buf); err != nil {
		t.Fatal(err)
	}
	want := golden(t, HeaderSize,
		0, "04000000 00000000 00000000", // version
		12, "00400000", // data_size 16384
		16, "38010000", // data_start 312
		20, "01000000", // target_count
		24, "ffffffff", // open_count -1
		28, "01000000", // DM_READONLY_FLAG
		32, "07000000", // event_nr
		// 36: padding
		40, "34fd200100000000", // huge_encode_dev(253, 0x1234): minor&0xff | major<<8 | (minor&~0xff)<<12
		48, []byte("imgctl-root"),
		176, []byte("u"),
	)
	if !bytes.Equal(buf, want) {
		t.Errorf("header bytes\n got %x\nwant %x", buf, want)
	}
	back, err := UnmarshalHeader(buf)
	if err != nil {
		t.Fatal(err)
	}
	if back != h {
		t.Errorf("round trip: got %+v, want %+v", back, h)
	}
}

func TestHeaderRefusesWhatDoesNotFit(t *testing.T) {
	buf := make([]byte, HeaderSize)
	for _, c := range []struct {
		h    Header
		want string
	}{
		{Header{Name: strings.Repeat("n", 128)}, "name"},
		{Header{Name: "a\x00b"}, "NUL"},
		{Header{UUID: strings.Repeat("u", 129)}, "uuid"},
	} {
		if err := c.h.MarshalTo(buf); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("MarshalTo(%q, %q): %v, want an error naming %s", c.h.Name, c.h.UUID, err, c.want)
		}
	}
	if err := (Header{Name: strings.Repeat("n", 127)}).MarshalTo(buf); err != nil {
		t.Errorf("127-byte name: %v", err)
	}
	if err := (Header{}).MarshalTo(make([]byte, HeaderSize-1)); err == nil {
		t.Error("MarshalTo into a short buffer: no error")
	}
	if _, err := UnmarshalHeader(make([]byte, HeaderSize-1)); err == nil {
		t.Error("UnmarshalHeader of a short buffer: no error")
	}
}

func TestTargetsGoldenBytes(t *testing.T) {
	requireLittleEndian(t)
	// 40-byte spec + "abc\0" = 44, padded to 48; + "\0" = 41, padded to 48.
	got, err := MarshalTargets([]Target{
		{Start: 0, Length: 8, Type: "verity", Params: "abc"},
		{Start: 8, Length: 16, Type: "zero"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := golden(t, 96,
		0, "0000000000000000", 8, "0800000000000000", 16, "00000000", 20, "30000000", 24, []byte("verity"), 40, []byte("abc\x00"),
		48, "0800000000000000", 56, "1000000000000000", 64, "00000000", 68, "30000000", 72, []byte("zero"), 88, "00",
	)
	if !bytes.Equal(got, want) {
		t.Errorf("targets\n got %x\nwant %x", got, want)
	}
	for _, bad := range [][]Target{
		nil,
		{{Type: ""}},
		{{Type: strings.Repeat("t", 16)}},
		{{Type: "verity", Params: "a\x00b"}},
	} {
		if _, err := MarshalTargets(bad); err == nil {
			t.Errorf("MarshalTargets(%+v): no error", bad)
		}
	}
}

// statusAnswer encodes targets as DM_TABLE_STATUS answers them: next counts from the data
// area's start.
func statusAnswer(targets ...Target) []byte {
	var out []byte
	for _, t := range targets {
		spec := make([]byte, alignUp(SpecSize+len(t.Params)+1))
		ne.PutUint64(spec[offSectorStart:], t.Start)
		ne.PutUint64(spec[offLength:], t.Length)
		copy(spec[offTargetType:], t.Type)
		copy(spec[SpecSize:], t.Params)
		ne.PutUint32(spec[offNext:], uint32(len(out)+len(spec)))
		out = append(out, spec...)
	}
	return out
}

func TestUnmarshalTargets(t *testing.T) {
	in := []Target{{0, 8, "verity", "V"}, {8, 16, "linear", "8:1 0"}, {24, 8, "verity", "C -"}}
	got, err := UnmarshalTargets(statusAnswer(in...), 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0] != in[0] || got[1] != in[1] || got[2] != in[2] {
		t.Errorf("got %+v, want %+v", got, in)
	}
	one := statusAnswer(Target{0, 8, "verity", "V"})
	for name, c := range map[string]struct {
		data  []byte
		count uint32
		want  string
	}{
		"more targets than data": {one, 2, "outside"},
		"no NUL":                 {one[:SpecSize+1], 1, "NUL"},
		"short spec":             {one[:SpecSize-1], 1, "outside"},
		"next going backwards": {func() []byte {
			b := statusAnswer(Target{0, 8, "verity", "V"}, Target{8, 8, "verity", "V"})
			ne.PutUint32(b[offNext:], 0)
			return b
		}(), 2, "does not move"},
	} {
		if _, err := UnmarshalTargets(c.data, c.count); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

var rootHash = bytes.Repeat([]byte{0xab}, 32)

func TestVerityTarget(t *testing.T) {
	v := Verity{Dev: unix.Mkdev(254, 2), DataBlocks: 1000, HashOffset: 1000 * 4096, RootHash: rootHash, Salt: []byte{1, 2}}
	got, err := v.Target()
	if err != nil {
		t.Fatal(err)
	}
	want := Target{Start: 0, Length: 8000, Type: "verity",
		Params: "1 254:2 254:2 4096 4096 1000 1001 sha256 " + strings.Repeat("ab", 32) + " 0102"}
	if got != want {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	v.Salt = nil
	if got, _ := v.Target(); !strings.HasSuffix(got.Params, " -") {
		t.Errorf("no salt: params %q, want - as the salt", got.Params)
	}
	for name, c := range map[string]struct {
		mod  func(*Verity)
		want string
	}{
		"no blocks":       {func(v *Verity) { v.DataBlocks = 0 }, "no data blocks"},
		"odd offset":      {func(v *Verity) { v.HashOffset = 4097 }, "multiple of 4096"},
		"offset in data":  {func(v *Verity) { v.HashOffset = 999 * 4096 }, "inside the 1000 data blocks"},
		"short root hash": {func(v *Verity) { v.RootHash = rootHash[:31] }, "31 bytes"},
	} {
		w := v
		c.mod(&w)
		if _, err := w.Target(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}

func TestParseVerityStatus(t *testing.T) {
	for params, want := range map[string]VerityState{"V": VerityOK, "C": VerityCorrupt, "V -": VerityOK, "C 3": VerityCorrupt} {
		if got, err := ParseVerityStatus(Target{Type: "verity", Params: params}); err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", params, got, err, want)
		}
	}
	if _, err := ParseVerityStatus(Target{Type: "linear", Params: "V"}); err == nil {
		t.Error("linear target: no error")
	}
	if _, err := ParseVerityStatus(Target{Type: "verity", Params: "X"}); err == nil {
		t.Error("status X: no error")
	}
}

// fakeKernel answers dm ioctls from a table of devices, recording the requests.
type fakeKernel struct {
	t       *testing.T
	devs    map[string]*fakeDev
	next    uint32
	calls   []string
	fail    map[uint]error // request → errno
	version [3]uint32
}

type fakeDev struct {
	minor  uint32
	table  []Target
	live   bool
	status string
	ro     bool
}

func newFakeKernel(t *testing.T) *fakeKernel {
	return &fakeKernel{t: t, devs: map[string]*fakeDev{}, fail: map[uint]error{}, version: [3]uint32{4, 48, 0}}
}

var reqNames = map[uint]string{
	unix.DM_VERSION: "version", unix.DM_DEV_CREATE: "create", unix.DM_TABLE_LOAD: "load",
	unix.DM_DEV_SUSPEND: "resume", unix.DM_TABLE_STATUS: "status", unix.DM_DEV_REMOVE: "remove",
}

func (k *fakeKernel) ioctl(_ uintptr, req uint, buf []byte) error {
	h, err := UnmarshalHeader(buf)
	if err != nil {
		k.t.Fatalf("request: %v", err)
	}
	if h.Version[0] != 4 || h.DataStart != HeaderSize || int(h.DataSize) != len(buf) {
		k.t.Fatalf("request header %+v for a %d-byte buffer", h, len(buf))
	}
	k.calls = append(k.calls, reqNames[req]+" "+h.Name)
	if err := k.fail[req]; err != nil {
		return err
	}
	d := k.devs[h.Name]
	if req != unix.DM_VERSION && req != unix.DM_DEV_CREATE && d == nil {
		return unix.ENXIO
	}
	// With nothing to return, the kernel sets data_size to offsetof(struct dm_ioctl, data): 305.
	out := Header{Version: k.version, DataSize: offUUID + uuidLen, DataStart: HeaderSize, Name: h.Name}
	switch req {
	case unix.DM_VERSION:
	case unix.DM_DEV_CREATE:
		if d != nil {
			return unix.EBUSY
		}
		d = &fakeDev{minor: k.next, status: "V"}
		k.next++
		k.devs[h.Name] = d
	case unix.DM_TABLE_LOAD:
		ts, err := unmarshalLoad(buf[HeaderSize:], h.TargetCount)
		if err != nil {
			k.t.Fatalf("load: %v", err)
		}
		d.table, d.ro = ts, h.Flags&unix.DM_READONLY_FLAG != 0
	case unix.DM_DEV_SUSPEND:
		if d.table == nil {
			return unix.EINVAL
		}
		d.live = true
	case unix.DM_TABLE_STATUS:
		var ans []Target
		for _, t := range d.table {
			ans = append(ans, Target{t.Start, t.Length, t.Type, d.status})
		}
		data := statusAnswer(ans...)
		copy(buf[HeaderSize:], data)
		out.DataSize = uint32(HeaderSize + len(data))
		out.TargetCount = uint32(len(ans))
	case unix.DM_DEV_REMOVE:
		delete(k.devs, h.Name)
	}
	if d != nil {
		out.Dev = unix.Mkdev(253, d.minor)
	}
	return out.MarshalTo(buf)
}

// unmarshalLoad decodes a table load's data area as the kernel does: next is relative to the
// previous spec.
func unmarshalLoad(data []byte, count uint32) ([]Target, error) {
	var out []Target
	off := 0
	for range count {
		spec := data[off:]
		p := spec[SpecSize:]
		out = append(out, Target{ne.Uint64(spec), ne.Uint64(spec[8:]), cString(spec[24:40]), cString(p)})
		off += int(ne.Uint32(spec[offNext:]))
	}
	return out, nil
}

func fakeControl(t *testing.T) (*Control, *fakeKernel) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	k := newFakeKernel(t)
	return &Control{path: "/dev/mapper/control", f: f, ioctl: k.ioctl}, k
}

func TestMapVerityAndStatus(t *testing.T) {
	c, k := fakeControl(t)
	v := Verity{Dev: unix.Mkdev(254, 2), DataBlocks: 10, HashOffset: 40960, RootHash: rootHash}
	ver, err := c.Version()
	if err != nil || ver != k.version {
		t.Fatalf("Version: %v, %v", ver, err)
	}
	dev, err := c.MapVerity("imgctl-root", v)
	if err != nil {
		t.Fatal(err)
	}
	if unix.Major(dev) != 253 || unix.Minor(dev) != 0 {
		t.Errorf("dev %d:%d, want 253:0", unix.Major(dev), unix.Minor(dev))
	}
	d := k.devs["imgctl-root"]
	want, _ := v.Target()
	if !d.live || !d.ro || len(d.table) != 1 || d.table[0] != want {
		t.Errorf("device %+v, want live, read-only, table %+v", d, want)
	}
	if st, err := c.VerityState("imgctl-root"); err != nil || st != VerityOK {
		t.Errorf("VerityState: %q, %v", st, err)
	}
	d.status = "C"
	if st, err := c.VerityState("imgctl-root"); err != nil || st != VerityCorrupt {
		t.Errorf("VerityState after corruption: %q, %v", st, err)
	}
	if err := c.Remove("imgctl-root"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(k.calls, ","); got != "version ,create imgctl-root,load imgctl-root,resume imgctl-root,status imgctl-root,status imgctl-root,remove imgctl-root" {
		t.Errorf("calls %s", got)
	}
}

func TestMapVerityRemovesTheDeviceWhenTheLoadFails(t *testing.T) {
	c, k := fakeControl(t)
	k.fail[unix.DM_TABLE_LOAD] = unix.EINVAL
	_, err := c.MapVerity("imgctl-root", Verity{Dev: unix.Mkdev(254, 2), DataBlocks: 10, HashOffset: 40960, RootHash: rootHash})
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), `device-mapper load "imgctl-root": /dev/mapper/control`) {
		t.Errorf("error %v, want the load's EINVAL naming the device", err)
	}
	if _, ok := k.devs["imgctl-root"]; ok {
		t.Error("the device is still there after the failed load")
	}
}

func TestControlErrors(t *testing.T) {
	c, k := fakeControl(t)
	if _, err := c.Resume("nope"); !errors.Is(err, unix.ENXIO) || !strings.Contains(err.Error(), `resume "nope"`) {
		t.Errorf("resume of a missing device: %v", err)
	}
	if _, err := c.Create("x", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create("x", ""); !errors.Is(err, unix.EBUSY) {
		t.Errorf("second create: %v, want EBUSY", err)
	}
	if _, err := c.VerityState("x"); err == nil || !strings.Contains(err.Error(), "0 targets") {
		t.Errorf("status without a table: %v", err)
	}
	if _, err := c.Create(strings.Repeat("n", 200), ""); err == nil || !strings.Contains(err.Error(), "at most 127") {
		t.Errorf("long name: %v", err)
	}
	k.version = [3]uint32{5, 0, 0}
	if _, err := c.Version(); err == nil || !strings.Contains(err.Error(), "kernel speaks 5.0.0, want 4.x") {
		t.Errorf("version 5: %v", err)
	}
}

func TestStatusRefusesAFullBuffer(t *testing.T) {
	c, _ := fakeControl(t)
	c.ioctl = func(_ uintptr, _ uint, buf []byte) error {
		return Header{Version: ioctlVersion, DataStart: HeaderSize, DataSize: HeaderSize, Flags: unix.DM_BUFFER_FULL_FLAG}.MarshalTo(buf)
	}
	if _, err := c.Status("x"); err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Errorf("full buffer: %v", err)
	}
	c.ioctl = func(_ uintptr, _ uint, buf []byte) error {
		return Header{Version: ioctlVersion, DataStart: HeaderSize, DataSize: 1 << 20}.MarshalTo(buf)
	}
	if _, err := c.Status("x"); err == nil || !strings.Contains(err.Error(), "outside the") {
		t.Errorf("data size past the buffer: %v", err)
	}
}

func TestOpenCreatesTheControlNode(t *testing.T) {
	testenv.Root(t, "mknod of /dev/mapper/control in a temporary directory")
	dir := t.TempDir()
	c, err := Open(dir)
	if err == nil {
		c.Close() // this kernel has device-mapper
	}
	var st unix.Stat_t
	p := filepath.Join(dir, "mapper", "control")
	if err := unix.Stat(p, &st); err != nil {
		t.Fatalf("Open did not create %s: %v", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 10 || unix.Minor(st.Rdev) != 236 {
		t.Errorf("%s: mode %o rdev %d:%d, want char 10:236", p, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
}
