package cmdline

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/boot"
)

func TestParse(t *testing.T) {
	base := Config{Init: DefaultInit, RootTimeout: DefaultRootTimeout}
	with := func(f func(*Config)) Config { c := base; f(&c); return c }
	tests := []struct {
		name    string
		line    string
		want    Config
		wantErr string
	}{
		{
			name: "qemu test line",
			line: "console=ttyS0 panic=-1 imgctl.root=PARTLABEL=ROOT-A imgctl.state=PARTLABEL=STATE\n",
			want: with(func(c *Config) {
				c.Root = Device{PartLabel, "ROOT-A"}
				c.State = Device{PartLabel, "STATE"}
			}),
		},
		{
			name: "partuuid upper case, path state, custom init, timeout, debug",
			line: "imgctl.root=PARTUUID=6A1F5C2E-0B7D-4A8E-9C3B-2D1E0F9A8B7C imgctl.state=/dev/vda3 imgctl.init=/usr/lib/systemd/systemd imgctl.root-timeout=3s imgctl.debug",
			want: with(func(c *Config) {
				c.Root = Device{PartUUID, "6a1f5c2e-0b7d-4a8e-9c3b-2d1e0f9a8b7c"}
				c.State = Device{Path, "/dev/vda3"}
				c.Init, c.InitSet = "/usr/lib/systemd/systemd", true
				c.RootTimeout = 3 * time.Second
				c.Debug = true
			}),
		},
		{
			name: "bare seconds, debug=0, last wins",
			line: "imgctl.root=/dev/vda2 imgctl.root=/dev/sda2 imgctl.root-timeout=7 imgctl.debug=0 root=/dev/ignored",
			want: with(func(c *Config) {
				c.Root = Device{Path, "/dev/sda2"}
				c.RootTimeout = 7 * time.Second
			}),
		},
		{
			name: "quoted value",
			line: `quiet imgctl.root="PARTLABEL=ROOT A" imgctl.debug=1`,
			want: with(func(c *Config) { c.Root = Device{PartLabel, "ROOT A"}; c.Debug = true }),
		},
		{
			name: "verity root",
			line: "imgctl.root=PARTLABEL=ROOT-A imgctl.verity=" + strings.Repeat("ab", 32) + " imgctl.verity-offset=409600 imgctl.root-digest=sha256:" + strings.Repeat("0", 64),
			want: with(func(c *Config) {
				c.Root = Device{PartLabel, "ROOT-A"}
				c.Verity = &Verity{RootHash: strings.Repeat("ab", 32), Offset: 409600}
			}),
		},
		{name: "verity without offset", line: "imgctl.root=/dev/vda2 imgctl.verity=" + strings.Repeat("ab", 32), wantErr: "imgctl.verity-offset is missing: imgctl.verity needs it"},
		{name: "offset without verity", line: "imgctl.root=/dev/vda2 imgctl.verity-offset=4096", wantErr: "imgctl.verity is missing: imgctl.verity-offset needs it"},
		{name: "short root hash", line: "imgctl.root=/dev/vda2 imgctl.verity-offset=4096 imgctl.verity=abcd", wantErr: `imgctl.verity: verity root hash "abcd": want 64 lower-case hex digits`},
		{name: "upper-case root hash", line: "imgctl.root=/dev/vda2 imgctl.verity-offset=4096 imgctl.verity=" + strings.Repeat("AB", 32), wantErr: "imgctl.verity: verity root hash"},
		{name: "non-hex root hash", line: "imgctl.root=/dev/vda2 imgctl.verity-offset=4096 imgctl.verity=" + strings.Repeat("zz", 32), wantErr: "imgctl.verity: "},
		{name: "offset not a multiple of 4096", line: "imgctl.root=/dev/vda2 imgctl.verity=" + strings.Repeat("ab", 32) + " imgctl.verity-offset=4097", wantErr: `imgctl.verity-offset: "4097": want a positive multiple of 4096`},
		{name: "offset zero", line: "imgctl.root=/dev/vda2 imgctl.verity=" + strings.Repeat("ab", 32) + " imgctl.verity-offset=0", wantErr: `imgctl.verity-offset: "0": want a positive multiple of 4096`},
		{name: "offset not a number", line: "imgctl.root=/dev/vda2 imgctl.verity=" + strings.Repeat("ab", 32) + " imgctl.verity-offset=4k", wantErr: `imgctl.verity-offset: "4k"`},
		{name: "missing root", line: "console=ttyS0 imgctl.state=PARTLABEL=STATE", wantErr: "imgctl.root is missing"},
		{name: "empty", line: "", wantErr: "imgctl.root is missing"},
		{name: "bad root", line: "imgctl.root=LABEL=ROOT", wantErr: "bad device"},
		{name: "empty label", line: "imgctl.root=PARTLABEL=", wantErr: "bad device"},
		{name: "bad partuuid", line: "imgctl.root=PARTUUID=1234", wantErr: "bad device"},
		{name: "bad state", line: "imgctl.root=/dev/vda2 imgctl.state=vda3", wantErr: "imgctl.state"},
		{name: "relative init", line: "imgctl.root=/dev/vda2 imgctl.init=sbin/init", wantErr: "absolute"},
		{name: "bad timeout", line: "imgctl.root=/dev/vda2 imgctl.root-timeout=soon", wantErr: "bad duration"},
		{name: "negative timeout", line: "imgctl.root=/dev/vda2 imgctl.root-timeout=-1s", wantErr: "positive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.line)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want %q", tc.line, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.line, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", tc.line, got, tc.want)
			}
		})
	}
}

