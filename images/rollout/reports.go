// Package rollout keeps the boot reports nodes send to imgctl serve and tells, per channel, how
// far a rollout has come: which image every node was served and what it reported, and how many
// nodes of a channel run its head.
//
// Reports live in the store directory (<store>/serve/reports), so they survive restarts and
// two server replicas on one store see the same: per node, NODE.json holds the newest record
// and history/NODE.json the last HistoryLimit records, oldest first. Both are replaced
// atomically (temp + fsync + rename) under a per-node flock (locks/NODE.lock), which excludes
// other goroutines, processes and replicas alike. A history that cannot be read is renamed to
// history/.corrupt-NODE.json-TIME (kept for inspection) by the node's next Save.
package rollout

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
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/nodeapi"
	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/layers/atomicfile"
	"github.com/imgctl/imgctl/layers/flock"
)

// HistoryLimit is how many records Save keeps per node (the newest).
const HistoryLimit = 50

// SchemaVersion is the version of the record and history files this package writes and reads.
const SchemaVersion = 1

// StoreDir is where a store keeps its boot reports: the dir to Open.
func StoreDir(storeDir string) string { return filepath.Join(storeDir, store.ServeDir, "reports") }

// Limits on the files read back: a record holds one report (at most nodeapi.MaxReportBytes as
// JSON) and a few short fields.
const (
	maxRecordFile  = 2 * nodeapi.MaxReportBytes
	maxHistoryFile = HistoryLimit * maxRecordFile
)

const (
	historyDir = "history"
	locksDir   = "locks"
	tempMaxAge = time.Hour
)

// Record is one boot report as the server received it, with what the server knows of the boot.
type Record struct {
	Node    string `json:"node"`              // the inventory machine name
	Channel string `json:"channel,omitempty"` // "" for a pinned image
	Role    string `json:"role,omitempty"`    // the role the inventory gives the machine
	// Image is the image the server served this boot (from the boot credential).
	Image    digest.Digest  `json:"image"`
	BootID   string         `json:"bootID,omitempty"`
	Addr     string         `json:"addr,omitempty"` // the address the report came from
	Received time.Time      `json:"received"`       // server clock, UTC; Save fills it when zero
	Report   nodeapi.Report `json:"report"`
}

var (
	// nodeNameRE is a DNS-1123 subdomain (a Kubernetes node name): it cannot be ".", ".." or
	// hold a '/', so it is safe as a file name.
	nodeNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	bootIDRE   = regexp.MustCompile(`^[0-9a-f]{0,64}$`)
	roleRE     = regexp.MustCompile(`^[A-Za-z]{0,32}$`)
)

// ValidateNode checks that name can be a node's record file name: a DNS-1123 subdomain of at
// most 253 characters.
func ValidateNode(name string) error {
	if len(name) > 253 || !nodeNameRE.MatchString(name) {
		return fmt.Errorf("node name %q: expected a DNS-1123 name (lower-case letters, digits, '-' and '.', at most 253)", clip(name))
	}
	return nil
}

// Validate checks every field of rec (the report with nodeapi's rules).
func (rec *Record) Validate() error {
	var errs []error
	if err := ValidateNode(rec.Node); err != nil {
		errs = append(errs, err)
	}
	if rec.Channel != "" {
		if err := channel.ValidateName(rec.Channel); err != nil {
			errs = append(errs, err)
		}
	}
	if !roleRE.MatchString(rec.Role) {
		errs = append(errs, fmt.Errorf("role %q: expected up to 32 letters", clip(rec.Role)))
	}
	if rec.Image.Validate() != nil || rec.Image.Algorithm() != digest.SHA256 {
		errs = append(errs, fmt.Errorf("image %q: expected sha256:HEX", clip(string(rec.Image))))
	}
	if !bootIDRE.MatchString(rec.BootID) {
		errs = append(errs, fmt.Errorf("boot ID %q: expected up to 64 hex digits", clip(rec.BootID)))
	}
	if len(rec.Addr) > 64 || strings.ContainsFunc(rec.Addr, func(r rune) bool { return r < 0x21 || r == 0x7f }) {
		errs = append(errs, fmt.Errorf("address %q: expected an IP address (and port)", clip(rec.Addr)))
	}
	if err := rec.Report.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("boot report record: %w", err)
	}
	return nil
}

