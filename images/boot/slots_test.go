package boot

import (
	"reflect"
	"strings"
	"testing"
)

func TestSlotNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{SlotDir(SlotA), "imgctl/a"},
		{SlotDir(SlotB), "imgctl/b"},
		{SlotLabel("a"), LabelRootA},
		{SlotLabel("b"), LabelRootB},
		{SlotLabel("c"), ""},
		{SlotLabel("A"), ""},
		{OtherSlot("a"), "b"},
		{OtherSlot("b"), "a"},
		{OtherSlot(""), ""},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestEntryFile(t *testing.T) {
	for _, tc := range []struct {
		slot        string
		left, done  int
		counting    bool
		want        string
		parsed      EntryName
		roundTrips  bool
		description string
	}{
		{"a", BootTries, 0, true, "imgctl-a+3.conf", EntryName{"a", true, 3, 0}, true, "new entry"},
		{"b", 2, 1, true, "imgctl-b+2-1.conf", EntryName{"b", true, 2, 1}, true, "after one boot"},
		{"a", 0, 3, true, "imgctl-a+0-3.conf", EntryName{"a", true, 0, 3}, true, "used up"},
		{"b", 0, 0, false, "imgctl-b.conf", EntryName{"b", false, 0, 0}, true, "blessed"},
		{"a", 7, 5, false, "imgctl-a.conf", EntryName{"a", false, 0, 0}, false, "blessed ignores counters"},
	} {
		got := EntryFile(tc.slot, tc.left, tc.done, tc.counting)
		if got != tc.want {
			t.Errorf("%s: EntryFile = %q, want %q", tc.description, got, tc.want)
		}
		p, ok := ParseEntryFile(got)
		if !ok || p != tc.parsed {
			t.Errorf("%s: ParseEntryFile(%q) = %+v, %v; want %+v", tc.description, got, p, ok, tc.parsed)
		}
		if tc.roundTrips && EntryFile(p.Slot, p.Left, p.Done, p.Counting) != got {
			t.Errorf("%s: %q does not round-trip", tc.description, got)
		}
	}
}

func TestParseEntryFile(t *testing.T) {
	good := map[string]EntryName{
		"imgctl-a+3-0.conf":   {"a", true, 3, 0},
		"imgctl-b+12-34.conf": {"b", true, 12, 34},
		"imgctl-a+0.conf":     {"a", true, 0, 0},
	}
	for name, want := range good {
		if got, ok := ParseEntryFile(name); !ok || got != want {
			t.Errorf("ParseEntryFile(%q) = %+v, %v; want %+v", name, got, ok, want)
		}
	}
	for _, name := range []string{
		"", "imgctl-a", "imgctl-a.con", "imgctl-c.conf", "imgctl-A.conf", "imgctl-.conf", "imgctl-ab.conf",
		"imgctl-a+.conf", "imgctl-a+-1.conf", "imgctl-a+3-.conf", "imgctl-a+x.conf", "imgctl-a+3-x.conf",
		"imgctl-a+ 3.conf", "imgctl-a++3.conf", "imgctl-a+3-1-1.conf", "imgctl-a+1234567890.conf",
		"other-a.conf", "loader.conf", "imgctl-a.conf.tmp",
	} {
		if got, ok := ParseEntryFile(name); ok {
			t.Errorf("ParseEntryFile(%q) = %+v, want not a slot entry", name, got)
		}
	}
}

func TestEntryMarshal(t *testing.T) {
	e := Entry{Slot: "a", Version: 1700000000, Cmdline: []string{"console=ttyS0", "imgctl.root=PARTUUID=x"}}
	want := "title imgctl node (slot A)\nsort-key imgctl\nversion 1700000000\nlinux /imgctl/a/vmlinuz\ninitrd /imgctl/a/initrd.img\noptions console=ttyS0 imgctl.root=PARTUUID=x\n"
	if got := string(e.Marshal()); got != want {
		t.Errorf("Marshal:\n%s\nwant:\n%s", got, want)
	}
	got, err := ParseEntry(e.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	e.Title = "imgctl node (slot A)"
	if !reflect.DeepEqual(got, e) {
		t.Errorf("ParseEntry = %+v, want %+v", got, e)
	}
	b := Entry{Slot: "b", Version: 7, Title: "v2"}
	if s := string(b.Marshal()); !strings.HasPrefix(s, "title v2\n") || !strings.Contains(s, "linux /imgctl/b/vmlinuz\n") || !strings.Contains(s, "initrd /imgctl/b/initrd.img\n") {
		t.Errorf("Marshal slot b:\n%s", s)
	}
}

func TestParseEntryErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"title x\nlinux /imgctl/a/vmlinuz\n", "no version line"},
		{"version 3\n", "no linux line"},
		{"version x3\nlinux /imgctl/a/vmlinuz\n", `version "x3": want a decimal number`},
		{"version 3\nlinux /vmlinuz\n", `linux "/vmlinuz": want /imgctl/a/vmlinuz or /imgctl/b/vmlinuz`},
	} {
		_, err := ParseEntry([]byte(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseEntry(%q) = %v, want %q", tc.text, err, tc.want)
		}
	}
	// systemd-boot's syntax: comments, blank lines and unknown keys are fine.
	e, err := ParseEntry([]byte("# comment\n\ntitle  t \nversion 12\nmachine-id x\nlinux /imgctl/b/vmlinuz\noptions a b\noptions c\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Entry{Slot: "b", Version: 12, Title: "t", Cmdline: []string{"a", "b", "c"}}); !reflect.DeepEqual(e, want) {
		t.Errorf("ParseEntry = %+v, want %+v", e, want)
	}
}

func TestSlotCmdline(t *testing.T) {
	spec := []string{"console=ttyS0", "quiet"}
	specCopy := append([]string{}, spec...)
	for _, tc := range []struct {
		p    SlotParams
		want string
	}{
		{SlotParams{Root: "PARTUUID=r", State: "PARTUUID=s"}, "console=ttyS0 quiet imgctl.root=PARTUUID=r imgctl.state=PARTUUID=s"},
		{SlotParams{Root: "PARTUUID=r", State: "PARTUUID=s", RootDigest: "sha256:ab"}, "console=ttyS0 quiet imgctl.root=PARTUUID=r imgctl.state=PARTUUID=s imgctl.root-digest=sha256:ab"},
		{SlotParams{Root: "PARTUUID=r", State: "PARTUUID=s", RootDigest: "sha256:ab", VerityRootHash: "cd", VerityOffset: 8192},
			"console=ttyS0 quiet imgctl.root=PARTUUID=r imgctl.state=PARTUUID=s imgctl.root-digest=sha256:ab imgctl.verity=cd imgctl.verity-offset=8192"},
		{SlotParams{Root: "/dev/vda2"}, "console=ttyS0 quiet imgctl.root=/dev/vda2"},
	} {
		got := SlotCmdline(spec[:len(spec):len(spec)], tc.p)
		if s := strings.Join(got, " "); s != tc.want {
			t.Errorf("SlotCmdline(%+v) = %q, want %q", tc.p, s, tc.want)
		}
	}
	// Appending to the spec's slice must not write into the caller's backing array.
	long := make([]string, 2, 10)
	copy(long, spec)
	SlotCmdline(long, SlotParams{Root: "x"})
	if got := long[:3]; got[2] != "" {
		t.Errorf("SlotCmdline wrote into the spec's array: %q", got)
	}
	if !reflect.DeepEqual(spec, specCopy) {
		t.Errorf("spec modified: %q", spec)
	}
}
