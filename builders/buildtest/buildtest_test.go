package buildtest

import (
	"testing"

	"github.com/imgctl/imgctl/layers/spec"
)

// TestSpecYAML: the fixture's spec parses with the name given, sourceDateEpoch only when one is
// given, and a layer per role with sources.
func TestSpecYAML(t *testing.T) {
	f := NewFixture(t)
	for _, tc := range []struct {
		name  string
		epoch int64
	}{{"test-node", 0}, {"ami-test", 1700000000}} {
		n, err := spec.Parse(tc.name+".yaml", f.SpecYAML(tc.name, tc.epoch))
		if err != nil {
			t.Fatal(err)
		}
		if n.Metadata.Name != tc.name {
			t.Errorf("name %q, want %q", n.Metadata.Name, tc.name)
		}
		if e := n.Spec.SourceDateEpoch; (e == nil) != (tc.epoch == 0) || e != nil && *e != tc.epoch {
			t.Errorf("%s: sourceDateEpoch %v, want %d (0: none)", tc.name, e, tc.epoch)
		}
		if len(n.Spec.Layers) != len(f.Sources) {
			t.Errorf("%s: %d layers, want %d", tc.name, len(n.Spec.Layers), len(f.Sources))
		}
	}
}