// Reports is the boot report directory of a store. It is safe for concurrent use, also by
// several processes on one directory.
type Reports struct {
	dir string
	log *slog.Logger
}

// Open returns the reports kept in dir (StoreDir of a store); the directory is made by the
// first Save, so reading the reports of a store that has none writes nothing. Temp files that
// killed writers left behind more than an hour ago are removed.
func Open(dir string, logger *slog.Logger) (*Reports, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Reports{dir: filepath.Clean(dir), log: logger}
	fi, err := os.Stat(r.dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return r, nil
	case err != nil:
		return nil, fmt.Errorf("opening boot reports: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("opening boot reports: %s is not a directory", r.dir)
	}
	r.cleanTemps(time.Now().Add(-tempMaxAge))
	return r, nil
}

// Dir is the directory the reports are kept in.
func (r *Reports) Dir() string { return r.dir }

func (r *Reports) latestPath(node string) string { return filepath.Join(r.dir, node+".json") }
func (r *Reports) historyPath(node string) string {
	return filepath.Join(r.dir, historyDir, node+".json")
}

// cleanTemps removes the temp files of writers killed before cutoff (readers never look at
// them, so a live writer's is harmless; no write takes an hour).
func (r *Reports) cleanTemps(cutoff time.Time) {
	for _, d := range []string{r.dir, filepath.Join(r.dir, historyDir)} {
		temps, _ := filepath.Glob(filepath.Join(d, ".tmp-*"))
		for _, p := range temps {
			if fi, err := os.Lstat(p); err == nil && fi.ModTime().Before(cutoff) {
				if err := os.Remove(p); err == nil {
					r.log.Info("removed a stale temp file", "path", p)
				}
			}
		}
	}
}

// recordFile is NODE.json.
type recordFile struct {
	SchemaVersion int `json:"schemaVersion"`
	Record
}

// historyFile is history/NODE.json.
type historyFile struct {
	SchemaVersion int      `json:"schemaVersion"`
	Node          string   `json:"node"`
	Records       []Record `json:"records"` // oldest first (by Received)
}

// Save records rec: it joins the node's history (in time order; the oldest beyond HistoryLimit
// are dropped) and becomes the node's latest unless that is newer (a late report from another
// replica). Received is set to now (UTC) when zero. rec is validated first: a bad record writes
// nothing. The history is written before NODE.json: a crash between the two leaves the history
// one record ahead, and the node's next report puts them in step.
func (r *Reports) Save(ctx context.Context, rec Record) error {
	if rec.Received.IsZero() {
		rec.Received = time.Now()
	}
	rec.Received = rec.Received.UTC()
	if err := rec.Validate(); err != nil {
		return err
	}
	for _, d := range []string{r.dir, filepath.Join(r.dir, historyDir), filepath.Join(r.dir, locksDir)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("saving the boot report of %s: %w", rec.Node, err)
		}
	}
	lockPath := filepath.Join(r.dir, locksDir, rec.Node+".lock")
	unlock, err := flock.Lock(ctx, lockPath, 0o644, func() {
		r.log.Warn("waiting for another writer of the node's boot reports", "node", rec.Node, "lock", lockPath)
	})
	if err != nil {
		return fmt.Errorf("saving the boot report of %s: %w", rec.Node, err)
	}
	defer func() { _ = unlock() }()

	h, err := r.readHistory(rec.Node)
	if err != nil {
		// A corrupt history must not stop reports from being recorded: keep it aside for
		// inspection (readers skip dot files) and start anew.
		p := r.historyPath(rec.Node)
		aside := filepath.Join(filepath.Dir(p), fmt.Sprintf(".corrupt-%s-%d", filepath.Base(p), time.Now().UnixNano()))
		if rerr := os.Rename(p, aside); rerr != nil {
			return fmt.Errorf("saving the boot report of %s: %w (and setting it aside: %w)", rec.Node, err, rerr)
		}
		r.log.Warn("set an unreadable boot report history aside", "node", rec.Node, "err", err, "keptAs", aside)
		h = nil
	}
	i, _ := slices.BinarySearchFunc(h, rec.Received, func(e Record, t time.Time) int {
		if e.Received.After(t) {
			return 1
		}
		return -1 // equal times: after the ones already there
	})
	h = slices.Insert(h, i, rec)
	if len(h) > HistoryLimit {
		h = h[len(h)-HistoryLimit:]
	}
	if err := writeJSON(r.historyPath(rec.Node), historyFile{SchemaVersion: SchemaVersion, Node: rec.Node, Records: h}); err != nil {
		return fmt.Errorf("saving the boot report of %s: %w", rec.Node, err)
	}
	latest, err := r.readLatest(rec.Node)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		r.log.Warn("replacing an unreadable latest boot report", "node", rec.Node, "err", err)
	}
	if err == nil && latest.Received.After(rec.Received) {
		return nil
	}
	if err := writeJSON(r.latestPath(rec.Node), recordFile{SchemaVersion: SchemaVersion, Record: rec}); err != nil {
		return fmt.Errorf("saving the boot report of %s: %w", rec.Node, err)
	}
	r.log.Debug("saved boot report", "node", rec.Node, "phase", rec.Report.Phase, "ok", rec.Report.OK, "image", rec.Image)
	return nil
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write("", path, append(data, '\n'), 0o644)
}

