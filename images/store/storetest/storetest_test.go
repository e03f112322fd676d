package storetest

import "testing"

func TestPutVersion(t *testing.T) {
	s := Open(t)
	a := PutVersion(t, s, "1.0.0", 10)
	b := PutVersion(t, s, "1.1.0", 20)
	if again := PutVersion(t, s, "1.0.0", 10); again.Digest() != a.Digest() {
		t.Errorf("not deterministic: %s vs %s", again.Digest(), a.Digest())
	}
	imgs, err := s.List(t.Context())
	if err != nil || len(imgs) != 2 || imgs[0].Digest() != b.Digest() {
		t.Fatalf("List = %v, %v", imgs, err)
	}
	if len(a.Manifest.Layers) != 3 {
		t.Errorf("%d artifacts", len(a.Manifest.Layers))
	}
	problems, err := s.Verify(t.Context())
	if err != nil || len(problems) != 0 {
		t.Fatalf("Verify = %v, %v", problems, err)
	}
}
