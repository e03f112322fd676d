package publication

import (
	"fmt"
	"strings"
)

// Tags imgctl puts on its snapshots and AMIs. A rerun finds an image's snapshot or AMI by
// TagImage; imgctl gc --aws removes only resources carrying it.
const (
	TagImage      = "imgctl:image"      // the image manifest's digest, sha256:HEX
	TagName       = "imgctl:name"       // the image's name
	TagVersion    = "imgctl:version"    // the image's readable version
	TagKubernetes = "imgctl:kubernetes" // Kubernetes version
	TagKernel     = "imgctl:kernel"     // kernel release
	TagState      = "imgctl:state"      // snapshots: "uploading" until completed, then "complete"
	TagParent     = "imgctl:parent"     // snapshots: the parent snapshot of an incremental upload
	TagTool       = "imgctl:tool"       // "imgctl VERSION"
)

// Values of TagState.
const (
	TagStateUploading = "uploading"
	TagStateComplete  = "complete"
)

// DefaultNamePrefix starts the names of imgctl's AMIs.
const DefaultNamePrefix = "imgctl-"

// AMIName is the AMI name of version under prefix. AWS allows 3 to 128 characters: letters,
// digits, ( ) [ ] space . / - ' @ _ ; the name is checked here so that a bad prefix fails
// before anything is uploaded.
func AMIName(prefix, version string) (string, error) {
	n := prefix + version
	if len(n) < 3 || len(n) > 128 {
		return "", fmt.Errorf("AMI name %q: expected 3 to 128 characters (shorten --name-prefix)", n)
	}
	for _, c := range n {
		if !isAlnum(c) && !strings.ContainsRune("()[] ./-'@_", c) {
			return "", fmt.Errorf("AMI name %q: %q is not allowed (letters, digits and ( ) [ ] space . / - ' @ _)", n, c)
		}
	}
	return n, nil
}

// CheckSSMPrefix accepts a parameter path prefix: "/" then "/"-separated segments of letters,
// digits, ".", "-" and "_", not under AWS's reserved /aws and /ssm, with room for the longest
// name imgctl puts under it.
func CheckSSMPrefix(p string) error {
	bad := func(why string) error {
		return fmt.Errorf("SSM prefix %q: %s (expected a path like /imgctl/nodes)", p, why)
	}
	if !strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") {
		return bad("must start with / and not end with one")
	}
	if len(p) > 900 {
		return bad("longer than 900 characters")
	}
	segs := strings.Split(p[1:], "/")
	if len(segs) > 10 {
		return bad("more than 10 levels (SSM allows 15, and imgctl adds 2)")
	}
	for _, s := range segs {
		if err := checkSegment(s); err != nil {
			return bad(err.Error())
		}
	}
	if first := strings.ToLower(segs[0]); first == "aws" || first == "ssm" {
		return bad("/aws and /ssm are reserved by AWS")
	}
	return nil
}

// VersionParameter is the SSM parameter naming the AMI of a version: PREFIX/VERSION/image_id.
func VersionParameter(prefix, version string) (string, error) { return parameter(prefix, version) }

// ChannelParameter is the SSM parameter naming the AMI a channel points to:
// PREFIX/CHANNEL/image_id (launch templates use resolve:ssm:PREFIX/CHANNEL/image_id).
func ChannelParameter(prefix, channel string) (string, error) { return parameter(prefix, channel) }

func parameter(prefix, name string) (string, error) {
	if err := CheckSSMPrefix(prefix); err != nil {
		return "", err
	}
	if err := checkSegment(name); err != nil {
		return "", fmt.Errorf("SSM parameter under %s: %q: %w", prefix, name, err)
	}
	return prefix + "/" + name + "/image_id", nil
}

func checkSegment(s string) error {
	if s == "" {
		return fmt.Errorf("empty path segment")
	}
	for _, c := range s {
		if !isAlnum(c) && c != '.' && c != '-' && c != '_' {
			return fmt.Errorf("%q is not allowed in a path segment (letters, digits, . - _)", c)
		}
	}
	return nil
}

func isAlnum(c rune) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
