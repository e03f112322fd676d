package sign

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// TestAddStoreKey: trusting a key creates the store's policy, copies the key into the store,
// keeps the entries already there, and is idempotent; the store stays a store.
func TestAddStoreKey(t *testing.T) {
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, "1.0.0", 10)
	_, pub1 := testKey(1)
	_, pub2 := testKey(2)

	if p, err := PolicyForStore(st.Dir()); p != nil || err != nil {
		t.Fatalf("fresh store has a policy: %v, %v", p, err)
	}
	path, added, err := AddStoreKey(t.Context(), st.Dir(), pub1)
	if err != nil || !added {
		t.Fatalf("AddStoreKey = %v, %v", added, err)
	}
	if want := filepath.Join(st.Dir(), TrustedKeysDir, KeyID(pub1)+".pub"); path != want {
		t.Errorf("key copied to %s, want %s", path, want)
	}
	p, err := PolicyForStore(st.Dir())
	if err != nil || p == nil || len(p.Keys) != 1 || !p.Keys[0].Equal(pub1) {
		t.Fatalf("policy after adding a key = %+v, %v", p, err)
	}
	// The policy is in force: an unsigned image is refused.
	if err := p.Verify(t.Context(), st, img); err == nil || !strings.Contains(err.Error(), "unsigned") {
		t.Errorf("Verify(unsigned) = %v", err)
	}
	before, _ := os.ReadFile(filepath.Join(st.Dir(), PolicyFile))

	// Idempotent.
	if _, added, err := AddStoreKey(t.Context(), st.Dir(), pub1); err != nil || added {
		t.Errorf("adding the same key again = %v, %v; want no change", added, err)
	}
	if after, _ := os.ReadFile(filepath.Join(st.Dir(), PolicyFile)); string(after) != string(before) {
		t.Errorf("policy changed by adding a trusted key again:\n%s\n%s", before, after)
	}

	// A second key is appended; a hand-written entry is kept.
	hand := keyDir(t, t.TempDir(), "hand")
	writeFile(t, filepath.Join(st.Dir(), PolicyFile), `{"publicKeys": ["`+hand+`", "trusted-keys/`+KeyID(pub1)+`.pub"]}`)
	if _, added, err := AddStoreKey(t.Context(), st.Dir(), pub2); err != nil || !added {
		t.Fatalf("adding a second key = %v, %v", added, err)
	}
	p, err = PolicyForStore(st.Dir())
	if err != nil || len(p.Keys) != 3 || p.KeyFiles[0] != hand || !p.Keys[1].Equal(pub1) || !p.Keys[2].Equal(pub2) {
		t.Fatalf("policy = %+v, %v; want the hand-written key, key 1 and key 2", p, err)
	}

	// The directory is still a store that verifies.
	st2, err := store.Open(t.Context(), st.Dir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if problems, err := st2.Verify(t.Context()); err != nil || len(problems) != 0 {
		t.Errorf("store verify after trusting keys: %v, %v", problems, err)
	}

	// A policy that does not load is an error, and left alone.
	bad := `{"publicKey": ["x.pub"]}`
	writeFile(t, filepath.Join(st.Dir(), PolicyFile), bad)
	if _, _, err := AddStoreKey(t.Context(), st.Dir(), pub1); err == nil || !strings.Contains(err.Error(), "publicKey") {
		t.Errorf("AddStoreKey over a broken policy: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(st.Dir(), PolicyFile)); string(got) != bad {
		t.Errorf("broken policy rewritten: %s", got)
	}
}

// TestAddStoreKeyConcurrent: concurrent adds of different keys all land.
func TestAddStoreKeyConcurrent(t *testing.T) {
	st := storetest.Open(t)
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, pub := testKey(byte(10 + i))
			_, _, errs[i] = AddStoreKey(t.Context(), st.Dir(), pub)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("add %d: %v", i, err)
		}
	}
	p, err := PolicyForStore(st.Dir())
	if err != nil || len(p.Keys) != n {
		t.Fatalf("policy after %d concurrent adds: %d keys (%v)", n, len(p.Keys), err)
	}
	seen := map[string]bool{}
	for _, k := range p.Keys {
		seen[KeyID(k)] = true
	}
	for i := range n {
		_, pub := testKey(byte(10 + i))
		if !seen[KeyID(pub)] {
			t.Errorf("key %d lost", i)
		}
	}
}
