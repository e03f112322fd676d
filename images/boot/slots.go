package boot

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// The A/B slots of a disk node. A slot is a root partition (LabelRootA, LabelRootB), a
// directory on the ESP with its kernel and initrd (SlotDir) and a Boot Loader Specification
// entry in EntriesDir (EntryFile) that systemd-boot counts boots with.
const (
	SlotA = "a"
	SlotB = "b"
)

// BootTries is the boot counter of a new slot's entry (imgctl-a+3.conf): systemd-boot counts
// down every boot that does not reach boot-complete.target, and once it is used up it boots the
// other slot instead.
const BootTries = 3

// EntriesDir is the directory of the loader entries on the ESP (relative to its root).
const EntriesDir = "loader/entries"

// entryPrefix and entrySuffix frame a slot's entry file name: imgctl-a+3.conf.
const (
	entryPrefix = "imgctl-"
	entrySuffix = ".conf"
)

// SlotDir is the slot's directory on the ESP (relative to its root): its vmlinuz, initrd.img
// and image.json.
func SlotDir(slot string) string { return "imgctl/" + slot }

// Files in SlotDir.
const (
	SlotKernel = "vmlinuz"
	SlotInitrd = "initrd.img"
)

// SlotLabel is the slot's root partition label: "a" → LabelRootA, "b" → LabelRootB; "" for
// anything else.
func SlotLabel(slot string) string {
	switch slot {
	case SlotA:
		return LabelRootA
	case SlotB:
		return LabelRootB
	}
	return ""
}

// OtherSlot is the slot that is not slot ("a" ↔ "b"); "" for anything else.
func OtherSlot(slot string) string {
	switch slot {
	case SlotA:
		return SlotB
	case SlotB:
		return SlotA
	}
	return ""
}

// EntryFile is the name (in EntriesDir) of the slot's loader entry. With counting, systemd-boot's
// boot-counting form: imgctl-a+3.conf (tries left, none done yet) or imgctl-a+2-1.conf (tries
// left and done); without, the blessed form imgctl-a.conf.
func EntryFile(slot string, triesLeft, triesDone int, counting bool) string {
	switch {
	case !counting:
		return entryPrefix + slot + entrySuffix
	case triesDone == 0:
		return fmt.Sprintf("%s%s+%d%s", entryPrefix, slot, triesLeft, entrySuffix)
	default:
		return fmt.Sprintf("%s%s+%d-%d%s", entryPrefix, slot, triesLeft, triesDone, entrySuffix)
	}
}

// EntryName is a parsed EntryFile name.
type EntryName struct {
	Slot     string // SlotA or SlotB
	Counting bool   // the name carries a boot counter: not (yet) blessed
	Left     int    // tries left (Counting only); 0 = used up, systemd-boot boots it last
	Done     int    // tries done (Counting only)
}

// ParseEntryFile parses a loader entry's file name as EntryFile writes it, or as systemd-boot
// renames it while counting (imgctl-a+0-3.conf, also imgctl-a+3-0.conf). ok is false for a name
// that is not a slot's entry.
func ParseEntryFile(name string) (EntryName, bool) {
	rest, ok := strings.CutPrefix(name, entryPrefix)
	if !ok {
		return EntryName{}, false
	}
	if rest, ok = strings.CutSuffix(rest, entrySuffix); !ok {
		return EntryName{}, false
	}
	slot, counter, counting := strings.Cut(rest, "+")
	if SlotLabel(slot) == "" {
		return EntryName{}, false
	}
	e := EntryName{Slot: slot, Counting: counting}
	if !counting {
		return e, true
	}
	left, done, hasDone := strings.Cut(counter, "-")
	var err error
	if e.Left, err = counterNumber(left); err != nil {
		return EntryName{}, false
	}
	if hasDone {
		if e.Done, err = counterNumber(done); err != nil {
			return EntryName{}, false
		}
	}
	return e, true
}

// counterNumber parses a boot counter: decimal digits only (no sign, no spaces).
func counterNumber(s string) (int, error) {
	if s == "" || len(s) > 9 || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("bad counter %q", s)
	}
	return strconv.Atoi(s)
}

