package channel

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/atomicfile"
	"github.com/imgctl/imgctl/layers/flock"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Names inside a store directory. OCI tools ignore extra files in a layout.
const (
	channelsDir  = "channels"
	orderName    = "order" // order.json and order.lock; so no channel may be called "order"
	tempPrefix   = ".tmp-" // atomicfile's temp files
	staleTempAge = time.Hour
)

// SchemaVersion is the only History.SchemaVersion (and order.json schemaVersion) this package
// writes and accepts.
const SchemaVersion = 1

// DefaultTool is Entry.Tool when the caller names none.
const DefaultTool = "imgctl dev"

// nameRE is what a channel name may look like: a DNS-1123 label.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Log is the channels of one local store, kept in its channels/ directory: order.json (the
// promotion order) and one NAME.json per channel holding its whole History, the only state.
// It is safe for concurrent use by goroutines and by processes sharing the directory.
type Log struct {
	// Verify, if set, is the signature policy: Promote and Rollback call it for the target
	// image before moving a channel, and a non-nil error refuses the move.
	Verify func(ctx context.Context, img store.Image) error

	dir string // STORE/channels
	log *slog.Logger

	mu   sync.Mutex
	sems map[string]chan struct{} // per lock file: serializes this process's goroutines
}

// orderFile is the content of channels/order.json.
type orderFile struct {
	SchemaVersion int      `json:"schemaVersion"`
	Channels      []string `json:"channels"`
}

// Open opens the channels of the OCI image layout at storeDir, which must exist (open the
// store first). It creates the channels directory if missing and removes temporary files older
// than an hour left there by writers that died.
func Open(storeDir string, logger *slog.Logger) (*Log, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	storeDir = filepath.Clean(storeDir)
	if _, err := os.Stat(filepath.Join(storeDir, ocispec.ImageLayoutFile)); err != nil {
		return nil, fmt.Errorf("opening channels: %s is not an OCI image layout (open the store first): %w", storeDir, err)
	}
	l := &Log{dir: filepath.Join(storeDir, channelsDir), log: logger, sems: map[string]chan struct{}{}}
	if err := os.MkdirAll(l.dir, 0o755); err != nil {
		return nil, fmt.Errorf("opening channels: %w", err)
	}
	if err := l.cleanTemps(time.Now().Add(-staleTempAge)); err != nil {
		return nil, err
	}
	return l, nil
}

// Dir is the channels directory.
func (l *Log) Dir() string { return l.dir }

// cleanTemps removes temp files last modified before cutoff. Readers never look at them, so a
// temp file of a live writer is harmless; an hour is far longer than any write takes.
func (l *Log) cleanTemps(cutoff time.Time) error {
	entries, err := os.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("cleaning temporary files: %w", err)
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), tempPrefix) {
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("cleaning temporary files: %w", err)
		}
		if info.ModTime().After(cutoff) {
			continue
		}
		p := filepath.Join(l.dir, e.Name())
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cleaning temporary files: %w", err)
		}
		l.log.Info("removed stale temporary file", "path", p, "modified", info.ModTime())
	}
	return nil
}

// ValidateName reports whether name can be a channel: a DNS-1123 label (lower-case
// alphanumerics and '-', 1 to 63 characters, starting and ending with an alphanumeric), and
// not "order", which names the order file.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("channel name %q: want 1 to 63 lower-case letters, digits or '-', starting and ending with a letter or digit", name)
	}
	if name == orderName {
		return fmt.Errorf("channel name %q is reserved", name)
	}
	return nil
}

func validateOrder(order []string) error {
	if len(order) == 0 {
		return errors.New("promotion order: at least one channel is needed")
	}
	for i, name := range order {
		if err := ValidateName(name); err != nil {
			return fmt.Errorf("promotion order: %w", err)
		}
		if slices.Contains(order[:i], name) {
			return fmt.Errorf("promotion order: channel %q listed twice", name)
		}
	}
	return nil
}

// Order is the promotion order: images move from each channel to the next. A store that never
// configured one has DefaultOrder.
func (l *Log) Order() ([]string, error) {
	p := filepath.Join(l.dir, orderName+".json")
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return slices.Clone(DefaultOrder), nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading promotion order: %w", err)
	}
	var of orderFile
	if err := json.Unmarshal(data, &of); err != nil {
		return nil, fmt.Errorf("reading promotion order: %s: %w", p, err)
	}
	if of.SchemaVersion != SchemaVersion {
		return nil, fmt.Errorf("reading promotion order: %s: schemaVersion %d, want %d", p, of.SchemaVersion, SchemaVersion)
	}
	if err := validateOrder(of.Channels); err != nil {
		return nil, fmt.Errorf("reading %s: %w", p, err)
	}
	return of.Channels, nil
}