// CorruptError is a record or history file that cannot be read or does not hold what its name
// says.
type CorruptError struct {
	Path string
	Err  error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("boot report file %s: %v (remove it; the node's next report writes it anew)", e.Path, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }

// Latest returns the newest record of every node, sorted by node name. Files that cannot be
// read are named in the error (each a *CorruptError) while the readable records are returned
// with it: one corrupt file hides no other node.
func (r *Reports) Latest(ctx context.Context) ([]Record, error) {
	ents, err := os.ReadDir(r.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading boot reports: %w", err)
	}
	var out []Record
	var errs []error
	for _, e := range ents {
		node, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() || ValidateNode(node) != nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rec, err := r.readLatest(node)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, rec)
	}
	// ReadDir sorts by file name; "a.json" < "a-b.json" is not the order of node names.
	slices.SortFunc(out, func(a, b Record) int { return strings.Compare(a.Node, b.Node) })
	return out, errors.Join(errs...)
}

// History returns the node's last records, oldest first (none for a node that never reported).
func (r *Reports) History(ctx context.Context, node string) ([]Record, error) {
	if err := ValidateNode(node); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return r.readHistory(node)
}

func (r *Reports) readLatest(node string) (Record, error) {
	p := r.latestPath(node)
	var f recordFile
	if err := readJSON(p, maxRecordFile, &f); err != nil {
		return Record{}, err
	}
	if err := checkVersion(p, f.SchemaVersion); err != nil {
		return Record{}, err
	}
	if err := checkRecord(p, node, &f.Record); err != nil {
		return Record{}, err
	}
	return f.Record, nil
}

func (r *Reports) readHistory(node string) ([]Record, error) {
	p := r.historyPath(node)
	var f historyFile
	if err := readJSON(p, maxHistoryFile, &f); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	if err := checkVersion(p, f.SchemaVersion); err != nil {
		return nil, err
	}
	if f.Node != node {
		return nil, &CorruptError{Path: p, Err: fmt.Errorf("holds the history of node %q", clip(f.Node))}
	}
	for i := range f.Records {
		if err := checkRecord(p, node, &f.Records[i]); err != nil {
			return nil, err
		}
	}
	return f.Records, nil
}

func checkVersion(path string, v int) error {
	if v != SchemaVersion {
		return &CorruptError{Path: path, Err: fmt.Errorf("schemaVersion %d (expected %d)", v, SchemaVersion)}
	}
	return nil
}

func checkRecord(path, node string, rec *Record) error {
	if rec.Node != node {
		return &CorruptError{Path: path, Err: fmt.Errorf("holds a record of node %q", clip(rec.Node))}
	}
	if err := rec.Validate(); err != nil {
		return &CorruptError{Path: path, Err: err}
	}
	return nil
}

// readJSON decodes the one JSON document in path (at most max bytes) into v. A missing file is
// fs.ErrNotExist; anything else wrong is a *CorruptError.
func readJSON(path string, max int64, v any) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return &CorruptError{Path: path, Err: err}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return &CorruptError{Path: path, Err: err}
	}
	if int64(len(data)) > max {
		return &CorruptError{Path: path, Err: fmt.Errorf("larger than %d bytes", max)}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return &CorruptError{Path: path, Err: err}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &CorruptError{Path: path, Err: errors.New("data after the JSON document")}
	}
	return nil
}

// clip shortens a value for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
