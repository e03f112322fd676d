package inventory

import (
	"strings"
	"testing"
)

func TestParseIdentity(t *testing.T) {
	ok := []struct {
		mac, uuid, serial string
		want              Identity
	}{
		{"52:54:00:12:34:56", "", "", Identity{MAC: "52:54:00:12:34:56"}},
		{"52-54-00-AB-CD-EF", "", "", Identity{MAC: "52:54:00:ab:cd:ef"}},
		{"525400ABCDEF", "", "", Identity{MAC: "52:54:00:ab:cd:ef"}},
		{"", "4C4C4544-0042-3510-8052-B4C04F4E3132", "", Identity{UUID: "4c4c4544-0042-3510-8052-b4c04f4e3132"}},
		{"", "", "  CZ2D1234AB  ", Identity{Serial: "CZ2D1234AB"}},
		{"52:54:00:12:34:56", "00000000-0000-0000-0000-000000000000", "To Be Filled By O.E.M.", Identity{MAC: "52:54:00:12:34:56"}},
		{"52:54:00:12:34:56", "ffffffff-ffff-ffff-ffff-ffffffffffff", "Default string", Identity{MAC: "52:54:00:12:34:56"}},
	}
	for _, c := range ok {
		got, err := ParseIdentity(c.mac, c.uuid, c.serial)
		if err != nil || got != c.want {
			t.Errorf("ParseIdentity(%q, %q, %q) = %+v, %v; want %+v", c.mac, c.uuid, c.serial, got, err, c.want)
		}
	}
	bad := []struct {
		mac, uuid, serial, want string
	}{
		{"52:54:00:12:34", "", "", `mac: "52:54:00:12:34" is not a MAC address (expected aa:bb:cc:dd:ee:ff)`},
		{"52:54:00:12:34:5g", "", "", `mac: "52:54:00:12:34:5g" is not a MAC address (expected aa:bb:cc:dd:ee:ff)`},
		{"52:54-00:12:34:56", "", "", `mac: "52:54-00:12:34:56" is not a MAC address`},
		{"0000.5e00.5301", "", "", `mac: "0000.5e00.5301" is not a MAC address`},
		{"00:00:5e:00:53:01:00:00", "", "", `mac: "00:00:5e:00:53:01:00:00" is not a MAC address`},
		{"${net0/mac}", "", "", `mac: "${net0/mac}" is not a MAC address`},
		{strings.Repeat("a", 5000), "", "", `mac: "` + strings.Repeat("a", maxQueryLen) + `"… is not a MAC address`},
		{"", "4c4c4544-0042-3510-8052-b4c04f4e313", "", `uuid: "4c4c4544-0042-3510-8052-b4c04f4e313" is not a UUID (expected 8-4-4-4-12 hex digits`},
		{"", "4c4c4544x0042-3510-8052-b4c04f4e3132", "", `uuid: "4c4c4544x0042-3510-8052-b4c04f4e3132" is not a UUID`},
		{"", "{4c4c4544-0042-3510-8052-b4c04f4e31}", "", `uuid: "{4c4c4544-0042-3510-8052-b4c04f4e31}" is not a UUID`},
		{"", "", strings.Repeat("x", 65), `serial: "` + strings.Repeat("x", 65) + `" is 65 characters (expected a serial number of at most 64)`},
		{"", "", strings.Repeat("x", 200), `serial: "` + strings.Repeat("x", maxQueryLen) + `"… is 200 bytes`},
		{"", "", "a\nb", `serial: "a\nb" is not a serial number (expected printable ASCII)`},
		{"", "", "caf\u00e9", `serial: "café" is not a serial number (expected printable ASCII)`},
		{"", "", "   ", `serial: empty serial number`},
		{"", "", "", `no machine identity: mac, uuid and serial are all empty or firmware placeholders (expected e.g. mac=52:54:00:12:34:56)`},
		{"", "00000000-0000-0000-0000-000000000000", "Not Specified", `no machine identity`},
	}
	for _, c := range bad {
		got, err := ParseIdentity(c.mac, c.uuid, c.serial)
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("ParseIdentity(%q, %q, %q) = %+v, %v; want an error starting %q", c.mac, c.uuid, c.serial, got, err, c.want)
		}
	}
}