// SetOrder configures the promotion order. Channels left out keep their history files, but
// are unknown until configured again.
func (l *Log) SetOrder(ctx context.Context, order []string) error {
	if err := validateOrder(order); err != nil {
		return err
	}
	data, err := json.MarshalIndent(orderFile{SchemaVersion: SchemaVersion, Channels: order}, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding promotion order: %w", err)
	}
	unlock, err := l.lock(ctx, orderName)
	if err != nil {
		return fmt.Errorf("setting promotion order: %w", err)
	}
	defer unlock()
	if err := atomicfile.Write(l.dir, filepath.Join(l.dir, orderName+".json"), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing promotion order: %w", err)
	}
	l.log.Info("set promotion order", "order", order)
	return nil
}

// known returns the order and an error wrapping ErrUnknownChannel if ch is not in it.
func (l *Log) known(ch string) ([]string, error) {
	order, err := l.Order()
	if err != nil {
		return nil, err
	}
	if !slices.Contains(order, ch) {
		return order, fmt.Errorf("channel %q: %w (the promotion order is %s)", ch, ErrUnknownChannel, strings.Join(order, ", "))
	}
	return order, nil
}

// History returns the whole history of channel ch, oldest first; an empty History (no entries)
// for a configured channel that never moved.
func (l *Log) History(ctx context.Context, ch string) (History, error) {
	if err := ctx.Err(); err != nil {
		return History{}, err
	}
	if _, err := l.known(ch); err != nil {
		return History{}, err
	}
	return l.readHistory(ch)
}

func (l *Log) historyPath(ch string) string { return filepath.Join(l.dir, ch+".json") }

// readHistory reads and checks NAME.json. Writers replace it atomically, so no lock is needed.
func (l *Log) readHistory(ch string) (History, error) {
	p := l.historyPath(ch)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return History{SchemaVersion: SchemaVersion, Channel: ch, Entries: []Entry{}}, nil
	}
	if err != nil {
		return History{}, fmt.Errorf("reading history of channel %s: %w", ch, err)
	}
	var h History
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&h); err != nil {
		return History{}, fmt.Errorf("reading history of channel %s: %s: %w", ch, p, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return History{}, fmt.Errorf("reading history of channel %s: %s: data after the JSON document (offset %d)", ch, p, dec.InputOffset())
	}
	if err := h.Check(ch); err != nil {
		return History{}, fmt.Errorf("reading history of channel %s: %s: %w", ch, p, err)
	}
	if h.Entries == nil {
		h.Entries = []Entry{}
	}
	return h, nil
}

// Check verifies the invariants of channel ch's history, wherever it was stored: the schema,
// the channel, Seq 1, 2, …, known actions and every From equal to the previous To.
func (h History) Check(ch string) error {
	if h.SchemaVersion != SchemaVersion {
		return fmt.Errorf("schemaVersion %d, want %d", h.SchemaVersion, SchemaVersion)
	}
	if h.Channel != ch {
		return fmt.Errorf("history of channel %q, want %q", h.Channel, ch)
	}
	var prev digest.Digest
	for i, e := range h.Entries {
		switch {
		case e.Seq != i+1:
			return fmt.Errorf("entries[%d]: seq %d, want %d", i, e.Seq, i+1)
		case e.Channel != ch:
			return fmt.Errorf("entry %d: channel %q, want %q", e.Seq, e.Channel, ch)
		case e.Action != ActionPromote && e.Action != ActionRollback:
			return fmt.Errorf("entry %d: unknown action %q", e.Seq, e.Action)
		case e.From != prev:
			return fmt.Errorf("entry %d: from %q, but the previous entry moved to %q", e.Seq, e.From, prev)
		}
		if err := e.To.Validate(); err != nil {
			return fmt.Errorf("entry %d: to %q: %w", e.Seq, e.To, err)
		}
		prev = e.To
	}
	return nil
}

