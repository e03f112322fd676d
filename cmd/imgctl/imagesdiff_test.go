package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/imagediff"
)

// imgctl images diff wires the library: text by default, the report with -o json, and the
// store's resolution errors for a bad reference.
func TestImagesDiff(t *testing.T) {
	dir := t.TempDir()
	img := buildImages(t, dir, 2) // rootfs target: layers only, no root squashfs
	out, stderr, err := run(t, dir, "images", "diff", img[0], img[1])
	if err != nil {
		t.Fatalf("images diff: %v\n%s", err, stderr)
	}
	for _, want := range []string{"LAYER", "extra", "changed", "files: not compared: image 1.21.13-", "has no rootfs.squashfs artifact"} {
		if !strings.Contains(out, want) {
			t.Errorf("text has no %q:\n%s", want, out)
		}
	}
	out, stderr, err = run(t, dir, "-o", "json", "images", "diff", img[0][:12], img[1])
	if err != nil {
		t.Fatalf("images diff -o json: %v\n%s", err, stderr)
	}
	var r imagediff.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	if r.A.Digest != img[0] || r.B.Digest != img[1] || len(r.Layers) != 1 || r.Layers[0].Change != imagediff.Changed || r.Blocks != nil {
		t.Errorf("report: %+v", r)
	}
	if _, _, err := run(t, dir, "images", "diff", img[0], "9.9.9"); err == nil || !strings.Contains(err.Error(), "9.9.9") {
		t.Errorf("images diff with an unknown image: %v", err)
	}
	if _, _, err := run(t, dir, "images", "diff", "--max-files", "-1", img[0], img[1]); err == nil || !strings.Contains(err.Error(), "--max-files -1") {
		t.Errorf("images diff --max-files -1: %v", err)
	}
}
