package kmod

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/imgctl/imgctl/layers/kmod/kmodtest"
)

func TestModinfo(t *testing.T) {
	mod := kmodtest.Module("license=GPL", "firmware=tigon/tg3.bin", "alias=pci:v*", "firmware=tigon/tg357766.bin", "firmware")
	gz := func() []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write(mod)
		w.Close()
		return b.Bytes()
	}()
	xzb := func() []byte {
		var b bytes.Buffer
		w, _ := xz.NewWriter(&b)
		w.Write(mod)
		w.Close()
		return b.Bytes()
	}()
	zst := func() []byte {
		var b bytes.Buffer
		w, _ := zstd.NewWriter(&b)
		w.Write(mod)
		w.Close()
		return b.Bytes()
	}()
	want := []string{"tigon/tg3.bin", "tigon/tg357766.bin"}
	for name, data := range map[string][]byte{"tg3.ko": mod, "tg3.ko.gz": gz, "tg3.ko.xz": xzb, "tg3.ko.zst": zst} {
		got, err := Modinfo(name, bytes.NewReader(data), "firmware")
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("Modinfo(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	if got, err := Modinfo("x.ko", bytes.NewReader(kmodtest.Module("license=GPL")), "firmware"); err != nil || got != nil {
		t.Errorf("no firmware: %q, %v", got, err)
	}
	if _, err := Modinfo("bad.ko", strings.NewReader("not elf"), "firmware"); err == nil || !strings.Contains(err.Error(), "bad.ko") {
		t.Errorf("not ELF: err = %v", err)
	}
}
