package gpt

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/layers/testenv"
)

// The ESP type as it is stored on disk (UEFI 2.x, 5.3.3: the first three fields little-endian).
var espOnDisk = []byte{0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b}

func TestGUID(t *testing.T) {
	g, err := ParseGUID(strings.ToUpper(TypeESP))
	if err != nil {
		t.Fatal(err)
	}
	if g.String() != TypeESP {
		t.Errorf("String = %s, want %s", g, TypeESP)
	}
	b := make([]byte, 16)
	g.Put(b)
	if !bytes.Equal(b, espOnDisk) {
		t.Errorf("on disk % x, want % x", b, espOnDisk)
	}
	if d := DecodeGUID(espOnDisk); d != g {
		t.Errorf("DecodeGUID = %s, want %s", d, g)
	}
	if g.IsZero() || !(GUID{}).IsZero() {
		t.Error("IsZero")
	}
	for _, typ := range []string{TypeESP, TypeRootX86_64, TypeLinuxData} {
		if g, err := ParseGUID(typ); err != nil || g.String() != typ {
			t.Errorf("type %s: %s, %v", typ, g, err)
		}
	}
	for _, bad := range []string{"", "c12a7328f81f11d2ba4b00a0c93ec93b", "c12a7328-f81f-11d2-ba4b-00a0c93ec93g", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b0"} {
		if _, err := ParseGUID(bad); err == nil || !strings.Contains(err.Error(), "malformed GUID") {
			t.Errorf("ParseGUID(%q) = %v, want malformed GUID", bad, err)
		}
	}
}

func TestName(t *testing.T) {
	for _, s := range []string{"", "ROOT-A", "ünïcode €", "emoji 😀 takes two units", strings.Repeat("x", NameUnits)} {
		n, err := NewName(s)
		if err != nil {
			t.Fatalf("NewName(%q): %v", s, err)
		}
		if n.String() != s {
			t.Errorf("NewName(%q).String() = %q", s, n.String())
		}
	}
	if _, err := NewName(strings.Repeat("😀", NameUnits/2) + "x"); err == nil || !strings.Contains(err.Error(), "longer than 36 UTF-16 code units") {
		t.Errorf("a 37-unit name: %v", err)
	}
}

