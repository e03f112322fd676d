package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// verify fetches each /blobs/sha256:HEX path once and checks that the body hashes to HEX, so
// that the throughput rows measure servers that send the right bytes.
func verify(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	addr := fs.String("addr", "", "server HOST:PORT")
	if err := parse(fs, args, -1); err != nil {
		return nil, err
	}
	var total int64
	for _, p := range fs.Args() {
		hexd, ok := strings.CutPrefix(p, "/blobs/sha256:")
		if !ok {
			return nil, fmt.Errorf("%s: not a /blobs/sha256:HEX path", p)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+p, nil)
		if err != nil {
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		h := sha256.New()
		n, err := bufio.NewReaderSize(resp.Body, 1<<20).WriteTo(h)
		_ = resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("GET %s from %s: %w", p, *addr, err)
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s from %s: status %s, want 200", p, *addr, resp.Status)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != hexd {
			return nil, fmt.Errorf("GET %s from %s: body (%d bytes) has sha256 %s", p, *addr, n, got)
		}
		total += n
	}
	return map[string]any{"addr": *addr, "blobs": fs.NArg(), "bytes": total}, nil
}

type fetchResult struct {
	Clients int     `json:"clients"`
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	GBps    float64 `json:"gbps"`
}

// fetch starts -clients clients, each on its own keep-alive connection, which all fetch every
// path once, in order, at the same time; it reports the aggregate throughput from the start
// (connections open) to the last byte.
func fetch(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("fetch", flag.ContinueOnError)
	addr := fs.String("addr", "", "server HOST:PORT")
	clients := fs.Int("clients", 1, "concurrent clients")
	sink := fs.Int("buffer", 256<<10, "read buffer per client, bytes")
	splice := fs.Bool("splice", false, "discard bodies by splice(2) to /dev/null instead of reading them")
	if err := parse(fs, args, -1); err != nil {
		return nil, err
	}
	conns, err := dialAll(ctx, *addr, *clients, *sink)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	if *splice {
		null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		defer null.Close()
		for _, c := range conns {
			c.null = null
		}
	}
	counts := make([]int64, len(conns))
	start := time.Now()
	err = each(conns, len(conns), func(i int, c *conn) error {
		for _, p := range fs.Args() {
			n, err := c.getOK(p)
			counts[i] += n
			if err != nil {
				return err
			}
		}
		return nil
	})
	secs := time.Since(start).Seconds()
	if err != nil {
		return nil, err
	}
	var total int64
	for _, n := range counts {
		total += n
	}
	return fetchResult{Clients: *clients, Bytes: total, Seconds: secs, GBps: float64(total) / 1e9 / secs}, nil
}

// each runs fn for every connection, at most limit at a time, and returns the first error.
func each(conns []*conn, limit int, fn func(i int, c *conn) error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	sem := make(chan struct{}, limit)
	for i, c := range conns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fn(i, c); err != nil {
				once.Do(func() { first = err })
			}
		})
	}
	wg.Wait()
	return first
}