// Entry is a slot's Boot Loader Specification entry. Version orders the entries: systemd-boot
// boots the highest one whose tries are not used up, so a new slot's entry gets a version above
// every other entry (the builder writes the build's SOURCE_DATE_EPOCH).
type Entry struct {
	Slot    string
	Version int64
	Title   string   // "" = "imgctl node (slot A)"
	Cmdline []string // the kernel command line (SlotCmdline)
}

// entrySortKey groups imgctl's entries in systemd-boot's menu (then ordered by version).
const entrySortKey = "imgctl"

// Marshal is the entry file's text.
func (e Entry) Marshal() []byte {
	title := e.Title
	if title == "" {
		title = "imgctl node (slot " + strings.ToUpper(e.Slot) + ")"
	}
	dir := "/" + SlotDir(e.Slot) + "/"
	var b bytes.Buffer
	fmt.Fprintf(&b, "title %s\n", title)
	fmt.Fprintf(&b, "sort-key %s\n", entrySortKey)
	fmt.Fprintf(&b, "version %d\n", e.Version)
	fmt.Fprintf(&b, "linux %s\n", dir+SlotKernel)
	fmt.Fprintf(&b, "initrd %s\n", dir+SlotInitrd)
	fmt.Fprintf(&b, "options %s\n", strings.Join(e.Cmdline, " "))
	return b.Bytes()
}

// ParseEntry reads an entry file Marshal wrote: its title, version and options (Slot from the
// linux line's directory). Unknown keys are ignored, as systemd-boot does; a missing or bad
// version or linux line is an error naming it.
func ParseEntry(data []byte) (Entry, error) {
	var e Entry
	var haveVersion, haveLinux bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, _ := strings.Cut(line, " ")
		val = strings.TrimSpace(val)
		switch key {
		case "title":
			e.Title = val
		case "version":
			v, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				return Entry{}, fmt.Errorf("loader entry: version %q: want a decimal number", val)
			}
			e.Version, haveVersion = v, true
		case "linux":
			for _, s := range []string{SlotA, SlotB} {
				if val == "/"+SlotDir(s)+"/"+SlotKernel {
					e.Slot = s
				}
			}
			if e.Slot == "" {
				return Entry{}, fmt.Errorf("loader entry: linux %q: want /%s/%s or /%s/%s", val, SlotDir(SlotA), SlotKernel, SlotDir(SlotB), SlotKernel)
			}
			haveLinux = true
		case "options":
			e.Cmdline = append(e.Cmdline, strings.Fields(val)...)
		}
	}
	if err := sc.Err(); err != nil {
		return Entry{}, fmt.Errorf("loader entry: %w", err)
	}
	if !haveVersion {
		return Entry{}, fmt.Errorf("loader entry: no version line")
	}
	if !haveLinux {
		return Entry{}, fmt.Errorf("loader entry: no linux line")
	}
	return e, nil
}

// SlotParams are a slot's values on its kernel command line.
type SlotParams struct {
	Root  string // the root partition, a device form (PartUUIDDevice)
	State string // the STATE partition, a device form
	// RootDigest is the slot's root blob, sha256:HEX of rootfs.squashfs with its hash area
	// ("" = not given).
	RootDigest string
	// VerityRootHash is the root's dm-verity root hash, 64 lower-case hex ("" = no verity);
	// VerityOffset is where its hash area starts on Root (bytes, a multiple of 4096).
	VerityRootHash string
	VerityOffset   int64
}

// SlotCmdline is a slot's kernel command line: the spec's parameters, then imgctl.root=,
// imgctl.state= and imgctl.root-digest= (when given), and imgctl.verity= with
// imgctl.verity-offset= (when VerityRootHash is given). The spec's slice is not modified.
func SlotCmdline(spec []string, p SlotParams) []string {
	c := append(make([]string, 0, len(spec)+5), spec...)
	c = append(c, Param(KeyRoot, p.Root))
	if p.State != "" {
		c = append(c, Param(KeyState, p.State))
	}
	if p.RootDigest != "" {
		c = append(c, Param(KeyRootDigest, p.RootDigest))
	}
	if p.VerityRootHash != "" {
		c = append(c, Param(KeyVerity, p.VerityRootHash), Param(KeyVerityOffset, strconv.FormatInt(p.VerityOffset, 10)))
	}
	return c
}
