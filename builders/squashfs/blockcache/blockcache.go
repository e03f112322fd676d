// Package blockcache is a persistent squashfs.BlockCache: the compressed squashfs blocks of
// earlier builds, by key (the digest of codec settings and uncompressed block), in a directory
// of the imgctl cache that concurrent builds share.
//
// Layout of the directory:
//
//	packs/<hex>.pack  immutable pack files, at most one per build; <hex> is the SHA-256 of the
//	                  pack's index, which holds every value's CRC-32C
//	state             GC bookkeeping: the build counter and the last build that used each pack
//	lock              flock(2)ed while a build commits (state update and GC)
//	tmp/              packs being written (stale ones are removed after an hour)
//
// A pack is, little endian:
//
//	"IMGSQBP1"  magic
//	values      back to back
//	index       count × {key [32]byte, offset uint64, length uint32, CRC-32C of the value uint32}
//	trailer     index offset uint64, count uint32, CRC-32C of the index uint32, "IMGSQBP1"
//
// Open reads every pack's index (memory: about 100 bytes a value; values stay on disk) and
// keeps the packs open; Get preads a value and checks its CRC, and a mismatch is a miss,
// logged; the build then copies the good values it used from that pack into its own and stops
// counting the damaged pack as used, so GC drops it. Put appends to this build's
// temp pack. Close writes the index, fsyncs, renames the pack into packs/ and then, under the
// lock, updates the state and collects garbage. Readers never see a partial pack and two
// builds at once simply add two packs; a value in several packs is read from the newest.
//
// GC policy: a build uses its own new pack and every pack it had a hit in. Close removes the
// packs that none of the last KeepBuilds builds (of any image, using this directory) used, then
// the least recently used ones while the packs exceed MaxBytes. So that one live block cannot
// pin a mostly dead pack, a build that uses less than a quarter of a pack's bytes copies the
// values it used into its own pack instead of counting the old one as used.
package blockcache

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/layers/atomicfile"
)

// Defaults of Options.
const (
	DefaultKeepBuilds = 10
	DefaultMaxBytes   = 2 << 30
)

// MaxValue is the largest value stored: squashfs blocks are at most 1 MiB.
const MaxValue = 1 << 20

