package boot

import "testing"

func TestParam(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{Param(KeyRoot, PartUUIDDevice("6A1F5C2E-0B7D-4A8E-9C3B-2D1E0F9A8B7C")), "imgctl.root=PARTUUID=6a1f5c2e-0b7d-4a8e-9c3b-2d1e0f9a8b7c"},
		{Param(KeyState, PartLabelDevice(LabelState)), "imgctl.state=PARTLABEL=STATE"},
		{Param(KeyRootDigest, "sha256:00ff"), "imgctl.root-digest=sha256:00ff"},
		{Param(KeyRoot, "http://10.0.2.2:8080/blobs/sha256:00ff"), "imgctl.root=http://10.0.2.2:8080/blobs/sha256:00ff"},
		{DevPrefix + "vda2", "/dev/vda2"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}
