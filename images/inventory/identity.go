package inventory

import (
	"encoding/hex"
	"fmt"
	"net"
	"strings"
)

// Identity is what a booting machine says it is: any of its NICs' MAC address, its SMBIOS UUID
// and its serial number, normalized. Empty fields are unknown.
type Identity struct{ MAC, UUID, Serial string }

// MaxSerialLen bounds a serial number (SMBIOS strings are short; a longer value is not one).
const MaxSerialLen = 64

// maxQueryLen bounds what ParseIdentity looks at before it quotes a value in an error.
const maxQueryLen = 128

// ParseIdentity builds an Identity from the values a booting machine sends (iPXE's ${net0/mac},
// ${uuid} and ${serial}): hostile input, so each is checked before it is used. A MAC may use ':'
// or '-' separators or none, in either case (52:54:00:12:34:56, 52-54-00-12-34-56,
// 525400123456); a UUID is the canonical 8-4-4-4-12 hex form, in either case; a serial is at
// most MaxSerialLen printable ASCII characters, surrounding spaces ignored. Firmware placeholders
// (an all-zero or all-f UUID, a serial such as "To Be Filled By O.E.M.") identify nothing and
// are dropped. An error names the parameter and what was expected; at least one value must be
// left.
func ParseIdentity(mac, uuid, serial string) (Identity, error) {
	var id Identity
	var err error
	if mac != "" {
		if id.MAC, err = ParseMAC(mac); err != nil {
			return Identity{}, fmt.Errorf("mac: %w", err)
		}
	}
	if uuid != "" {
		if id.UUID, err = ParseUUID(uuid); err != nil {
			return Identity{}, fmt.Errorf("uuid: %w", err)
		}
		if placeholderUUID(id.UUID) {
			id.UUID = ""
		}
	}
	if serial != "" {
		if id.Serial, err = ParseSerial(serial); err != nil {
			return Identity{}, fmt.Errorf("serial: %w", err)
		}
		if placeholderSerial(id.Serial) {
			id.Serial = ""
		}
	}
	if id == (Identity{}) {
		return Identity{}, fmt.Errorf("no machine identity: mac, uuid and serial are all empty or firmware placeholders (expected e.g. mac=52:54:00:12:34:56)")
	}
	return id, nil
}

// ParseMAC normalizes a 6-byte MAC address to lower-case aa:bb:cc:dd:ee:ff. It accepts ':' or
// '-' separators or 12 hex digits without any, in either case.
func ParseMAC(s string) (string, error) {
	bad := fmt.Errorf("%s is not a MAC address (expected aa:bb:cc:dd:ee:ff)", quote(s))
	if len(s) > 17 {
		return "", bad
	}
	var b []byte
	if len(s) == 12 {
		var err error
		if b, err = hex.DecodeString(s); err != nil {
			return "", bad
		}
	} else {
		if len(s) != 17 {
			return "", bad
		}
		hw, err := net.ParseMAC(s)
		if err != nil || len(hw) != 6 {
			return "", bad
		}
		b = hw
	}
	return net.HardwareAddr(b).String(), nil
}

// ParseUUID normalizes an SMBIOS UUID in the canonical 8-4-4-4-12 hex form to lower case.
func ParseUUID(s string) (string, error) {
	bad := fmt.Errorf("%s is not a UUID (expected 8-4-4-4-12 hex digits, as iPXE's ${uuid} or dmidecode -s system-uuid print it)", quote(s))
	if len(s) != 36 {
		return "", bad
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", bad
			}
		default:
			if !isHex(c) {
				return "", bad
			}
		}
	}
	return strings.ToLower(s), nil
}

// ParseSerial checks a serial number: surrounding spaces are dropped (SMBIOS pads with them),
// what is left is 1 to MaxSerialLen printable ASCII characters.
func ParseSerial(s string) (string, error) {
	if len(s) > maxQueryLen {
		return "", fmt.Errorf("%s is %d bytes (expected a serial number of at most %d printable ASCII characters)", quote(s), len(s), MaxSerialLen)
	}
	t := strings.TrimSpace(s)
	if t == "" {
		return "", fmt.Errorf("empty serial number")
	}
	if len(t) > MaxSerialLen {
		return "", fmt.Errorf("%s is %d characters (expected a serial number of at most %d)", quote(t), len(t), MaxSerialLen)
	}
	for i := 0; i < len(t); i++ {
		if t[i] < 0x20 || t[i] > 0x7e {
			return "", fmt.Errorf("%s is not a serial number (expected printable ASCII)", quote(t))
		}
	}
	return t, nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// placeholderUUID reports the UUIDs firmware reports when it has none (SMBIOS: all zero means
// not present, all f means not set).
func placeholderUUID(u string) bool {
	return u == "00000000-0000-0000-0000-000000000000" || u == "ffffffff-ffff-ffff-ffff-ffffffffffff"
}

// placeholderSerials are what vendors' firmware reports in place of a serial number: many
// machines share them, so they identify none.
var placeholderSerials = []string{
	"0", "00000000", "0000000000", "0123456789", "123456789", "1234567890", "default string",
	"none", "n/a", "na", "not applicable", "not available", "not specified", "o.e.m.", "oem",
	"system serial number", "chassis serial number", "to be filled by o.e.m.", "unknown",
	"invalid", "empty", "xxxxxxxxxx",
}

func placeholderSerial(s string) bool {
	l := strings.ToLower(s)
	for _, p := range placeholderSerials {
		if l == p {
			return true
		}
	}
	return false
}

// quote quotes s for an error, cut short: query values are hostile and logged.
func quote(s string) string {
	if len(s) > maxQueryLen {
		return fmt.Sprintf("%q…", s[:maxQueryLen])
	}
	return fmt.Sprintf("%q", s)
}