func TestFields(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{"", nil},
		{"  a  b\tc\n", []string{"a", "b", "c"}},
		{`x="a b" y`, []string{"x=a b", "y"}},
		{`"quoted whole" z=""`, []string{"quoted whole", "z="}},
	}
	for _, tc := range tests {
		if got := Fields(tc.line); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Fields(%q) = %q, want %q", tc.line, got, tc.want)
		}
	}
}

func TestDeviceString(t *testing.T) {
	for _, s := range []string{"PARTLABEL=ROOT-A", "/dev/vda2", "PARTUUID=6a1f5c2e-0b7d-4a8e-9c3b-2d1e0f9a8b7c"} {
		d, err := ParseDevice(s)
		if err != nil || d.String() != s {
			t.Errorf("ParseDevice(%q) = %v, %v", s, d, err)
		}
	}
}

func TestFlag(t *testing.T) {
	for _, tc := range []struct {
		field string
		want  bool
	}{
		{"imgctl.debug", true}, {"imgctl.debug=1", true}, {"imgctl.debug=yes", true}, {"imgctl.debug=true", true},
		{"imgctl.debug=0", false}, {"imgctl.debug=no", false}, {"imgctl.debug=false", false},
	} {
		_, val, hasVal := strings.Cut(tc.field, "=")
		if got := Flag(val, hasVal); got != tc.want {
			t.Errorf("Flag(%s) = %v, want %v", tc.field, got, tc.want)
		}
	}
}

// TestParseContractLine: a command line formatted with the boot contract's helpers, as the
// builders write it, parses into the devices they meant.
func TestParseContractLine(t *testing.T) {
	const root, state = "6A1F5C2E-0B7D-4A8E-9C3B-2D1E0F9A8B7C", "11111111-2222-3333-4444-555555555555"
	line := strings.Join([]string{"console=ttyS0",
		boot.Param(boot.KeyRoot, boot.PartUUIDDevice(root)),
		boot.Param(boot.KeyState, boot.PartLabelDevice(boot.LabelState)),
		boot.Param(boot.KeyInit, DefaultInit),
		boot.Param(boot.KeyRootTimeout, "5s"),
		boot.KeyDebug,
	}, " ")
	c, err := Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Root: Device{PartUUID, strings.ToLower(root)}, State: Device{PartLabel, boot.LabelState},
		Init: DefaultInit, InitSet: true, RootTimeout: 5 * time.Second, Debug: true}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Parse(%q) = %+v, want %+v", line, c, want)
	}
	if got := c.Root.String(); got != boot.PartUUIDDevice(root) {
		t.Errorf("Root.String() = %q, want %q", got, boot.PartUUIDDevice(root))
	}
}