// TestEntryRoundTrip: an entry put and decoded is the same entry, and any 128 bytes decoded and
// put back are the same bytes (so the node agent can rewrite one field of a foreign entry).
func TestEntryRoundTrip(t *testing.T) {
	name, _ := NewName("STATE")
	e := Entry{Type: mustGUID(t, TypeLinuxData), GUID: mustGUID(t, "6a1f5c2e-0b7d-4a8e-9c3b-2d1e0f9a8b7c"), FirstLBA: 34, LastLBA: 1 << 40, Attributes: 1 << 60, Name: name}
	b := bytes.Repeat([]byte{0xa5}, 2*EntrySize)
	e.Put(b)
	if got := DecodeEntry(b); got != e || !got.Used() {
		t.Errorf("round trip %+v, want %+v", got, e)
	}
	if !bytes.Equal(b[EntrySize:], bytes.Repeat([]byte{0xa5}, EntrySize)) {
		t.Error("Put wrote past EntrySize")
	}
	if got := b[56:68]; !bytes.Equal(got, []byte("S\x00T\x00A\x00T\x00E\x00\x00\x00")) {
		t.Errorf("name on disk % x", got)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100 {
		raw := make([]byte, EntrySize)
		for i := range raw {
			raw[i] = byte(r.Uint32())
		}
		out := make([]byte, EntrySize)
		DecodeEntry(raw).Put(out)
		if !bytes.Equal(raw, out) {
			t.Fatalf("decode+put changed\n% x\nto\n% x", raw, out)
		}
	}
	if (Entry{}).Used() {
		t.Error("a zero entry is used")
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{Revision: Revision, Size: HeaderSize, MyLBA: 1, AlternateLBA: 999, FirstUsableLBA: 34, LastUsableLBA: 966,
		DiskGUID: mustGUID(t, "0123abcd-4567-89ef-0123-456789abcdef"), EntriesLBA: 2, NumEntries: DefaultEntries, EntrySize: EntrySize, EntriesCRC: 0xdeadbeef}
	sector := make([]byte, 512)
	if err := h.Put(sector); err != nil {
		t.Fatal(err)
	}
	got, err := DecodeHeader(sector)
	if err != nil || got != h {
		t.Fatalf("round trip %+v, %v; want %+v", got, err, h)
	}
	if !bytes.Equal(sector[HeaderSize:], make([]byte, 512-HeaderSize)) || !bytes.Equal(sector[20:24], make([]byte, 4)) {
		t.Error("Put wrote outside the fields")
	}
	b := h.Backup(967)
	if b.MyLBA != 999 || b.AlternateLBA != 1 || b.EntriesLBA != 967 || b.LastUsableLBA != h.LastUsableLBA || b.EntriesCRC != h.EntriesCRC {
		t.Errorf("Backup = %+v", b)
	}

	// A larger header: the bytes past HeaderSize are kept and covered by the CRC.
	big := bytes.Clone(sector)
	copy(big[HeaderSize:], "vendor extension")
	h.Size = HeaderSize + 16
	if err := h.Put(big); err != nil {
		t.Fatal(err)
	}
	again := bytes.Clone(big)
	dh, err := DecodeHeader(again)
	if err != nil || dh.Size != HeaderSize+16 {
		t.Fatalf("larger header: %+v, %v", dh, err)
	}
	if err := dh.Put(again); err != nil || !bytes.Equal(again, big) {
		t.Errorf("decode+put of a %d-byte header changed it (%v)", dh.Size, err)
	}
	big[HeaderSize+1] ^= 1
	if _, err := DecodeHeader(big); err == nil || !strings.Contains(err.Error(), "header crc") {
		t.Errorf("flipped extension byte: %v", err)
	}
}

func TestDecodeHeaderRejects(t *testing.T) {
	good := make([]byte, 512)
	h := Header{Revision: Revision, Size: HeaderSize, MyLBA: 1, NumEntries: 4, EntrySize: EntrySize}
	if err := h.Put(good); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		mut        func(b []byte) []byte
	}{
		{"signature", `no "EFI PART" signature`, func(b []byte) []byte { b[0] = 'X'; return b }},
		{"crc", "header crc", func(b []byte) []byte { b[40] ^= 1; return b }},
		{"size below 92", "header size 91", func(b []byte) []byte { le.PutUint32(b[12:], 91); return b }},
		{"size beyond the sector", "header size 513", func(b []byte) []byte { le.PutUint32(b[12:], 513); return b }},
		{"short sector", "header sector of 50 bytes", func(b []byte) []byte { return b[:50] }},
	} {
		if _, err := DecodeHeader(tc.mut(bytes.Clone(good))); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	for _, size := range []uint32{91, 513} {
		h.Size = size
		if err := h.Put(make([]byte, 512)); err == nil {
			t.Errorf("Put of header size %d succeeded", size)
		}
	}
}

func TestGeometry(t *testing.T) {
	g, err := NewGeometry(2048, ArraySectors(512, DefaultEntries, EntrySize))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Geometry{Sectors: 2048, FirstUsableLBA: 34, LastUsableLBA: 2014, BackupEntriesLBA: 2015, BackupLBA: 2047}); g != want {
		t.Errorf("geometry %+v, want %+v", g, want)
	}
	if n := ArraySectors(4096, DefaultEntries, EntrySize); n != 4 {
		t.Errorf("128 entries on 4 KiB sectors: %d sectors", n)
	}
	if n := ArraySectors(512, 5, EntrySize); n != 2 {
		t.Errorf("5 entries: %d sectors", n)
	}
	if _, err := NewGeometry(67, 32); err == nil || !strings.Contains(err.Error(), "disk of 67 sectors is too small") {
		t.Errorf("67 sectors: %v", err)
	}
	if _, err := NewGeometry(68, 32); err != nil {
		t.Errorf("68 sectors: %v", err)
	}
}

func TestProtectiveMBR(t *testing.T) {
	mbr := ProtectiveMBR(1 << 20)
	if len(mbr) != MBRSize || mbr[450] != ProtectiveType || le.Uint32(mbr[454:]) != 1 || le.Uint32(mbr[458:]) != 1<<20-1 || mbr[510] != 0x55 || mbr[511] != 0xaa {
		t.Fatalf("protective MBR entry % x", mbr[446:462])
	}
	if le.Uint32(ProtectiveMBR(1 << 40)[458:]) != 0xffffffff {
		t.Error("size not clamped to 32 bits")
	}
	if FixProtectiveMBR(mbr, 1<<20) {
		t.Error("FixProtectiveMBR changed a fitting MBR")
	}
	if !FixProtectiveMBR(mbr, 1<<21) || !bytes.Equal(mbr, ProtectiveMBR(1<<21)) {
		t.Error("FixProtectiveMBR did not make the MBR of the larger disk")
	}
	blank := make([]byte, MBRSize)
	if FixProtectiveMBR(blank, 1<<21) || !bytes.Equal(blank, make([]byte, MBRSize)) {
		t.Error("FixProtectiveMBR touched an MBR without a boot signature")
	}
}

func mustGUID(t *testing.T, s string) GUID {
	t.Helper()
	g, err := ParseGUID(s)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// writeDisk encodes a whole GPT disk of sectors 512-byte sectors with the codec alone.
func writeDisk(t *testing.T, sectors uint64, disk GUID, entries map[int]Entry) string {
	t.Helper()
	g, err := NewGeometry(sectors, ArraySectors(512, DefaultEntries, EntrySize))
	if err != nil {
		t.Fatal(err)
	}
	array := make([]byte, DefaultEntries*EntrySize)
	for i, e := range entries {
		e.Put(array[(i-1)*EntrySize:])
	}
	h := Header{Revision: Revision, Size: HeaderSize, MyLBA: 1, AlternateLBA: g.BackupLBA, FirstUsableLBA: g.FirstUsableLBA,
		LastUsableLBA: g.LastUsableLBA, DiskGUID: disk, EntriesLBA: PrimaryEntriesLBA, NumEntries: DefaultEntries, EntrySize: EntrySize,
		EntriesCRC: ArrayCRC(array)}
	img := make([]byte, sectors*512)
	copy(img, ProtectiveMBR(sectors))
	if err := h.Put(img[512:1024]); err != nil {
		t.Fatal(err)
	}
	copy(img[PrimaryEntriesLBA*512:], array)
	copy(img[g.BackupEntriesLBA*512:], array)
	if err := h.Backup(g.BackupEntriesLBA).Put(img[g.BackupLBA*512:]); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func sgdisk(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("sgdisk", args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sgdisk %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestAgreesWithSgdisk: what the codec writes, sgdisk verifies and reads back field by field;
// what sgdisk writes, the codec decodes.
func TestAgreesWithSgdisk(t *testing.T) {
	testenv.Tools(t, "sgdisk")
	disk := mustGUID(t, "0123abcd-4567-89ef-0123-456789abcdef")
	espName, _ := NewName("ESP")
	stateName, _ := NewName("STATE ünï")
	entries := map[int]Entry{
		1: {Type: mustGUID(t, TypeESP), GUID: mustGUID(t, "11111111-2222-4333-8444-555555555555"), FirstLBA: 2048, LastLBA: 4095, Name: espName},
		3: {Type: mustGUID(t, TypeLinuxData), GUID: mustGUID(t, "6a1f5c2e-0b7d-4a8e-9c3b-2d1e0f9a8b7c"), FirstLBA: 4096, LastLBA: 8191, Attributes: 1 << 2, Name: stateName},
	}
	p := writeDisk(t, 16384, disk, entries)
	if out := sgdisk(t, "-v", p); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	if out := sgdisk(t, "-p", p); !strings.Contains(out, "Disk identifier (GUID): "+strings.ToUpper(disk.String())) {
		t.Errorf("sgdisk -p:\n%s", out)
	}
	for i, e := range entries {
		info := sgdisk(t, "-i", strconv.Itoa(i), p)
		for _, want := range []string{
			"Partition GUID code: " + strings.ToUpper(e.Type.String()),
			"Partition unique GUID: " + strings.ToUpper(e.GUID.String()),
			"First sector: " + strconv.FormatUint(e.FirstLBA, 10),
			"Last sector: " + strconv.FormatUint(e.LastLBA, 10),
			"Attribute flags: " + strings.Repeat("0", 15) + strconv.FormatUint(e.Attributes, 16),
			"Partition name: '" + e.Name.String() + "'",
		} {
			if !strings.Contains(info, want) {
				t.Errorf("sgdisk -i %d lacks %q:\n%s", i, want, info)
			}
		}
	}

	// The other way: sgdisk changes the table, the codec reads the change.
	const newGUID = "0fedcba9-8765-4321-8fed-cba987654321"
	sgdisk(t, "-u", "3:"+newGUID, "-c", "3:ROOT-B", "-t", "3:"+TypeRootX86_64, "-n", "2:8192:+1M", p)
	img, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	h, err := DecodeHeader(img[512:1024])
	if err != nil {
		t.Fatal(err)
	}
	array := img[h.EntriesLBA*512:][:h.NumEntries*h.EntrySize]
	if h.DiskGUID != disk || ArrayCRC(array) != h.EntriesCRC {
		t.Fatalf("header after sgdisk: %+v", h)
	}
	e3 := DecodeEntry(array[2*EntrySize:])
	if e3.GUID.String() != newGUID || e3.Type.String() != TypeRootX86_64 || e3.Name.String() != "ROOT-B" || e3.FirstLBA != 4096 {
		t.Errorf("entry 3 after sgdisk: %+v (%s %s %q)", e3, e3.Type, e3.GUID, e3.Name)
	}
	if e2 := DecodeEntry(array[EntrySize:]); !e2.Used() || e2.FirstLBA != 8192 || e2.LastLBA != 8192+2047 {
		t.Errorf("entry 2 after sgdisk: %+v", e2)
	}
	b, err := DecodeHeader(img[(16384-1)*512:])
	if err != nil || b.MyLBA != 16383 || b.AlternateLBA != 1 || b.EntriesCRC != h.EntriesCRC {
		t.Errorf("backup header after sgdisk: %+v, %v", b, err)
	}
}
