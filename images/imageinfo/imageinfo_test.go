package imageinfo

import (
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	in := &Info{
		SchemaVersion: SchemaVersion, Name: "n", Kubernetes: "1.21.13", Bootstrap: "1.0.0",
		Layers:   []Layer{{Role: "kubelet", Version: "1.21.13", Digest: "sha256:" + strings.Repeat("a", 64)}},
		Binaries: map[string]string{"/usr/bin/kubelet": "sha256:" + strings.Repeat("b", 64), "/usr/bin/b": "sha256:" + strings.Repeat("c", 64)},
	}
	b, err := in.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if i := strings.Index(string(b), "/usr/bin/b"); i < 0 || i > strings.Index(string(b), "/usr/bin/kubelet") {
		t.Errorf("binaries not sorted:\n%s", b)
	}
	out, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if out.Binaries["/usr/bin/kubelet"] != in.Binaries["/usr/bin/kubelet"] || out.Layers[0] != in.Layers[0] {
		t.Errorf("round trip: %+v", out)
	}
}

func TestParseErrors(t *testing.T) {
	ok := `"schemaVersion":1,"kubernetes":"1.21.13"`
	for _, tc := range []struct{ doc, want string }{
		{`{"schemaVersion":2,"kubernetes":"1"}`, "schemaVersion: got 2"},
		{`{"schemaVersion":1}`, "kubernetes: missing"},
		{`{` + ok + `,"extra":1}`, `unknown field "extra"`},
		{`{` + ok + `,"binaries":{"usr/bin/x":"sha256:` + strings.Repeat("a", 64) + `"}}`, "clean absolute path"},
		{`{` + ok + `,"binaries":{"/usr/bin/x":"sha256:abc"}}`, "binaries[/usr/bin/x]"},
		{`{` + ok + `,"binaries":{"/usr/bin/x":"sha256:` + strings.Repeat("A", 64) + `"}}`, "lower-case hex"},
		{`{` + ok + `} {}`, "trailing data"},
	} {
		_, err := Parse([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want error containing %q", tc.doc, err, tc.want)
		}
	}
}
