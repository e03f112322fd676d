package awsfake

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// EBSBlockSize is the block size of the EBS direct APIs.
const EBSBlockSize = 512 << 10

var (
	zeroBlock    = make([]byte, EBSBlockSize)
	zeroBlockSum = sha256.Sum256(zeroBlock)
)

// Fault is what the EBS fake does to one request instead of serving it.
type Fault int

// Faults.
const (
	NoFault      Fault = iota
	Throttle           // 400 RequestThrottledException
	ServerError        // 500 InternalServerException
	Drop               // the connection is closed without an answer
	Hang               // no answer until the client gives up (or the fake closes)
	AccessDenied       // 403 AccessDeniedException
	NotFound           // 404 ResourceNotFoundException: the snapshot does not exist (yet)
	Lost               // the request is served, then the connection closed before the answer
)

// EBSCounters are what the EBS fake received.
type EBSCounters struct {
	Blocks      int64           // PutSnapshotBlock requests accepted
	Bytes       int64           // their bytes
	Rejected    int64           // requests refused for a bad checksum, length, aggregate or count
	MaxInFlight int             // most PutSnapshotBlock requests served at once
	Attempts    map[int64]int   // PutSnapshotBlock requests per block index, faults included
	Ops         map[string]int  // requests per operation, faults included
	Written     map[int64]int64 // accepted writes per block index (all snapshots)
}

// EBSSnapshot is the fake's view of one snapshot.
type EBSSnapshot struct {
	ID, Parent, Description, KMSKeyARN string
	Status                             string // pending, completed, error
	VolumeSize                         int64  // GiB
	Encrypted                          bool
	Tags                               map[string]string
	ClientToken                        string
	blocks                             map[int64][]byte // this snapshot's own writes
	sums                               map[int64][sha256.Size]byte
}

// EBS is an in-process EBS direct API (StartSnapshot, PutSnapshotBlock, CompleteSnapshot,
// ListSnapshotBlocks, GetSnapshotBlock) that checks each block's length and checksum and the
// aggregate checksum and block count on completion, and keeps the blocks. A snapshot started
// with a parent reads the parent's blocks where it wrote none. Add it to a Server with Use.
type EBS struct {
	// Fault, if set, is asked before each request: op is the operation, block the block index
	// (-1 for other operations), attempt counts the requests for that block (for other
	// operations, for that operation) from 1.
	Fault func(op string, block int64, attempt int) Fault
	// Delay is slept in each accepted PutSnapshotBlock (to make concurrency visible).
	Delay time.Duration
	// Discard keeps only the blocks' checksums, not their data (benchmarks of large disks):
	// Block and GetSnapshotBlock then have nothing to return.
	Discard bool

	mu       sync.Mutex
	snaps    map[string]*EBSSnapshot
	tokens   map[string]string // client token → snapshot
	next     int
	inFlight int
	c        EBSCounters
	closed   chan struct{}
	once     sync.Once
}

func (e *EBS) init() {
	if e.snaps == nil {
		e.snaps = map[string]*EBSSnapshot{}
		e.tokens = map[string]string{}
		e.c.Attempts = map[int64]int{}
		e.c.Ops = map[string]int{}
		e.c.Written = map[int64]int64{}
		e.closed = make(chan struct{})
	}
}

// Close releases hung requests.
func (e *EBS) Close() {
	e.mu.Lock()
	e.init()
	e.mu.Unlock()
	e.once.Do(func() { close(e.closed) })
}

// Counters returns a copy of the counters.
func (e *EBS) Counters() EBSCounters {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.init()
	c := e.c
	c.Attempts = copyMap(e.c.Attempts)
	c.Ops = copyMap(e.c.Ops)
	c.Written = copyMap(e.c.Written)
	return c
}