// Move appends e to channel ch's history if the channel's head is expect ("" for a channel
// that never moved): a compare-and-swap under the channel's lock. If the head is another
// image, nothing changes and the error wraps ErrConflict, naming both. Seq, Channel, From,
// FromVersion and When (UTC) are filled in when zero (and must be right when not); Who and Tool
// get defaults. e.Action must be ActionPromote or ActionRollback and e.To must differ from the
// head. Move does not check the image: Promote and Rollback do.
//
// The history is written whole to a temp file, fsynced and renamed over NAME.json, and the
// directory fsynced, so a crash at any point leaves either the old history or the new one.
func (l *Log) Move(ctx context.Context, ch string, expect digest.Digest, e Entry) (Entry, error) {
	if _, err := l.known(ch); err != nil {
		return Entry{}, err
	}
	if err := e.To.Validate(); err != nil {
		return Entry{}, fmt.Errorf("moving channel %s: image %q: %w", ch, e.To, err)
	}
	if expect != "" {
		if err := expect.Validate(); err != nil {
			return Entry{}, fmt.Errorf("moving channel %s: expected head %q: %w", ch, expect, err)
		}
	}
	switch {
	case e.Action != ActionPromote && e.Action != ActionRollback:
		return Entry{}, fmt.Errorf("moving channel %s to %s: unknown action %q", ch, e.To, e.Action)
	case e.Channel != "" && e.Channel != ch:
		return Entry{}, fmt.Errorf("moving channel %s to %s: entry is for channel %q", ch, e.To, e.Channel)
	case e.From != "" && e.From != expect:
		return Entry{}, fmt.Errorf("moving channel %s to %s: entry moves from %s, but the expected head is %s", ch, e.To, e.From, show(expect))
	}
	e.Channel, e.From = ch, expect
	if e.When.IsZero() {
		e.When = time.Now()
	}
	e.When = e.When.UTC()
	if e.Who == "" {
		e.Who = DefaultWho()
	}
	if e.Tool == "" {
		e.Tool = DefaultTool
	}

	unlock, err := l.lock(ctx, ch)
	if err != nil {
		return Entry{}, fmt.Errorf("moving channel %s: %w", ch, err)
	}
	defer unlock()
	h, err := l.readHistory(ch)
	if err != nil {
		return Entry{}, err
	}
	if head := h.Head(); head != expect {
		return Entry{}, fmt.Errorf("channel %s moved from %s to %s while %s %s; retry: %w",
			ch, show(expect), show(head), verb(e.Action), e.To, ErrConflict)
	}
	if e.To == expect {
		return Entry{}, fmt.Errorf("moving channel %s: it already points to %s", ch, e.To)
	}
	next := len(h.Entries) + 1
	if e.Seq != 0 && e.Seq != next {
		return Entry{}, fmt.Errorf("channel %s: entry has seq %d, but the next is %d: %w", ch, e.Seq, next, ErrConflict)
	}
	e.Seq = next
	if len(h.Entries) > 0 && e.FromVersion == "" {
		e.FromVersion = h.Entries[len(h.Entries)-1].ToVersion
	}
	if err := ctx.Err(); err != nil {
		return Entry{}, fmt.Errorf("moving channel %s: %w", ch, err)
	}
	h.Entries = append(h.Entries, e)
	data, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return Entry{}, fmt.Errorf("encoding history of channel %s: %w", ch, err)
	}
	if err := atomicfile.Write(l.dir, l.historyPath(ch), append(data, '\n'), 0o644); err != nil {
		return Entry{}, fmt.Errorf("writing history of channel %s: %w", ch, err)
	}
	l.log.Info("moved channel", "channel", ch, "action", e.Action, "seq", e.Seq,
		"from", e.From, "to", e.To, "version", e.ToVersion, "forced", e.Forced, "who", e.Who)
	return e, nil
}

// show prints a head, which may be empty.
func show(d digest.Digest) string {
	if d == "" {
		return "(empty)"
	}
	return d.String()
}

func verb(action string) string {
	if action == ActionRollback {
		return "rolling back to"
	}
	return "promoting"
}

// DefaultWho is Entry.Who when the caller names none: $USER@hostname.
func DefaultWho() string {
	u := os.Getenv("USER")
	if u == "" {
		if cu, err := user.Current(); err == nil {
			u = cu.Username
		} else {
			u = "unknown"
		}
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "unknown"
	}
	return u + "@" + h
}

// lock takes the exclusive lock name.lock in the channels directory: first a per-name
// semaphore (so this process's goroutines wait on a channel, which honours ctx), then flock(2)
// on the file, polled so that waiting honours ctx too. flock locks belong to the open file, so
// they exclude other processes and other Logs on the same directory alike, and the kernel drops
// them when a holder dies.
func (l *Log) lock(ctx context.Context, name string) (unlock func(), err error) {
	l.mu.Lock()
	sem, ok := l.sems[name]
	if !ok {
		sem = make(chan struct{}, 1)
		l.sems[name] = sem
	}
	l.mu.Unlock()
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for lock %s: %w", name, ctx.Err())
	}
	release := func() { <-sem }

	unlockFile, err := flock.Lock(ctx, filepath.Join(l.dir, name+".lock"), 0o644, func() {
		l.log.Info("waiting for a channel lock held by another process", "lock", name)
	})
	if err != nil {
		release()
		return nil, err
	}
	return func() {
		_ = unlockFile()
		release()
	}, nil
}
