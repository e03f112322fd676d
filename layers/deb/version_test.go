package deb

import "testing"

func TestCompareVersions(t *testing.T) {
	// Each case: a, b, sign of CompareVersions(a, b).
	tests := []struct {
		a, b string
		want int
	}{
		{"1.0", "1.0", 0},
		{"1.0~rc1", "1.0", -1},
		{"1.0~rc1", "1.0~rc2", -1},
		{"1.0~~", "1.0~", -1},
		{"1.0~", "1.0", -1},
		{"1.0~rc1-1", "1.0-1", -1},
		{"1:0.1", "2.0", 1},
		{"0:2.0", "2.0", 0},
		{"00:2.0", "0:2.0", 0},
		{"2:1.0", "10:0.1", -1},
		{"1.2-3", "1.2-3+deb12u1", -1},
		{"1.2-3+deb12u1", "1.2-3+deb12u2", -1},
		{"1.2-3+deb12u9", "1.2-3+deb12u10", -1},
		{"1.2-3", "1.2-3.1", -1},
		{"1.2-3~bpo12+1", "1.2-3", -1},
		{"1.2", "1.2-0", 0},
		{"1.2", "1.2-1", -1},
		{"1.0", "1.0.0", -1},
		{"1.0a", "1.0", 1},
		{"1.0a", "1.0.1", -1}, // letters sort before non-letters
		{"1.0+", "1.0a", 1},
		{"1.0-1", "1.0-1a", -1},
		{"1.01", "1.1", 0},
		{"1.010", "1.9", 1},
		{"2.30", "2.4", 1},
		{"6.1.119-1", "6.1.120-1", -1},
		{"6.1.0-28", "6.1.0-3", 1},
		{"1.6.20~ds1-1+deb12u1", "1.6.20~ds1-1", 1},
		{"1.6.20~ds1-1", "1.6.20-1", -1},
		{"252.39-1~deb12u1", "252.39-1", -1},
		{"1:1.2-3-4", "1:1.2-3-5", -1}, // revision is after the last hyphen
		{"a", "b", -1},
		{"A", "a", -1},
		{"1.0", "", 1},
		{"", "", 0},
		{"~", "", -1},
		{"99999999999999999999999999", "99999999999999999999999998", 1},
		{"1:99999999999999999999", "99999999999999999999999999999:1", -1},
	}
	for _, tc := range tests {
		got := CompareVersions(tc.a, tc.b)
		if got != tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
		if back := CompareVersions(tc.b, tc.a); back != -tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.b, tc.a, back, -tc.want)
		}
	}
}

func TestCompareVersionsDpkg(t *testing.T) {
	// Cross-check against dpkg when it is installed.
	dpkgCompare(t, []string{"1.0~rc1", "1.0", "1:0.1", "2.0", "1.2-3", "1.2-3+deb12u1", "1.0a", "1.0.1", "1.0+", "2.30", "2.4", "1.0-1a", "1.2-3~bpo12+1"})
}
