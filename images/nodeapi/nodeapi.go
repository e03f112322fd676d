// Package nodeapi is the HTTP contract between the imgctl metadata server (imgctl serve) and
// the node agent: the paths, the headers, the boot report document and its limits. Both sides
// import it, so neither can drift. It is a leaf: the standard library only.
package nodeapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"
)

// Paths, relative to the metadata server's base URL (the value of imgctl.metadata=).
const (
	// NodeConfigPath answers GET with the node's NodeConfig (YAML): the public part without a
	// credential, the whole document with the node's valid credential.
	NodeConfigPath = "/v1/nodeconfig"
	// ReportPath takes POST of a Report (JSON) with the node's credential.
	ReportPath = "/v1/reports"
)

// Authentication: "Authorization: Bearer CREDENTIAL".
const (
	AuthorizationHeader = "Authorization"
	BearerPrefix        = "Bearer "
)

// Bearer is the Authorization header value for a credential.
func Bearer(credential string) string { return BearerPrefix + credential }

// CredentialFromHeader returns the credential of an Authorization header value ("" if it is
// not a bearer credential). The scheme is matched case-insensitively (RFC 9110).
func CredentialFromHeader(v string) string {
	if len(v) < len(BearerPrefix) || !strings.EqualFold(v[:len(BearerPrefix)], BearerPrefix) {
		return ""
	}
	return strings.TrimSpace(v[len(BearerPrefix):])
}

// Media types.
const (
	NodeConfigMediaType = "application/yaml"
	ReportMediaType     = "application/json"
)

// Phase is the point of a boot a report is sent from.
type Phase string

// Phases.
const (
	PhaseInit      Phase = "init"      // the initrd's init, before switching root
	PhaseConfigure Phase = "configure" // kube-node-configuration, after the node is configured
	// PhaseUpdate is an in-place update's outcome, sent only once it is known: ok when the new
	// slot proved itself (blessed after a healthy kubelet), failed when it used up its boot
	// tries and the node fell back. Report.Image and Version name the update's image.
	PhaseUpdate Phase = "update"
)

// Phases lists every valid Phase.
var Phases = []Phase{PhaseInit, PhaseConfigure, PhaseUpdate}

// Step statuses.
const (
	StatusOK   = "ok"
	StatusFail = "fail"
	StatusSkip = "skip"
)

// Limits of a report: the server rejects anything larger with 400.
const (
	MaxReportBytes = 64 << 10
	MaxSteps       = 64
	maxText        = 512
	maxVersion     = 128
)

// Report is what a node tells the server about one phase of its boot.
type Report struct {
	Phase Phase `json:"phase"`
	// OK is false when a step failed; Failed names the first failed step.
	OK     bool   `json:"ok"`
	Failed string `json:"failed,omitempty"`
	// RootDigest is the sha256:HEX digest of the root image the node runs (imgctl.root-digest,
	// or the booted partition's image); the server compares it with the image it served.
	RootDigest string `json:"rootDigest,omitempty"`
	// Role is the role the node configured (master, masterFollower, node), after configure.
	Role string `json:"role,omitempty"`
	// Image and Version name the image a PhaseUpdate report is about: its manifest digest
	// sha256:HEX and its version.
	Image   string `json:"image,omitempty"`
	Version string `json:"version,omitempty"`
	Steps   []Step `json:"steps"`
	// Time is when the node sent the report (the node's clock; the server records its own).
	Time time.Time `json:"time"`
}

// Step is one boot step's result, as the console line showed it.
type Step struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Millis int64  `json:"ms"`
	Error  string `json:"error,omitempty"`
}

var (
	stepName   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)
	rootDigest = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	roleName   = regexp.MustCompile(`^[A-Za-z]{1,32}$`)
)

// ParseReport decodes and validates a report strictly: at most MaxReportBytes, no unknown
// fields, no second document, every field well-formed. Errors name the field.
func ParseReport(data []byte) (*Report, error) {
	if len(data) > MaxReportBytes {
		return nil, fmt.Errorf("report is %d bytes (expected at most %d)", len(data), MaxReportBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r Report
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("report: more than one JSON value")
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Validate checks every field of r.
func (r *Report) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("report: %s: %s", field, fmt.Sprintf(format, a...)))
	}
	switch r.Phase {
	case PhaseInit, PhaseConfigure, PhaseUpdate:
	default:
		bad("phase", "%q is not a phase (expected init, configure or update)", clip(string(r.Phase)))
	}
	if r.Failed != "" && !stepName.MatchString(r.Failed) {
		bad("failed", "%q is not a step name", clip(r.Failed))
	}
	if r.OK && r.Failed != "" {
		bad("failed", "set on a report that is ok")
	}
	if !r.OK && r.Failed == "" {
		bad("failed", "required when ok is false")
	}
	if r.RootDigest != "" && !rootDigest.MatchString(r.RootDigest) {
		bad("rootDigest", "%q is not sha256:HEX", clip(r.RootDigest))
	}
	if r.Image != "" && !rootDigest.MatchString(r.Image) {
		bad("image", "%q is not sha256:HEX", clip(r.Image))
	}
	if len(r.Version) > maxVersion || strings.ContainsFunc(r.Version, isControl) {
		bad("version", "longer than %d bytes or has control characters", maxVersion)
	}
	if r.Role != "" && !roleName.MatchString(r.Role) {
		bad("role", "%q is not a role name", clip(r.Role))
	}
	if len(r.Steps) > MaxSteps {
		bad("steps", "%d steps (expected at most %d)", len(r.Steps), MaxSteps)
	}
	for i, s := range r.Steps {
		if i >= MaxSteps {
			break
		}
		f := fmt.Sprintf("steps[%d]", i)
		if !stepName.MatchString(s.Name) {
			bad(f+".name", "%q is not a step name", clip(s.Name))
		}
		switch s.Status {
		case StatusOK, StatusFail, StatusSkip:
		default:
			bad(f+".status", "%q (expected ok, fail or skip)", clip(s.Status))
		}
		if s.Millis < 0 {
			bad(f+".ms", "negative")
		}
		if len(s.Error) > maxText || strings.ContainsFunc(s.Error, isControl) {
			bad(f+".error", "longer than %d bytes or has control characters", maxText)
		}
	}
	if r.Time.IsZero() {
		bad("time", "required")
	}
	return errors.Join(errs...)
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// clip shortens a hostile value for an error message.
func clip(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return s
}
