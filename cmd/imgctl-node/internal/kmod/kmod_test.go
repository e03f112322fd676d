package kmod

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseList(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{in: "", want: nil},
		{in: "# comment\n\nlib/modules/6.1.0-50-cloud-amd64/kernel/drivers/virtio/virtio.ko\n/lib/modules/x/kernel/fs/overlayfs/overlay.ko  \n",
			want: []string{"lib/modules/6.1.0-50-cloud-amd64/kernel/drivers/virtio/virtio.ko", "lib/modules/x/kernel/fs/overlayfs/overlay.ko"}},
		{in: "../etc/shadow\n", wantErr: true},
		{in: "/\n", wantErr: true},
	}
	for _, tc := range tests {
		got, err := ParseList(strings.NewReader(tc.in))
		if (err != nil) != tc.wantErr || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseList(%q) = %q, %v", tc.in, got, err)
		}
	}
}
