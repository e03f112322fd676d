package source

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// The checks of the URI values that reach a program as arguments (mmdebstrap) or a mirror's
// URL paths (deb://): each value is held to what Debian allows for the field, so none can be
// read as an option ("-x"), a path ("/tmp/x.deb", "../") or an apt pattern ("?essential").
var (
	// Debian Policy 5.6.1: at least two characters, lower case letters, digits, + - . and
	// starting with a letter or digit.
	debPackage = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	// A prefix of a package name (deb:// follow=, e.g. linux-image-).
	debPackagePrefix = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]*$`)
	// Debian Policy 5.6.12: [epoch:]upstream_version[-debian_revision]; upstream starts with a digit.
	debVersion = regexp.MustCompile(`^([0-9]+:)?[0-9][A-Za-z0-9.+~:-]*$`)
	// Suite and codename (Release "Suite"/"Codename"): letters, digits, ".", "-", "_", no leading "-".
	debSuite = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	// An archive component, possibly with a directory ("updates/main").
	debComponent = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$`)
	// A Debian architecture name (amd64, arm64, x32, kfreebsd-amd64).
	debArch = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)
)

// mmdebstrapVariants are the values mmdebstrap's --variant takes.
var mmdebstrapVariants = []string{"extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important", "debootstrap", "standard"}

// fieldError says which field of a URI holds what, and what it should hold.
func fieldError(field, value, expected string) error {
	return fmt.Errorf("%s %q: expected %s", field, value, expected)
}

func checkSuite(s string) error {
	if !debSuite.MatchString(s) || strings.Contains(s, "..") {
		return fieldError("suite", s, "a Debian suite or codename (letters, digits, '.', '-', '_', starting with a letter or digit), such as bookworm")
	}
	return nil
}

func checkPackage(s string) error {
	if !debPackage.MatchString(s) {
		return fieldError("package", s, "a Debian package name (two or more of a-z 0-9 + - ., starting with a letter or digit)")
	}
	return nil
}

// checkMirror accepts the URL of a Debian mirror: http(s)://HOST/… or file:///DIR, with no
// spaces or control characters (mmdebstrap reads "URL SUITE COMPONENT" as a sources.list line).
func checkMirror(s string) error {
	bad := func() error {
		return fieldError("mirror", s, "an http://, https:// or file:/// URL of a Debian mirror")
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return bad()
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad()
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" || strings.HasPrefix(u.Host, "-") {
			return bad()
		}
	case "file":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") || u.Opaque != "" {
			return bad()
		}
	default:
		return bad()
	}
	return nil
}

// checkMmdebstrap checks every value of an mmdebstrap:// URI that becomes an argument.
func (u URI) checkMmdebstrap() error {
	if err := checkSuite(u.Suite); err != nil {
		return err
	}
	if err := checkMirror(u.Location); err != nil {
		return err
	}
	if !slices.Contains(mmdebstrapVariants, u.Variant) {
		return fieldError("variant", u.Variant, "one of "+strings.Join(mmdebstrapVariants, ", "))
	}
	for _, p := range u.Packages {
		if err := checkPackage(p); err != nil {
			return err
		}
	}
	return nil
}

// checkDebRepo checks the values of a deb:// URI that end up in the mirror's URL paths.
func (u URI) checkDebRepo() error {
	if err := checkSuite(u.Suite); err != nil {
		return err
	}
	if err := checkPackage(u.Package); err != nil {
		return err
	}
	if u.Version != "" && !debVersion.MatchString(u.Version) {
		return fieldError("version", u.Version, "a Debian version ([EPOCH:]UPSTREAM[-REVISION], starting with a digit)")
	}
	if !debComponent.MatchString(u.Component) || strings.Contains(u.Component, "..") {
		return fieldError("component", u.Component, "a Debian archive component such as main or non-free-firmware")
	}
	if !debArch.MatchString(u.Arch) {
		return fieldError("arch", u.Arch, "a Debian architecture such as amd64")
	}
	if u.Follow != "" && !debPackagePrefix.MatchString(u.Follow) {
		return fieldError("follow", u.Follow, "the start of a Debian package name, such as linux-image-")
	}
	return nil
}