const (
	magic       = "IMGSQBP1"
	recordSize  = 32 + 8 + 4 + 4
	trailerSize = 8 + 4 + 4 + len(magic)
	packExt     = ".pack"
	staleTemp   = time.Hour
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Options configure a Cache.
type Options struct {
	// KeepBuilds: packs not used by any of the last KeepBuilds builds are removed;
	// 0 means DefaultKeepBuilds.
	KeepBuilds int
	// MaxBytes bounds the packs' total size (the newest pack may exceed it on its own);
	// 0 means DefaultMaxBytes.
	MaxBytes int64
	// Logger receives corruption warnings and commit summaries; nil discards them.
	Logger *slog.Logger
}

// Stats counts what a Cache did since Open.
type Stats struct {
	Packs   int   // packs loaded at Open
	Values  int   // distinct keys loaded at Open
	Hits    int64 // Get calls that returned a value
	Misses  int64 // Get calls that did not (corrupt values included)
	Corrupt int64 // values whose CRC did not match
	Puts    int64 // values written to this build's pack
	Bytes   int64 // bytes of values written to this build's pack (compaction copies included)
	Copied  int64 // values copied from mostly dead packs at Close
	Removed int   // packs removed by GC at Close
}

// Cache is a persistent block cache for one build: Open, pass it to squashfs.Write, then Close
// (keep the blocks) or Discard. Get and Put are safe for concurrent use.
type Cache struct {
	dir  string
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	index  map[[32]byte]loc
	packs  []*pack // loaded at Open, newest first
	bad    []string
	out    *pack // this build's pack, in tmp/; nil until the first Put
	recs   []record
	werr   error
	closed bool
	stats  Stats
}

type pack struct {
	name    string // file name in packs/; "" for this build's pack
	f       *os.File
	size    int64
	hits    map[[32]byte]loc // values this build used
	used    int64            // their bytes
	corrupt bool
}

type loc struct {
	p   *pack
	off uint64
	n   uint32
	crc uint32
}

type record struct {
	key [32]byte
	off uint64
	n   uint32
	crc uint32
}

// Open opens (creating as needed) the cache in dir and loads the index of every pack.
// Unreadable packs are logged, skipped and removed at Close.
func Open(dir string, opts Options) (*Cache, error) {
	if opts.KeepBuilds <= 0 {
		opts.KeepBuilds = DefaultKeepBuilds
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, sub := range []string{"packs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("block cache: %w", err)
		}
	}
	c := &Cache{dir: dir, opts: opts, log: log, index: map[[32]byte]loc{}}
	names, err := c.listPacks()
	if err != nil {
		return nil, err
	}
	// Newest first, so a value in several packs is read from (and keeps alive) the newest.
	st := readState(filepath.Join(dir, "state"))
	slices.SortFunc(names, func(a, b string) int {
		ga, oka := st.packs[a]
		gb, okb := st.packs[b]
		if !oka {
			ga = st.gen + 1 // committed after the state was read: new
		}
		if !okb {
			gb = st.gen + 1
		}
		if ga != gb {
			return cmp.Compare(gb, ga)
		}
		return strings.Compare(a, b)
	})
	for _, name := range names {
		p, recs, err := loadPack(filepath.Join(dir, "packs", name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed by a concurrent GC
		}
		if err != nil {
			log.Warn("block cache: ignoring unreadable pack", "pack", name, "err", err)
			if errors.Is(err, errFormat) {
				c.bad = append(c.bad, name) // removed at Close
			}
			continue
		}
		p.name = name
		c.packs = append(c.packs, p)
		for _, r := range recs {
			if _, ok := c.index[r.key]; !ok {
				c.index[r.key] = loc{p, r.off, r.n, r.crc}
			}
		}
	}
	c.stats.Packs, c.stats.Values = len(c.packs), len(c.index)
	return c, nil
}

func (c *Cache) listPacks() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(c.dir, "packs"))
	if err != nil {
		return nil, fmt.Errorf("block cache: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), packExt) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

var errFormat = errors.New("not a valid pack")

// loadPack opens a pack and reads and checks its index.
func loadPack(path string) (*pack, []record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	p, recs, err := readIndex(f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return p, recs, nil
}

func readIndex(f *os.File) (*pack, []record, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	size := fi.Size()
	if size < int64(len(magic)+trailerSize) {
		return nil, nil, fmt.Errorf("%w: %d bytes", errFormat, size)
	}
	var tr [trailerSize]byte
	if _, err := f.ReadAt(tr[:], size-int64(trailerSize)); err != nil {
		return nil, nil, err
	}
	le := binary.LittleEndian
	idxOff, count, idxCRC := le.Uint64(tr[:]), le.Uint32(tr[8:]), le.Uint32(tr[12:])
	if string(tr[16:]) != magic || idxOff < uint64(len(magic)) ||
		idxOff+uint64(count)*recordSize+uint64(trailerSize) != uint64(size) {
		return nil, nil, fmt.Errorf("%w: bad trailer", errFormat)
	}
	idx := make([]byte, int(count)*recordSize)
	if _, err := f.ReadAt(idx, int64(idxOff)); err != nil {
		return nil, nil, err
	}
	if crc32.Checksum(idx, castagnoli) != idxCRC {
		return nil, nil, fmt.Errorf("%w: index checksum mismatch", errFormat)
	}
	var head [len(magic)]byte
	if _, err := f.ReadAt(head[:], 0); err != nil {
		return nil, nil, err
	}
	if string(head[:]) != magic {
		return nil, nil, fmt.Errorf("%w: bad magic", errFormat)
	}
	recs := make([]record, count)
	for i := range recs {
		b := idx[i*recordSize:]
		r := record{key: [32]byte(b[:32]), off: le.Uint64(b[32:]), n: le.Uint32(b[40:]), crc: le.Uint32(b[44:])}
		if r.off < uint64(len(magic)) || r.off+uint64(r.n) > idxOff || r.n > MaxValue {
			return nil, nil, fmt.Errorf("%w: value %d out of bounds", errFormat, i)
		}
		recs[i] = r
	}
	return &pack{f: f, size: size, hits: map[[32]byte]loc{}}, recs, nil
}

// Get appends the value stored under key to dst. A value whose checksum does not match is
// logged and reported as a miss.
func (c *Cache) Get(key [32]byte, dst []byte) ([]byte, bool) {
	c.mu.Lock()
	l, ok := c.index[key]
	if !ok || c.closed {
		c.stats.Misses++
		c.mu.Unlock()
		return dst, false
	}
	c.mu.Unlock()
	out, err := read(l, dst)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.stats.Misses++
		c.stats.Corrupt++
		l.p.corrupt = true
		if cur, ok := c.index[key]; ok && cur == l {
			delete(c.index, key)
		}
		c.log.Warn("block cache: corrupt value, compressing again", "pack", l.p.name, "offset", l.off, "err", err)
		return dst, false
	}
	c.stats.Hits++
	if _, seen := l.p.hits[key]; !seen && l.p != c.out {
		l.p.hits[key] = l
		l.p.used += int64(l.n)
	}
	return out, true
}

// read appends the value at l to dst and checks its CRC.
func read(l loc, dst []byte) ([]byte, error) {
	start := len(dst)
	dst = slices.Grow(dst, int(l.n))[:start+int(l.n)]
	if _, err := l.p.f.ReadAt(dst[start:], int64(l.off)); err != nil {
		return dst[:start], err
	}
	if crc := crc32.Checksum(dst[start:], castagnoli); crc != l.crc {
		return dst[:start], fmt.Errorf("CRC-32C %08x, want %08x", crc, l.crc)
	}
	return dst, nil
}

// Put stores block under key in this build's pack unless the key has a value already.
// Write errors are logged once and turn Put into a no-op.
func (c *Cache) Put(key [32]byte, block []byte) {
	if len(block) > MaxValue {
		return
	}
	crc := crc32.Checksum(block, castagnoli)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.index[key]; ok || c.closed {
		return
	}
	if c.appendValue(key, block, crc) {
		c.stats.Puts++
	}
}

// appendValue writes a value to this build's pack; c.mu is held.
func (c *Cache) appendValue(key [32]byte, v []byte, crc uint32) bool {
	if c.werr != nil {
		return false
	}
	if c.out == nil {
		f, err := os.CreateTemp(filepath.Join(c.dir, "tmp"), "pack-*")
		if err == nil {
			_, err = f.WriteAt([]byte(magic), 0)
			if err != nil {
				f.Close()
				os.Remove(f.Name())
			}
		}
		if err != nil {
			c.werr = err
			c.log.Warn("block cache: cannot write a pack; this build adds nothing to the cache", "err", err)
			return false
		}
		c.out = &pack{f: f, size: int64(len(magic))}
	}
	off := c.out.size
	if _, err := c.out.f.WriteAt(v, off); err != nil {
		c.werr = err
		c.log.Warn("block cache: cannot write a pack; this build adds nothing more to the cache", "err", err)
		return false
	}
	l := loc{c.out, uint64(off), uint32(len(v)), crc}
	c.index[key] = l
	c.recs = append(c.recs, record{key, l.off, l.n, l.crc})
	c.out.size += int64(len(v))
	c.stats.Bytes += int64(len(v))
	return true
}

// Stats returns the counters so far.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Discard closes the cache without keeping this build's pack or counting it as a build.
func (c *Cache) Discard() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	c.dropOut()
	c.closePacks()
}

func (c *Cache) dropOut() {
	if c.out != nil {
		c.out.f.Close()
		os.Remove(c.out.f.Name())
		c.out = nil
	}
}

func (c *Cache) closePacks() {
	for _, p := range c.packs {
		p.f.Close()
	}
}

// Close keeps this build's pack and collects garbage (see the package comment). Get and Put
// must have returned; after Close they miss and drop. An error leaves the cache consistent:
// at worst this build's blocks are not kept.
func (c *Cache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	defer c.closePacks()

	// Copy the values used from mostly dead and from corrupt packs.
	compacted := map[*pack]bool{}
	for _, p := range c.packs {
		if p.used == 0 || (!p.corrupt && p.used*4 >= p.size) {
			continue
		}
		ok := true
		for _, k := range sortedKeys(p.hits) {
			l := p.hits[k]
			v, err := read(l, nil)
			if err != nil {
				c.log.Warn("block cache: corrupt value", "pack", p.name, "offset", l.off, "err", err)
				c.stats.Corrupt++
				p.corrupt = true
				continue
			}
			if !c.appendValue(k, v, l.crc) {
				ok = false
				break
			}
			c.stats.Copied++
		}
		compacted[p] = ok
	}

	newName, err := c.finishPack()
	if err != nil {
		c.log.Warn("block cache: cannot keep this build's blocks", "err", err)
		newName = ""
	}
	var used []string
	for _, p := range c.packs {
		if p.used > 0 && !p.corrupt && !compacted[p] {
			used = append(used, p.name)
		}
	}
	if newName != "" {
		used = append(used, newName)
	}
	cerr := c.commit(used, newName)
	st := c.stats
	c.log.Debug("block cache: build committed", "packs", st.Packs, "values", st.Values, "hits", st.Hits,
		"misses", st.Misses, "corrupt", st.Corrupt, "new_values", st.Puts, "new_bytes", st.Bytes,
		"copied", st.Copied, "removed_packs", st.Removed, "pack", newName)
	if err != nil {
		return fmt.Errorf("block cache: %w", err)
	}
	if cerr != nil {
		return fmt.Errorf("block cache: %w", cerr)
	}
	return nil
}

func sortedKeys(m map[[32]byte]loc) [][32]byte {
	keys := make([][32]byte, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	// In pack order: sequential reads.
	slices.SortFunc(keys, func(a, b [32]byte) int { return cmp.Compare(m[a].off, m[b].off) })
	return keys
}

// finishPack completes this build's pack (index, trailer, fsync) and renames it into packs/.
// It returns the pack's name, "" if there is none.
func (c *Cache) finishPack() (string, error) {
	if c.out == nil {
		return "", nil
	}
	if c.werr != nil || len(c.recs) == 0 {
		c.dropOut()
		return "", c.werr
	}
	renamed := false
	defer func() {
		if renamed {
			c.out.f.Close()
			c.out = nil
		} else {
			c.dropOut()
		}
	}()
	le := binary.LittleEndian
	idx := make([]byte, 0, len(c.recs)*recordSize+trailerSize)
	for _, r := range c.recs {
		idx = append(idx, r.key[:]...)
		idx = le.AppendUint64(idx, r.off)
		idx = le.AppendUint32(idx, r.n)
		idx = le.AppendUint32(idx, r.crc)
	}
	sum := sha256.Sum256(idx)
	name := hex.EncodeToString(sum[:]) + packExt
	idxCRC := crc32.Checksum(idx, castagnoli)
	idx = le.AppendUint64(idx, uint64(c.out.size))
	idx = le.AppendUint32(idx, uint32(len(c.recs)))
	idx = le.AppendUint32(idx, idxCRC)
	idx = append(idx, magic...)
	f := c.out.f
	if _, err := f.WriteAt(idx, c.out.size); err != nil {
		return "", err
	}
	if err := f.Chmod(0o444); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	dst := filepath.Join(c.dir, "packs", name)
	if err := os.Rename(f.Name(), dst); err != nil {
		return "", err
	}
	renamed = true
	if err := atomicfile.SyncDir(filepath.Join(c.dir, "packs")); err != nil {
		return "", err
	}
	return name, nil
}

// commit counts this build, marks the packs it used and collects garbage, under the lock.
func (c *Cache) commit(used []string, newName string) error {
	unlock, err := lockDir(filepath.Join(c.dir, "lock"))
	if err != nil {
		return err
	}
	defer unlock()
	statePath := filepath.Join(c.dir, "state")
	st := readState(statePath)
	st.gen++
	names, err := c.listPacks()
	if err != nil {
		return err
	}
	sizes := map[string]int64{}
	for _, n := range names {
		fi, err := os.Stat(filepath.Join(c.dir, "packs", n))
		if err != nil {
			continue
		}
		sizes[n] = fi.Size()
		if _, ok := st.packs[n]; !ok {
			st.packs[n] = st.gen // committed by a build that crashed before updating the state
		}
	}
	for n := range st.packs {
		if _, ok := sizes[n]; !ok {
			delete(st.packs, n)
		}
	}
	for _, n := range used {
		if _, ok := sizes[n]; ok {
			st.packs[n] = st.gen
		}
	}
	var errs []error
	remove := func(n string) {
		if err := os.Remove(filepath.Join(c.dir, "packs", n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			return
		}
		delete(st.packs, n)
		c.stats.Removed++
	}
	for _, n := range c.bad {
		if _, ok := st.packs[n]; ok {
			remove(n)
		}
	}
	// Not used by the last KeepBuilds builds.
	for n, g := range st.packs {
		if g <= st.gen-int64(c.opts.KeepBuilds) {
			remove(n)
		}
	}
	// Over the size bound: least recently used first (largest first among equals).
	var total int64
	live := make([]string, 0, len(st.packs))
	for n := range st.packs {
		total += sizes[n]
		live = append(live, n)
	}
	slices.SortFunc(live, func(a, b string) int {
		if ga, gb := st.packs[a], st.packs[b]; ga != gb {
			return cmp.Compare(ga, gb)
		}
		if sizes[a] != sizes[b] {
			return cmp.Compare(sizes[b], sizes[a])
		}
		return strings.Compare(a, b)
	})
	for _, n := range live {
		if total <= c.opts.MaxBytes {
			break
		}
		if n == newName {
			continue
		}
		total -= sizes[n]
		remove(n)
	}
	if err := writeState(statePath, st); err != nil {
		errs = append(errs, err)
	}
	c.cleanTemp()
	return errors.Join(errs...)
}

// cleanTemp removes temp packs of builds killed long ago.
func (c *Cache) cleanTemp() {
	tmp := filepath.Join(c.dir, "tmp")
	ents, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	cutoff := time.Now().Add(-staleTemp)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.ModTime().Before(cutoff) {
			_ = os.Remove(filepath.Join(tmp, e.Name()))
		}
	}
}

func lockDir(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// state is the GC bookkeeping: the number of builds committed and, per pack, the last one that
// used it. The file is text: "gen N" then "<pack> <gen>" lines.
type state struct {
	gen   int64
	packs map[string]int64
}

// readState reads the state; a missing or damaged file is an empty state (packs are then
// treated as used by the next build).
func readState(path string) state {
	st := state{packs: map[string]int64{}}
	b, err := os.ReadFile(path)
	if err != nil {
		return st
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for first := true; sc.Scan(); first = false {
		k, v, ok := strings.Cut(sc.Text(), " ")
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil {
			return state{packs: map[string]int64{}}
		}
		if first {
			if k != "gen" {
				return state{packs: map[string]int64{}}
			}
			st.gen = n
			continue
		}
		st.packs[k] = n
	}
	return st
}

func writeState(path string, st state) error {
	var b strings.Builder
	fmt.Fprintf(&b, "gen %d\n", st.gen)
	names := make([]string, 0, len(st.packs))
	for n := range st.packs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(&b, "%s %d\n", n, st.packs[n])
	}
	return atomicfile.Write(filepath.Join(filepath.Dir(path), "tmp"), path, []byte(b.String()), 0o644)
}
