// Package channel moves named, mutable pointers ("channels": nightly, staging, prod) between
// immutable images, with compare-and-swap and an append-only history. Images never change;
// promotion and rollback change which image a channel points to.
package channel

import (
	"errors"
	"time"

	"github.com/opencontainers/go-digest"
)

// Actions recorded in a channel's history.
const (
	ActionPromote  = "promote"
	ActionRollback = "rollback"
)

// HistoryMediaType is the media type of a channel history document (a JSON History), as a blob
// in an OCI layout or registry.
const HistoryMediaType = "application/vnd.imgctl.channel.history.v1+json"

// HistoryArtifactType is the artifactType of the manifest that carries a history in a registry.
const HistoryArtifactType = "application/vnd.imgctl.channel.history.v1"

// Errors callers branch on (test with errors.Is).
var (
	// ErrConflict: the channel's head is not what the caller expected (another promoter won).
	ErrConflict = errors.New("channel head changed")
	// ErrUnknownChannel: the channel is not configured.
	ErrUnknownChannel = errors.New("unknown channel")
	// ErrEmpty: the channel has never pointed to an image.
	ErrEmpty = errors.New("channel is empty")
	// ErrSkippedStage: the image was never in the previous channel (promote with --force).
	ErrSkippedStage = errors.New("image was not in the previous channel")
)

// Entry is one move of a channel: append-only, never rewritten.
type Entry struct {
	Seq     int           `json:"seq"` // 1, 2, … per channel
	Channel string        `json:"channel"`
	Action  string        `json:"action"`         // ActionPromote or ActionRollback
	From    digest.Digest `json:"from,omitempty"` // the head before ("" for the first move)
	To      digest.Digest `json:"to"`
	// FromVersion and ToVersion are the images' readable versions, for people reading history.
	FromVersion string    `json:"fromVersion,omitempty"`
	ToVersion   string    `json:"toVersion,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	Forced      bool      `json:"forced,omitempty"` // a stage was skipped with --force
	Who         string    `json:"who"`              // user@host
	When        time.Time `json:"when"`             // UTC
	Tool        string    `json:"tool"`             // "imgctl VERSION"
}

// History is a channel's whole history, oldest first, as stored.
type History struct {
	SchemaVersion int     `json:"schemaVersion"` // 1
	Channel       string  `json:"channel"`
	Entries       []Entry `json:"entries"`
}

// Head is the image the history points to now: the To of its last entry ("" if empty).
func (h History) Head() digest.Digest {
	if len(h.Entries) == 0 {
		return ""
	}
	return h.Entries[len(h.Entries)-1].To
}

// DefaultOrder is the promotion order of a store that configured none.
var DefaultOrder = []string{"nightly", "staging", "prod"}
