package targets_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/builders"
	"github.com/imgctl/imgctl/builders/buildtest"
	"github.com/imgctl/imgctl/builders/disk"
	"github.com/imgctl/imgctl/images/boot"
	"github.com/imgctl/imgctl/images/manifest"
)

// espOf reads the ESP partition of an exported disk.raw (from the disk.simg's partitions
// annotation).
func espOf(t *testing.T, diskRaw string, d manifest.Artifact) []byte {
	t.Helper()
	var parts []disk.Partition
	if err := json.Unmarshal([]byte(d.Annotations[manifest.AnnotationDiskPartitions]), &parts); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(diskRaw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range parts {
		if p.Name == boot.LabelESP {
			b, err := io.ReadAll(io.NewSectionReader(f, int64(p.Start), int64(p.Size)))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	t.Fatalf("no %s in %v", boot.LabelESP, parts)
	return nil
}

// TestRawSlotAEntry: the raw disk's slot A boots with the boot contract's command line (its
// root blob's digest included, the node's identity for updates), and its loader entry on the
// ESP is boot.Entry's text for that command line: the node agent writes slot B's entry with the
// same function.
func TestRawSlotAEntry(t *testing.T) {
	f := buildtest.NewFixture(t)
	e := bootEnv(t, f, buildtest.BootOptions{}, "raw")
	out := t.TempDir()
	e.Opts.OutputDir = out
	res, err := builders.Run(context.Background(), e.Opts)
	if err != nil {
		t.Fatal(err)
	}
	d := artifact(t, res.Image.Config, manifest.Artifacts(res.Image.Manifest), "disk.simg")
	cmdline := d.Annotations[manifest.AnnotationKernelCmdline]
	rootDigest := d.Annotations[manifest.AnnotationRootDigest]
	if !strings.HasPrefix(rootDigest, "sha256:") {
		t.Fatalf("disk.simg root digest annotation = %q", rootDigest)
	}
	if !strings.Contains(" "+cmdline+" ", " "+boot.Param(boot.KeyRootDigest, rootDigest)+" ") {
		t.Errorf("slot A's command line lacks its root digest %s: %q", rootDigest, cmdline)
	}
	entry := boot.Entry{Slot: boot.SlotA, Version: *e.Opts.SourceDateEpoch, Cmdline: strings.Fields(cmdline)}.Marshal()
	esp := espOf(t, filepath.Join(out, "disk.raw"), d)
	if !bytes.Contains(esp, entry) {
		t.Errorf("the ESP has no entry\n%s", entry)
	}
	// FAT keeps a long name in UTF-16 directory slots of 5, 6 and 2 characters: characters
	// 6–11 of imgctl-a+3.conf ("l-a+3.") lie together.
	name := boot.EntryFile(boot.SlotA, boot.BootTries, 0, true)
	var name16 []byte
	for _, c := range name[5:11] {
		name16 = append(name16, byte(c), 0)
	}
	if name != "imgctl-a+3.conf" || !bytes.Contains(esp, name16) {
		t.Errorf("the ESP has no file named %s", name)
	}
}