func copyMap[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Snapshot returns a copy of snapshot id's metadata, or nil.
func (e *EBS) Snapshot(id string) *EBSSnapshot {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.init()
	s, ok := e.snaps[id]
	if !ok {
		return nil
	}
	c := *s
	c.Tags = copyMap(s.Tags)
	c.blocks, c.sums = nil, nil
	return &c
}

// Snapshots returns the IDs of every snapshot started, in order.
func (e *EBS) Snapshots() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.init()
	ids := make([]string, 0, len(e.snaps))
	for id := range e.snaps {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Block returns block i of snapshot id as a reader of the snapshot sees it (its own write,
// else its parent's), or nil where nothing was ever written.
func (e *EBS) Block(id string, i int64) []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.init()
	return e.block(id, i)
}

func (e *EBS) block(id string, i int64) []byte {
	for s := e.snaps[id]; s != nil; s = e.snaps[s.Parent] {
		if b, ok := s.blocks[i]; ok {
			return b
		}
	}
	return nil
}

// ServeAWS implements Handler: it takes the EBS direct API paths (/snapshots...).
func (e *EBS) ServeAWS(w http.ResponseWriter, r *http.Request, body []byte) bool {
	p := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(p) == 0 || p[0] != "snapshots" {
		return false
	}
	var op, id string
	block := int64(-1)
	switch {
	case r.Method == http.MethodPost && len(p) == 1:
		op = "StartSnapshot"
	case r.Method == http.MethodPost && len(p) == 3 && p[1] == "completion":
		op, id = "CompleteSnapshot", p[2]
	case r.Method == http.MethodGet && len(p) == 3 && p[2] == "blocks":
		op, id = "ListSnapshotBlocks", p[1]
	case (r.Method == http.MethodPut || r.Method == http.MethodGet) && len(p) == 4 && p[2] == "blocks":
		op, id = "PutSnapshotBlock", p[1]
		if r.Method == http.MethodGet {
			op = "GetSnapshotBlock"
		}
		n, err := strconv.ParseInt(p[3], 10, 64)
		if err != nil || n < 0 {
			ebsError(w, http.StatusBadRequest, "ValidationException", "INVALID_BLOCK", "block index "+p[3]+" is not a non-negative integer")
			return true
		}
		block = n
	default:
		return false
	}
	e.mu.Lock()
	e.init()
	e.c.Ops[op]++
	attempt := e.c.Ops[op]
	if op == "PutSnapshotBlock" {
		e.c.Attempts[block]++
		attempt = e.c.Attempts[block]
	}
	fault, closed := e.Fault, e.closed
	e.mu.Unlock()
	if fault != nil {
		switch fault(op, block, attempt) {
		case Throttle:
			ebsError(w, http.StatusBadRequest, "RequestThrottledException", "ACCOUNT_THROTTLED", "rate exceeded (fault injected)")
			return true
		case ServerError:
			ebsError(w, http.StatusInternalServerError, "InternalServerException", "", "internal error (fault injected)")
			return true
		case AccessDenied:
			ebsError(w, http.StatusForbidden, "AccessDeniedException", "UNAUTHORIZED_ACCOUNT", "User is not authorized to perform: ebs:"+op+" (fault injected)")
			return true
		case NotFound:
			ebsError(w, http.StatusNotFound, "ResourceNotFoundException", "SNAPSHOT_NOT_FOUND", "The snapshot '"+id+"' does not exist. (fault injected)")
			return true
		case Drop:
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
					return true
				}
			}
			panic(http.ErrAbortHandler)
		case Hang:
			select {
			case <-r.Context().Done():
			case <-closed:
			}
			panic(http.ErrAbortHandler)
		}
	}
	if fault != nil && fault(op, block, attempt) == Lost {
		e.serve(discardWriter{h: http.Header{}}, r, op, id, block, body)
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return true
			}
		}
		panic(http.ErrAbortHandler)
	}
	e.serve(w, r, op, id, block, body)
	return true
}

// discardWriter takes an answer nobody will read.
type discardWriter struct{ h http.Header }

func (d discardWriter) Header() http.Header         { return d.h }
func (d discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d discardWriter) WriteHeader(int)             {}

func (e *EBS) serve(w http.ResponseWriter, r *http.Request, op, id string, block int64, body []byte) {
	switch op {
	case "StartSnapshot":
		e.start(w, body)
	case "PutSnapshotBlock":
		e.put(w, r, id, block, body)
	case "CompleteSnapshot":
		e.complete(w, r, id)
	case "ListSnapshotBlocks":
		e.list(w, id)
	case "GetSnapshotBlock":
		e.get(w, r, id, block)
	}
}

func ebsError(w http.ResponseWriter, status int, typ, reason, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-ErrorType", typ)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"Message": msg, "Reason": reason})
}

func (e *EBS) reject(w http.ResponseWriter, reason, format string, args ...any) {
	e.mu.Lock()
	e.c.Rejected++
	e.mu.Unlock()
	ebsError(w, http.StatusBadRequest, "ValidationException", reason, fmt.Sprintf(format, args...))
}

type ebsTag struct{ Key, Value string }