func dialAll(ctx context.Context, addr string, n, sink int) ([]*conn, error) {
	conns := make([]*conn, 0, n)
	for range n {
		c, err := dialConn(ctx, addr, sink)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

func closeAll(conns []*conn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

func readPaths(file string) ([]string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	paths := strings.Fields(string(data))
	if len(paths) == 0 {
		return nil, fmt.Errorf("%s: no paths", file)
	}
	return paths, nil
}

type rateResult struct {
	Conns    int     `json:"conns"`
	Requests int     `json:"requests"`
	Seconds  float64 `json:"seconds"`
	RPS      float64 `json:"rps"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
}

// rate keeps -conns connections busy (a new request as soon as the previous answer is read) for
// -duration, cycling through the paths, and reports responses per second.
func rate(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("rate", flag.ContinueOnError)
	addr := fs.String("addr", "", "server HOST:PORT")
	pathsFile := fs.String("paths", "", "file of request paths, one a line")
	nconns := fs.Int("conns", 64, "connections")
	duration := fs.Duration("duration", 5*time.Second, "how long")
	if err := parse(fs, args, 0); err != nil {
		return nil, err
	}
	paths, err := readPaths(*pathsFile)
	if err != nil {
		return nil, err
	}
	conns, err := dialAll(ctx, *addr, *nconns, 16<<10)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	lat := make([][]time.Duration, len(conns))
	start := time.Now()
	end := start.Add(*duration)
	err = each(conns, len(conns), func(i int, c *conn) error {
		lat[i] = make([]time.Duration, 0, 4096)
		k := i * len(paths) / len(conns)
		for t0 := time.Now(); t0.Before(end) && ctx.Err() == nil; {
			if _, err := c.getOK(paths[k%len(paths)]); err != nil {
				return err
			}
			k++
			t1 := time.Now()
			lat[i] = append(lat[i], t1.Sub(t0))
			t0 = t1
		}
		return nil
	})
	secs := time.Since(start).Seconds()
	if err != nil {
		return nil, err
	}
	all := slices.Concat(lat...)
	return rateResult{Conns: *nconns, Requests: len(all), Seconds: secs, RPS: float64(len(all)) / secs,
		P50us: pct(all, 50), P99us: pct(all, 99)}, nil
}

// pct is the p-th percentile of ds in microseconds; it sorts ds.
func pct(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(float64(len(ds))*p/100+0.5) - 1
	i = max(0, min(i, len(ds)-1))
	return float64(ds[i].Nanoseconds()) / 1e3
}

type latencyResult struct {
	Rate     int     `json:"rate"`
	Requests int     `json:"requests"`
	Achieved float64 `json:"achieved_rps"`
	P50us    float64 `json:"p50_us"`
	P90us    float64 `json:"p90_us"`
	P99us    float64 `json:"p99_us"`
	P999us   float64 `json:"p999_us"`
	MaxUs    float64 `json:"max_us"`
	LateP99  float64 `json:"sched_late_p99_us"`
}

// latency sends requests at a fixed rate (open loop: the schedule does not wait for answers;
// a request waits for a free connection if all -conns are busy, and that wait counts) and
// reports percentiles of the time from a request's dispatch to its last response byte.
// Dispatch is when the schedule hands the request to a connection: Go's timers wake with up to
// ~1 ms of lateness, so several requests may leave together; the schedule's own lateness is
// reported apart (sched_late_p99_us) and not counted as server latency.
func latency(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("latency", flag.ContinueOnError)
	addr := fs.String("addr", "", "server HOST:PORT")
	pathsFile := fs.String("paths", "", "file of request paths, one a line")
	perSec := fs.Int("rate", 2000, "requests per second")
	nconns := fs.Int("conns", 32, "connections")
	duration := fs.Duration("duration", 5*time.Second, "how long")
	warm := fs.Duration("warmup", 500*time.Millisecond, "unrecorded requests at the same rate first")
	if err := parse(fs, args, 0); err != nil {
		return nil, err
	}
	paths, err := readPaths(*pathsFile)
	if err != nil {
		return nil, err
	}
	if *perSec <= 0 {
		return nil, fmt.Errorf("-rate %d: want > 0", *perSec)
	}
	conns, err := dialAll(ctx, *addr, *nconns, 16<<10)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	type job struct {
		path     string
		dispatch time.Time
		record   bool
	}
	total := int((*warm + *duration).Seconds() * float64(*perSec))
	jobs := make(chan job, total)
	lat := make([][]time.Duration, len(conns))
	done := make(chan error, 1)
	go func() {
		done <- each(conns, len(conns), func(i int, c *conn) error {
			for j := range jobs {
				if _, err := c.getOK(j.path); err != nil {
					for range jobs { // drain: the schedule must not block
					}
					return err
				}
				if j.record {
					lat[i] = append(lat[i], time.Since(j.dispatch))
				}
			}
			return nil
		})
	}()
	interval := time.Second / time.Duration(*perSec)
	warmN := int(warm.Seconds() * float64(*perSec))
	var late []time.Duration
	start := time.Now()
	var recStart time.Time
	for i := 0; i < total && ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		now := time.Now()
		if i == warmN {
			recStart = now
		}
		if i >= warmN {
			late = append(late, now.Sub(due))
		}
		jobs <- job{path: paths[i%len(paths)], dispatch: now, record: i >= warmN}
	}
	close(jobs)
	if err := <-done; err != nil {
		return nil, err
	}
	secs := time.Since(recStart).Seconds()
	all := slices.Concat(lat...)
	res := latencyResult{Rate: *perSec, Requests: len(all), Achieved: float64(len(all)) / secs, LateP99: pct(late, 99)}
	res.P50us, res.P90us, res.P99us, res.P999us = pct(all, 50), pct(all, 90), pct(all, 99), pct(all, 99.9)
	res.MaxUs = pct(all, 100)
	return res, nil
}

type idleResult struct {
	Conns       int     `json:"conns"`
	Alive       int     `json:"alive"`
	RSSBefore   int64   `json:"rss_before_kib"`
	RSSAfter    int64   `json:"rss_after_kib"`
	PerConnKiB  float64 `json:"per_conn_kib"`
	SettleSecs  float64 `json:"settle_s"`
	ProcessTree int     `json:"processes"`
}

// idle measures the resident memory of process -pid and its children (nginx's workers) before
// and after -conns connections that each made one request and then stay open, idle. Afterwards
// it sends one more request on each connection to count how many the server kept (alive).
func idle(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("idle", flag.ContinueOnError)
	addr := fs.String("addr", "", "server HOST:PORT")
	path := fs.String("path", "/healthz", "the request each connection makes before going idle")
	n := fs.Int("conns", 1000, "idle connections")
	pid := fs.Int("pid", 0, "the server's process id")
	settle := fs.Duration("settle", 2*time.Second, "wait this long with the connections open before measuring")
	if err := parse(fs, args, 0); err != nil {
		return nil, err
	}
	before, procs, err := rssTree(*pid)
	if err != nil {
		return nil, err
	}
	conns, err := dialAll(ctx, *addr, *n, 4<<10)
	if err != nil {
		return nil, err
	}
	defer closeAll(conns)
	if err := each(conns, 64, func(_ int, c *conn) error { _, err := c.getOK(*path); return err }); err != nil {
		return nil, err
	}
	time.Sleep(*settle)
	after, _, err := rssTree(*pid)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	alive := 0
	_ = each(conns, 64, func(_ int, c *conn) error {
		if _, err := c.getOK(*path); err == nil {
			mu.Lock()
			alive++
			mu.Unlock()
		}
		return nil
	})
	return idleResult{Conns: *n, Alive: alive, RSSBefore: before, RSSAfter: after,
		PerConnKiB: float64(after-before) / float64(*n), SettleSecs: settle.Seconds(), ProcessTree: procs}, nil
}

// rssTree is the VmRSS (KiB) of pid plus that of its direct children, and how many processes.
func rssTree(pid int) (int64, int, error) {
	if pid <= 0 {
		return 0, 0, errors.New("-pid is required")
	}
	pids := []int{pid}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // exited
		}
		// pid (comm) state ppid …: comm may hold spaces, so split after the last ')'
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(s[i+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			child, err := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			if err == nil {
				pids = append(pids, child)
			}
		}
	}
	var total int64
	for _, p := range pids {
		kib, err := vmRSS(p)
		if err != nil {
			return 0, 0, err
		}
		total += kib
	}
	return total, len(pids), nil
}

func vmRSS(pid int) (int64, error) {
	f := fmt.Sprintf("/proc/%d/status", pid)
	data, err := os.ReadFile(f)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: malformed VmRSS %q", f, strings.TrimSpace(v))
			}
			return kib, nil
		}
	}
	return 0, fmt.Errorf("%s: no VmRSS line", f)
}

// get writes the body of GET PATH to stdout (the script gives nginx one of imgctl serve's
// per-node scripts as its static file, so both send the same number of bytes).
func get(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	addr := fs.String("addr", "", "server HOST:PORT")
	if err := parse(fs, args, 1); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+fs.Arg(0), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s from %s: status %s, want 200", fs.Arg(0), *addr, resp.Status)
	}
	_, err = io.Copy(os.Stdout, resp.Body)
	return nil, err
}

// freePort prints a loopback port that was free a moment ago, for servers that cannot report
// the port they bound (nginx).
func freePort(context.Context, []string) (any, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	return nil, nil
}
