// Package updatestate holds the node's update files: the update section of its NodeConfig as
// configure persisted it (ConfigPath, read by imgctl-node update) and the update agent's own
// record (StatePath, on STATE): the images that failed on this node (never retried
// automatically), the image staged in the inactive slot, and the last check.
//
// Writes are temp + fsync + rename + directory fsync. A missing state file is an empty state; a
// corrupt one is renamed aside (PATH.corrupt-TIME) with a warning and the state starts empty,
// so a damaged file never stops updates for good and is kept for inspection.
package updatestate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/imgctl/imgctl/images/nodeconfig"
	"github.com/imgctl/imgctl/layers/atomicfile"
)

// Paths on the node.
const (
	// ConfigPath is spec.update of the node's NodeConfig, defaults applied, as JSON; written by
	// imgctl-node configure at every boot (absent: the node's config has no update section).
	ConfigPath = "/run/imgctl/update.json"
	// StatePath is the update agent's record on STATE (/var), kept across boots and images.
	StatePath = "/var/lib/imgctl/update/state.json"
)

// maxFile bounds what Load and ReadConfig read: a state of a few hundred failed images is a few
// hundred KiB.
const maxFile = 1 << 20

// State is the update agent's record.
type State struct {
	// Failed lists the images that failed on this node, once each, oldest first.
	Failed []Failed `json:"failed"`
	// Staged is the image written into the inactive slot and not yet blessed; nil: none.
	Staged *Staged `json:"staged,omitempty"`
	// LastCheck is when the agent last asked the server (zero: never).
	LastCheck time.Time `json:"lastCheck,omitzero"`
}

// Failed is an image that did not prove itself on this node (its slot ran out of boot tries).
type Failed struct {
	Image   string    `json:"image"`             // manifest digest sha256:HEX
	Root    string    `json:"root,omitempty"`    // root blob digest sha256:HEX
	Version string    `json:"version,omitempty"` // the image's version, for people
	Reason  string    `json:"reason,omitempty"`
	Time    time.Time `json:"time,omitzero"`
}

// Staged is the image installed in Slot and waiting for its first good boot.
type Staged struct {
	Slot    string    `json:"slot"` // "a" or "b"
	Image   string    `json:"image"`
	Root    string    `json:"root,omitempty"`
	Version string    `json:"version,omitempty"`
	Time    time.Time `json:"time,omitzero"`
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// HasFailed reports whether the image (manifest digest) failed on this node before.
func (s State) HasFailed(image string) bool {
	for _, f := range s.Failed {
		if f.Image == image {
			return true
		}
	}
	return false
}

// AddFailed records f unless its image is already recorded (the first record is kept).
func (s *State) AddFailed(f Failed) {
	if !s.HasFailed(f.Image) {
		s.Failed = append(s.Failed, f)
	}
}

func (s State) check() error {
	var errs []error
	for i, f := range s.Failed {
		if !digestRE.MatchString(f.Image) {
			errs = append(errs, fmt.Errorf("failed[%d].image: %q is not sha256:HEX", i, f.Image))
		}
		if f.Root != "" && !digestRE.MatchString(f.Root) {
			errs = append(errs, fmt.Errorf("failed[%d].root: %q is not sha256:HEX", i, f.Root))
		}
	}
	if st := s.Staged; st != nil {
		if st.Slot != "a" && st.Slot != "b" {
			errs = append(errs, fmt.Errorf("staged.slot: %q (expected a or b)", st.Slot))
		}
		if !digestRE.MatchString(st.Image) {
			errs = append(errs, fmt.Errorf("staged.image: %q is not sha256:HEX", st.Image))
		}
		if st.Root != "" && !digestRE.MatchString(st.Root) {
			errs = append(errs, fmt.Errorf("staged.root: %q is not sha256:HEX", st.Root))
		}
	}
	return errors.Join(errs...)
}

// Load reads the state at path. A missing file is an empty State. A file that is not a valid
// state is renamed to PATH.corrupt-UNIXNANO, logged as a warning naming both paths, and Load
// returns an empty State: the node forgets its failed images rather than never updating
// again. Errors are for files it cannot read or move.
func Load(path string, logger *slog.Logger) (State, error) {
	data, err := readLimited(path)
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, err
	}
	var s State
	err = decodeStrict(data, &s)
	if err == nil {
		err = s.check()
	}
	if err != nil {
		return State{}, moveAside(path, err, logger)
	}
	return s, nil
}

func moveAside(path string, cause error, logger *slog.Logger) error {
	aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().UnixNano())
	if err := os.Rename(path, aside); err != nil {
		return fmt.Errorf("update state %s is corrupt (%v) and cannot be moved aside: %w", path, cause, err)
	}
	logger.Warn("update state is corrupt: moved aside, starting with an empty state (failed images forgotten)",
		"path", path, "movedTo", aside, "err", cause)
	return nil
}

// Save writes s to path (temp + fsync + rename + directory fsync), creating its directory.
func Save(path string, s State) error {
	if err := s.check(); err != nil {
		return fmt.Errorf("update state %s: %w", path, err)
	}
	if s.Failed == nil {
		s.Failed = []Failed{}
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return write(path, append(data, '\n'), 0o600)
}

// WriteConfig persists u (spec.update, defaults applied) at path as JSON.
func WriteConfig(path string, u nodeconfig.Update) error {
	if err := u.Validate(); err != nil {
		return fmt.Errorf("update config %s: %w", path, err)
	}
	data, err := json.MarshalIndent(u, "", "  ")
	if err != nil {
		return err
	}
	return write(path, append(data, '\n'), 0o644)
}

// ReadConfig reads the update section configure persisted. ok is false when the file does
// not exist (no update section this boot). A file that is not a valid section is an error
// naming the path and the field.
func ReadConfig(path string) (u nodeconfig.Update, ok bool, err error) {
	data, err := readLimited(path)
	if errors.Is(err, fs.ErrNotExist) {
		return u, false, nil
	}
	if err != nil {
		return u, false, err
	}
	if err := decodeStrict(data, &u); err != nil {
		return u, false, fmt.Errorf("update config %s: %w", path, err)
	}
	if err := u.Validate(); err != nil {
		return u, false, fmt.Errorf("update config %s: %w", path, err)
	}
	return u, true, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(data) > maxFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxFile)
	}
	return data, nil
}

func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("more than one JSON value")
	}
	return nil
}

func write(path string, data []byte, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := atomicfile.Write("", path, data, perm); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
