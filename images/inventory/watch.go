package inventory

import (
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultPoll is how often Run looks at the inventory's files when given no interval.
const DefaultPoll = 2 * time.Second

// maxLoggedProblems bounds the log lines one failed reload writes.
const maxLoggedProblems = 20

// Watcher holds the current inventory of a file and replaces it, whole, when the file (or a
// secretFile it names) changes or Reload is called. Readers call Current, which never blocks
// and never sees a half-loaded inventory. A file that does not load, or that check refuses,
// leaves the previous inventory in place; its problems are logged once per change.
type Watcher struct {
	path   string
	check  func(*Inventory) error
	logger *slog.Logger

	cur atomic.Pointer[Inventory]

	mu        sync.Mutex // serializes loads; guards what follows
	stamps    []stamp    // the files of the last load attempt, as stat saw them before it
	stampedAt time.Time
	lastSum   [32]byte // their content, hashed together
	lastOK    bool     // and whether that attempt became current
}

// stamp is what stat says of a file: cheap to compare on every poll.
type stamp struct {
	path    string
	exists  bool
	size    int64
	mtime   time.Time
	ino     uint64
	ctimeNs int64
}

// NewWatcher loads the inventory at path, which must load and pass check (nil: no check), for
// example Inventory.CheckChannels with the store's channels. logger may be nil.
func NewWatcher(ctx context.Context, path string, check func(*Inventory) error, logger *slog.Logger) (*Watcher, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	w := &Watcher{path: path, check: check, logger: logger}
	w.mu.Lock()
	defer w.mu.Unlock()
	inv, err := w.attempt()
	if err != nil {
		return nil, err
	}
	w.logger.Info("inventory loaded", "file", path, "machines", len(inv.Machines))
	return w, nil
}

// Current returns the inventory in use: never nil, never blocks.
func (w *Watcher) Current() *Inventory { return w.cur.Load() }

// Reload loads the file now (on SIGHUP, say). If it does not load or check refuses it, the
// previous inventory stays, every problem is logged with its file, line and field, and the
// error is returned.
func (w *Watcher) Reload(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err := w.load(true)
	return err
}

// Run reloads the inventory when its files change, looking every poll (DefaultPoll if not
// positive), until ctx ends. A change is a different content hash; stat tells cheaply when to
// hash. A bad file is logged once, not on every poll.
func (w *Watcher) Run(ctx context.Context, poll time.Duration) {
	if poll <= 0 {
		poll = DefaultPoll
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		if w.changedOnDisk() {
			_, _ = w.load(false) // logged
		}
		w.mu.Unlock()
	}
}

// load attempts a load and, if its content differs from the last attempt's or force is set,
// logs the outcome. It reports whether the content changed.
func (w *Watcher) load(force bool) (changed bool, err error) {
	prev := w.lastSum
	inv, err := w.attempt()
	changed = w.lastSum != prev
	switch {
	case err != nil && (changed || force):
		w.logProblems(err)
	case err == nil && (changed || force):
		w.logger.Info("inventory reloaded", "file", w.path, "machines", len(inv.Machines))
	}
	return changed, err
}

// attempt loads and checks the inventory, records what it read, and on success makes it current.
func (w *Watcher) attempt() (*Inventory, error) {
	before := time.Now()
	pre := statAll(append([]string{w.path}, w.paths()...))
	inv, files, err := load(w.path)
	if err == nil && w.check != nil {
		if err = w.check(inv); err != nil {
			inv = nil
		}
	}
	// Stamps of the files read, taken before reading them: a write during the load shows as a
	// change at the next poll. Files not stat'ed before (a new secretFile) are stat'ed now, and
	// stampedAt makes changedOnDisk rehash them while their mtime is that recent.
	paths := []string{w.path}
	for _, f := range files {
		if f.path != w.path {
			paths = append(paths, f.path)
		}
	}
	w.stamps = make([]stamp, len(paths))
	for i, p := range paths {
		if s, ok := findStamp(pre, p); ok {
			w.stamps[i] = s
		} else {
			w.stamps[i] = statFile(p)
		}
	}
	w.stampedAt = before
	h := sha256.New()
	for _, f := range files {
		h.Write([]byte(f.path))
		h.Write([]byte{0})
		h.Write(f.sum[:])
	}
	if err != nil {
		h.Write([]byte("failed"))
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	same := sum == w.lastSum && w.lastOK
	w.lastSum, w.lastOK = sum, err == nil
	if err != nil {
		return nil, err
	}
	if same { // what readers have is this content already: keep it
		return w.cur.Load(), nil
	}
	for _, warning := range inv.Warnings {
		w.logger.Warn("inventory: "+warning, "file", w.path)
	}
	w.cur.Store(inv)
	return inv, nil
}

// paths lists the files the last attempt stamped (the inventory and its secret files).
func (w *Watcher) paths() []string {
	var ps []string
	for _, s := range w.stamps {
		if s.path != w.path {
			ps = append(ps, s.path)
		}
	}
	return ps
}

// changedOnDisk reports whether any file of the last attempt may have changed: its stat differs,
// or its mtime is so close to the last load that a same-second write could hide behind it.
func (w *Watcher) changedOnDisk() bool {
	for _, s := range w.stamps {
		now := statFile(s.path)
		if now != s {
			return true
		}
		if s.exists && s.mtime.After(w.stampedAt.Add(-time.Second)) && s.mtime.Before(w.stampedAt.Add(time.Second)) {
			// "Racy": on a file system with coarse timestamps, a write in the same tick as the
			// load would not change the stat. Rehash; the content hash decides. A later load
			// ends the window.
			return true
		}
	}
	return false
}

func findStamp(stamps []stamp, path string) (stamp, bool) {
	for _, s := range stamps {
		if s.path == path {
			return s, true
		}
	}
	return stamp{}, false
}

func statAll(paths []string) []stamp {
	out := make([]stamp, len(paths))
	for i, p := range paths {
		out[i] = statFile(p)
	}
	return out
}

func statFile(path string) stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{path: path}
	}
	s := stamp{path: path, exists: true, size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
		s.ctimeNs = st.Ctim.Nano()
	}
	return s
}

// logProblems logs each located problem of a failed load as its own line.
func (w *Watcher) logProblems(err error) {
	probs := Errors(err)
	if len(probs) == 0 {
		w.logger.Error("inventory not loaded: keeping the previous inventory", "file", w.path, "err", err)
		return
	}
	for i, p := range probs {
		if i == maxLoggedProblems {
			w.logger.Error("inventory not loaded: more problems not shown", "file", w.path, "more", len(probs)-i)
			break
		}
		w.logger.Error("inventory not loaded: keeping the previous inventory", "file", p.File, "line", p.Line, "field", p.Field, "problem", p.Msg)
	}
}