func (e *EBS) start(w http.ResponseWriter, body []byte) {
	var in struct {
		VolumeSize                                            int64
		ParentSnapshotId, Description, ClientToken, KmsKeyArn string
		Encrypted                                             bool
		Tags                                                  []ebsTag
	}
	if err := json.Unmarshal(body, &in); err != nil {
		e.reject(w, "INVALID_PARAMETER", "StartSnapshot body: %v", err)
		return
	}
	if in.VolumeSize < 1 || in.VolumeSize > 64<<10 {
		e.reject(w, "INVALID_VOLUME_SIZE", "VolumeSize %d GiB out of range", in.VolumeSize)
		return
	}
	e.mu.Lock()
	if in.ClientToken != "" {
		if id, ok := e.tokens[in.ClientToken]; ok {
			s := e.snaps[id]
			e.mu.Unlock()
			writeStart(w, s)
			return
		}
	}
	if in.ParentSnapshotId != "" {
		p, ok := e.snaps[in.ParentSnapshotId]
		if !ok || p.Status != "completed" {
			e.mu.Unlock()
			ebsError(w, http.StatusNotFound, "ResourceNotFoundException", "DEPENDENCY_RESOURCE_NOT_FOUND", "parent snapshot "+in.ParentSnapshotId+" does not exist or is not completed")
			return
		}
		if p.VolumeSize > in.VolumeSize {
			e.mu.Unlock()
			e.reject(w, "INVALID_VOLUME_SIZE", "volume of %d GiB smaller than its parent's %d GiB", in.VolumeSize, p.VolumeSize)
			return
		}
	}
	e.next++
	s := &EBSSnapshot{
		ID: fmt.Sprintf("snap-%017x", e.next), Parent: in.ParentSnapshotId, Description: in.Description,
		KMSKeyARN: in.KmsKeyArn, Status: "pending", VolumeSize: in.VolumeSize, Encrypted: in.Encrypted || in.KmsKeyArn != "",
		Tags: map[string]string{}, ClientToken: in.ClientToken,
		blocks: map[int64][]byte{}, sums: map[int64][sha256.Size]byte{},
	}
	for _, t := range in.Tags {
		s.Tags[t.Key] = t.Value
	}
	e.snaps[s.ID] = s
	if in.ClientToken != "" {
		e.tokens[in.ClientToken] = s.ID
	}
	e.mu.Unlock()
	writeStart(w, s)
}

