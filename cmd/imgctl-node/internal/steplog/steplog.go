// Package steplog writes one structured line per boot step to the console:
//
//	imgctl-node step=mount-root status=ok latency=12ms device=/dev/vda2 label=ROOT-A
package steplog

import (
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Status of a step.
const (
	OK   = "ok"
	Fail = "fail"
	Skip = "skip"
	// Progress marks a line about a step still running (a long download); it is not a result.
	Progress = "progress"
)

// Logger writes step lines to W and keeps each step's result (Steps) for the boot report. It is
// safe for concurrent use.
type Logger struct {
	mu      sync.Mutex
	w       io.Writer
	now     func() time.Time
	records []Record
}

// MaxRecords bounds the results a Logger keeps: the newest.
const MaxRecords = 128

// Record is one finished step.
type Record struct {
	Name    string
	Status  string // OK, Fail or Skip
	Latency time.Duration
	Err     string // the error's text, as on the console line
}

// Steps returns a copy of the steps finished so far, oldest first (at most MaxRecords, the newest).
func (l *Logger) Steps() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Record(nil), l.records...)
}

// New returns a Logger writing to w.
func New(w io.Writer) *Logger { return &Logger{w: w, now: time.Now} }

// SetOutput redirects the logger (e.g. to /dev/console once /dev is mounted).
func (l *Logger) SetOutput(w io.Writer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w = w
}

// Step is one timed step; call Done, Fail or Skip exactly once.
type Step struct {
	l     *Logger
	name  string
	start time.Time
}

// Start begins a step.
func (l *Logger) Start(name string) *Step { return &Step{l: l, name: name, start: l.now()} }

// Done logs status=ok with key, value pairs.
func (s *Step) Done(kv ...any) { s.l.line(s.name, OK, s.elapsed(), nil, kv) }

// Skip logs status=skip.
func (s *Step) Skip(kv ...any) { s.l.line(s.name, Skip, s.elapsed(), nil, kv) }

// Fail logs status=fail with err="…" and returns err.
func (s *Step) Fail(err error, kv ...any) error {
	s.l.line(s.name, Fail, s.elapsed(), err, kv)
	return err
}

// Progress logs status=progress with key, value pairs: the step is still running. It may be
// called any number of times before the result and is not kept in Steps.
func (s *Step) Progress(kv ...any) {
	line := Line(s.name, Progress, s.elapsed(), nil, kv...) + "\n"
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	_, _ = io.WriteString(s.l.w, line)
}

func (s *Step) elapsed() time.Duration { return s.l.now().Sub(s.start) }

// Line formats one step line without the trailing newline.
func Line(name, status string, latency time.Duration, err error, kv ...any) string {
	var b strings.Builder
	b.WriteString("imgctl-node step=")
	b.WriteString(name)
	b.WriteString(" status=")
	b.WriteString(status)
	b.WriteString(" latency=")
	b.WriteString(strconv.FormatInt(latency.Milliseconds(), 10))
	b.WriteString("ms")
	for i := 0; i+1 < len(kv); i += 2 {
		b.WriteByte(' ')
		b.WriteString(toString(kv[i]))
		b.WriteByte('=')
		b.WriteString(quote(toString(kv[i+1])))
	}
	if err != nil {
		b.WriteString(" err=")
		b.WriteString(strconv.Quote(err.Error()))
	}
	return b.String()
}

func (l *Logger) line(name, status string, latency time.Duration, err error, kv []any) {
	s := Line(name, status, latency, err, kv...) + "\n"
	r := Record{Name: name, Status: status, Latency: latency}
	if err != nil {
		r.Err = err.Error()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = io.WriteString(l.w, s)
	if len(l.records) == MaxRecords {
		l.records = append(l.records[:0], l.records[1:]...)
	}
	l.records = append(l.records, r)
}

func toString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case error:
		return x.Error()
	case time.Duration:
		return strconv.FormatInt(x.Milliseconds(), 10) + "ms"
	case int:
		return strconv.Itoa(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case uint64:
		return strconv.FormatUint(x, 10)
	case bool:
		return strconv.FormatBool(x)
	case interface{ String() string }:
		return x.String()
	default:
		return "?"
	}
}

func quote(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\n\"=\\") || !strconv.CanBackquote(s) {
		return strconv.Quote(s)
	}
	return s
}
