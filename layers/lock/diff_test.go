package lock

import (
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestDiff(t *testing.T) {
	d := func(c string) digest.Digest { return digest.Digest("sha256:" + strings.Repeat(c, 64)) }
	base := Source{Role: "base", URI: "mmdebstrap:bookworm", Digest: d("a")}
	kubelet := Source{Role: "kubelet", URI: "file:///k", Digest: d("b")}
	runtime := Source{Role: "runtime", URI: "deb:containerd", Digest: d("c"), Resolved: "containerd=1.6.20"}
	lock := func(epoch int64, ss ...Source) *File {
		return &File{Version: Version, SourceDateEpoch: epoch, Sources: ss}
	}
	newKubelet := kubelet
	newKubelet.Digest = d("e")
	newRuntime := runtime
	newRuntime.Resolved = "containerd=1.6.24"
	for _, tc := range []struct {
		name     string
		old, new *File
		want     []string
	}{
		{"same", lock(1, base, kubelet), lock(1, kubelet, base), nil},
		{"no old lock", nil, lock(1, base), []string{
			"sourceDateEpoch: (none) → 1",
			"base mmdebstrap:bookworm: (none) → sha256:aaaaaaaaaaaa",
		}},
		{"digest changed", lock(1, base, kubelet), lock(1, base, newKubelet), []string{
			"kubelet file:///k: sha256:bbbbbbbbbbbb → sha256:eeeeeeeeeeee",
		}},
		{"resolved changed, same digest", lock(1, runtime), lock(1, newRuntime), []string{
			"runtime deb:containerd: resolved containerd=1.6.20 → containerd=1.6.24",
		}},
		{"added and removed", lock(1, base), lock(1, kubelet), []string{
			"base mmdebstrap:bookworm: sha256:aaaaaaaaaaaa → (removed)",
			"kubelet file:///k: (none) → sha256:bbbbbbbbbbbb",
		}},
		{"epoch", lock(1, base), lock(2, base), []string{"sourceDateEpoch: 1 → 2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, c := range Diff(tc.old, tc.new) {
				got = append(got, c.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Diff =\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}
