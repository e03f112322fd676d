package serve

import (
	"regexp"
	"testing"
)

// TestValidHost: validHost accepts exactly what the regular expression it replaced did.
func TestValidHost(t *testing.T) {
	re := regexp.MustCompile(`^([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?$`)
	long := make([]byte, 254)
	for i := range long {
		long[i] = 'a'
	}
	for _, h := range []string{
		"boot.example", "boot.example:8080", "10.0.0.1", "10.0.0.1:80", "[fd00::1]", "[fd00::1]:443", "[::ffff:10.0.0.1]:80",
		"", ":80", "boot.example:", "boot.example:123456", "boot example", "boot.example:8a", "[fd00::1", "[g::1]", "[:]",
		"[fd00::1]x", "[fd00::1]:", "a:b:c", "${x}", "boot.example/path", string(long), string(long[:253]), string(long[:253]) + ":1",
		"[" + string(long[:46]) + "]", "host_name", "ÿ.example",
	} {
		if got, want := validHost(h), re.MatchString(h); got != want {
			t.Errorf("validHost(%q) = %v, the regular expression says %v", h, got, want)
		}
	}
}