func writeStart(w http.ResponseWriter, s *EBSSnapshot) {
	tags := []ebsTag{}
	for k, v := range s.Tags {
		tags = append(tags, ebsTag{k, v})
	}
	sort.Slice(tags, func(a, b int) bool { return tags[a].Key < tags[b].Key })
	out := map[string]any{
		"SnapshotId": s.ID, "OwnerId": "123456789012", "Status": s.Status, "VolumeSize": s.VolumeSize,
		"BlockSize": EBSBlockSize, "StartTime": time.Now().Unix(), "Tags": tags, "Description": s.Description,
	}
	if s.Parent != "" {
		out["ParentSnapshotId"] = s.Parent
	}
	if s.KMSKeyARN != "" {
		out["KmsKeyArn"] = s.KMSKeyARN
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(out)
}

func (e *EBS) put(w http.ResponseWriter, r *http.Request, id string, i int64, body []byte) {
	e.mu.Lock()
	s, ok := e.snaps[id]
	e.mu.Unlock()
	if !ok {
		ebsError(w, http.StatusNotFound, "ResourceNotFoundException", "SNAPSHOT_NOT_FOUND", "The snapshot '"+id+"' does not exist.")
		return
	}
	if i >= s.VolumeSize<<30/EBSBlockSize {
		e.reject(w, "INVALID_BLOCK", "block index %d past the %d GiB volume", i, s.VolumeSize)
		return
	}
	if n := r.Header.Get("x-amz-Data-Length"); n != strconv.Itoa(EBSBlockSize) || len(body) != EBSBlockSize {
		e.reject(w, "INVALID_BLOCK", "block %d: data length header %q, body %d bytes, expected %d", i, n, len(body), EBSBlockSize)
		return
	}
	if a := r.Header.Get("x-amz-Checksum-Algorithm"); a != "SHA256" {
		e.reject(w, "INVALID_CHECKSUM", "block %d: checksum algorithm %q, expected SHA256", i, a)
		return
	}
	sum := sha256.Sum256(body)
	if got, want := r.Header.Get("x-amz-Checksum"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
		e.reject(w, "INVALID_CHECKSUM", "block %d: checksum %q, the data's is %q", i, got, want)
		return
	}
	e.mu.Lock()
	e.inFlight++
	e.c.MaxInFlight = max(e.c.MaxInFlight, e.inFlight)
	e.mu.Unlock()
	if e.Delay > 0 {
		time.Sleep(e.Delay)
	}
	e.mu.Lock()
	e.inFlight--
	if s.Status != "pending" {
		e.mu.Unlock()
		e.reject(w, "INVALID_SNAPSHOT", "snapshot %s is %s: no more blocks", id, s.Status)
		return
	}
	switch {
	case e.Discard:
		s.blocks[i] = nil
	case sum == zeroBlockSum:
		s.blocks[i] = zeroBlock // shared: an encrypted upload writes a GiB of them
	default:
		s.blocks[i] = append([]byte(nil), body...)
	}
	s.sums[i] = sum
	e.c.Blocks++
	e.c.Bytes += int64(len(body))
	e.c.Written[i]++
	e.mu.Unlock()
	w.Header().Set("x-amz-Checksum", base64.StdEncoding.EncodeToString(sum[:]))
	w.Header().Set("x-amz-Checksum-Algorithm", "SHA256")
	w.WriteHeader(http.StatusCreated)
}

func (e *EBS) complete(w http.ResponseWriter, r *http.Request, id string) {
	e.mu.Lock()
	s, ok := e.snaps[id]
	if !ok {
		e.mu.Unlock()
		ebsError(w, http.StatusNotFound, "ResourceNotFoundException", "SNAPSHOT_NOT_FOUND", "The snapshot '"+id+"' does not exist.")
		return
	}
	idx := make([]int64, 0, len(s.sums))
	for i := range s.sums {
		idx = append(idx, i)
	}
	sort.Slice(idx, func(a, b int) bool { return idx[a] < idx[b] })
	h := sha256.New()
	for _, i := range idx {
		sum := s.sums[i]
		h.Write(sum[:])
	}
	status := s.Status
	e.mu.Unlock()
	if status != "pending" {
		e.reject(w, "INVALID_SNAPSHOT", "snapshot %s is %s, not pending", id, status)
		return
	}
	if n := r.Header.Get("x-amz-ChangedBlocksCount"); n != strconv.Itoa(len(idx)) {
		e.reject(w, "INVALID_PARAMETER", "ChangedBlocksCount %q, %d blocks were written", n, len(idx))
		return
	}
	if c := r.Header.Get("x-amz-Checksum"); c != "" {
		if a, m := r.Header.Get("x-amz-Checksum-Algorithm"), r.Header.Get("x-amz-Checksum-Aggregation-Method"); a != "SHA256" || m != "LINEAR" {
			e.reject(w, "INVALID_CHECKSUM", "aggregate checksum algorithm %q method %q, expected SHA256 LINEAR", a, m)
			return
		}
		if want := base64.StdEncoding.EncodeToString(h.Sum(nil)); c != want {
			e.reject(w, "INVALID_CHECKSUM", "aggregate checksum %q, the written blocks' is %q", c, want)
			return
		}
	}
	e.mu.Lock()
	s.Status = "completed"
	e.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	json.NewEncoder(w).Encode(map[string]string{"Status": "completed"})
}

// list answers ListSnapshotBlocks in one page: every block the snapshot reads as written,
// with the token "INDEX.SNAPSHOT".
func (e *EBS) list(w http.ResponseWriter, id string) {
	e.mu.Lock()
	s, ok := e.snaps[id]
	if !ok {
		e.mu.Unlock()
		ebsError(w, http.StatusNotFound, "ResourceNotFoundException", "SNAPSHOT_NOT_FOUND", "The snapshot '"+id+"' does not exist.")
		return
	}
	set := map[int64]bool{}
	for p := s; p != nil; p = e.snaps[p.Parent] {
		for i := range p.blocks {
			set[i] = true
		}
	}
	vol := s.VolumeSize
	e.mu.Unlock()
	type blk struct {
		BlockIndex int64
		BlockToken string
	}
	blocks := []blk{}
	for i := range set {
		blocks = append(blocks, blk{i, fmt.Sprintf("%d.%s", i, id)})
	}
	sort.Slice(blocks, func(a, b int) bool { return blocks[a].BlockIndex < blocks[b].BlockIndex })
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"Blocks": blocks, "BlockSize": EBSBlockSize, "VolumeSize": vol,
		"ExpiryTime": time.Now().Add(time.Hour).Unix(),
	})
}

func (e *EBS) get(w http.ResponseWriter, r *http.Request, id string, i int64) {
	e.mu.Lock()
	_, ok := e.snaps[id]
	b := e.block(id, i)
	e.mu.Unlock()
	if !ok {
		ebsError(w, http.StatusNotFound, "ResourceNotFoundException", "SNAPSHOT_NOT_FOUND", "The snapshot '"+id+"' does not exist.")
		return
	}
	if tok := r.URL.Query().Get("blockToken"); tok != fmt.Sprintf("%d.%s", i, id) || b == nil {
		e.reject(w, "INVALID_BLOCK_TOKEN", "block token %q is not block %d of %s", tok, i, id)
		return
	}
	sum := sha256.Sum256(b)
	w.Header().Set("x-amz-Data-Length", strconv.Itoa(len(b)))
	w.Header().Set("x-amz-Checksum", base64.StdEncoding.EncodeToString(sum[:]))
	w.Header().Set("x-amz-Checksum-Algorithm", "SHA256")
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(b)
}
