package redact

import "testing"

func TestString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"http://10.0.2.100/blobs/sha256:ab", "http://10.0.2.100/blobs/sha256:ab"},
		{"https://user:secret@boot.example/root?token=t0p#frag", "https://boot.example/root?REDACTED"},
		{"http://h/x?", "http://h/x?REDACTED"},
		{"http://[::1", "(unparsable URL)"},
	} {
		if got := String(tc.in); got != tc.want {
			t.Errorf("String(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
