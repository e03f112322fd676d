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

// TestText: free text (a step's error, sent to the metadata server in a boot report) loses every
// URL's user info and query, every given secret and its control characters.
func TestText(t *testing.T) {
	for _, tc := range []struct {
		in      string
		secrets []string
		want    string
	}{
		{`Get "https://user:pw@10.0.0.1/v1/nodeconfig?t=tok3n": dial tcp: refused`, nil,
			`Get "https://10.0.0.1/v1/nodeconfig?REDACTED": dial tcp: refused`},
		{"fetch http://h/root?x=1 and https://h/b#f failed", nil, "fetch http://h/root?REDACTED and https://h/b failed"},
		{"kubeadm join --token abcdef.0123456789abcdef: exit 1", []string{"abcdef.0123456789abcdef", ""}, "kubeadm join --token REDACTED: exit 1"},
		{"line one\nline two\x1b[2J\ttab", nil, "line one line two [2J tab"},
		{"no URL here", nil, "no URL here"},
	} {
		if got := Text(tc.in, tc.secrets...); got != tc.want {
			t.Errorf("Text(%q) =\n %q, want\n %q", tc.in, got, tc.want)
		}
	}
}
