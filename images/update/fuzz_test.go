package update

import (
	"bytes"
	"testing"
)

// FuzzDecodePointer: any input is refused or gives a pointer that encodes and decodes to itself.
func FuzzDecodePointer(f *testing.F) {
	good, _ := EncodePointer(goodPointer())
	f.Add(good)
	f.Add([]byte(`{"schemaVersion":1}`))
	f.Add([]byte(`{"schemaVersion":1,"mediaType":"` + PointerMediaType + `","channel":"a/b","image":"` + testDigest + `"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := DecodePointer(bytes.NewReader(data))
		if err != nil {
			return
		}
		enc, err := EncodePointer(p)
		if err != nil {
			t.Fatalf("decoded %+v but cannot encode it: %v", p, err)
		}
		q, err := DecodePointer(bytes.NewReader(enc))
		if err != nil || q != p {
			t.Fatalf("round trip of %+v: %+v, %v", p, q, err)
		}
		if _, err := PointerURL("http://h", p.Channel); err != nil {
			t.Fatalf("accepted channel %q makes no URL: %v", p.Channel, err)
		}
	})
}

// FuzzParseManifest: no input panics, and an accepted manifest has what an install needs.
func FuzzParseManifest(f *testing.F) {
	good, err := manifestJSON(nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"schemaVersion":2,"artifactType":"` + ArtifactType + `","layers":[{"digest":"x","annotations":{"org.opencontainers.image.title":"vmlinuz"}}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		im, err := ParseManifest(data, digestOf(data))
		if err != nil {
			return
		}
		if im.VerityOffset <= 0 || im.VerityOffset%BlockSize != 0 || im.VerityOffset >= im.Root.Size || im.Kernel.Size <= 0 || im.Initrd.Size <= 0 {
			t.Fatalf("accepted an image that cannot be installed: %+v", im)
		}
	})
}
