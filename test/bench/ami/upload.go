package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/images/awsfake"
	"github.com/imgctl/imgctl/images/ebssnap"
	"github.com/imgctl/imgctl/images/publication"
	"github.com/imgctl/imgctl/images/sparse"
)

func init() {
	commands["put"] = putCmd
	commands["upload"] = uploadCmd
	commands["incremental"] = incrementalCmd
}

// region of every upload (the fake serves any).
const region = "us-east-1"

// disk is an opened disk.simg.
type disk struct {
	*sparse.Reader
	f *os.File
}

func openDisk(path string) (*disk, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	r, err := sparse.Open(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &disk{Reader: r, f: f}, nil
}

func (d *disk) Close() error { return d.f.Close() }

// blocks are the indexes of the disk's blocks its extents touch.
func (d *disk) blocks() []int64 {
	return dataBlocks(d.Extents(), publication.BlockSize)
}

// endpoint is the in-process fake EBS on loopback and a client of it.
type endpoint struct {
	ebs    *awsfake.EBS
	client *awsclient.Clients
	dials  atomic.Int64 // connections the client opened
}

// startFake serves a fresh fake EBS on 127.0.0.1 until ctx ends.
func startFake(ctx context.Context, idle int) (*endpoint, error) {
	fake := &awsfake.EBS{}
	srv := &awsfake.Server{}
	srv.Use(fake)
	url, err := srv.Start(ctx)
	if err != nil {
		return nil, err
	}
	// static credentials for the fake, never a real account's
	for k, v := range map[string]string{"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
		"AWS_SESSION_TOKEN": "", "AWS_PROFILE": "", "AWS_EC2_METADATA_DISABLED": "true",
		"AWS_CONFIG_FILE": os.DevNull, "AWS_SHARED_CREDENTIALS_FILE": os.DevNull} {
		if err := os.Setenv(k, v); err != nil {
			return nil, err
		}
	}
	cfg, err := awsclient.Load(ctx, awsclient.Options{Region: region, EndpointURL: url, NoIMDS: true})
	if err != nil {
		return nil, err
	}
	ep := &endpoint{ebs: fake}
	// the SDK's own HTTP client (what awsclient.Load leaves in cfg), counting connections
	hc := awshttp.NewBuildableClient().WithDialerOptions(func(d *net.Dialer) {
		d.Control = func(string, string, syscall.RawConn) error {
			ep.dials.Add(1)
			return nil
		}
	})
	if idle > 0 {
		hc = hc.WithTransportOptions(func(t *http.Transport) { t.MaxIdleConnsPerHost = idle })
	}
	cfg.HTTPClient = hc
	ep.client = awsclient.NewClients(cfg)
	return ep, nil
}

// uploadResult is one upload through ebssnap.
type uploadResult struct {
	Concurrency int     `json:"concurrency"`
	DiskBytes   int64   `json:"disk_bytes"`
	Blocks      int64   `json:"blocks"`
	DataBlocks  int64   `json:"data_blocks"`
	Sent        int64   `json:"sent"`
	Unchanged   int64   `json:"unchanged"`
	BytesSent   int64   `json:"bytes_sent"`
	Received    int64   `json:"received"`      // block bytes the fake accepted
	MaxInFlight int     `json:"max_in_flight"` // most blocks the fake served at once (so far)
	Connections int64   `json:"connections"`   // TCP connections the client opened
	Seconds     float64 `json:"seconds"`
	MBps        float64 `json:"mbps"` // bytes sent, 10^6 per second
	// CPUSeconds is the process's user + system time during the upload: uploader and fake.
	CPUSeconds float64 `json:"cpu_seconds"`
	// ZeroSkip is bytes sent ÷ the disk's size.
	ZeroSkip float64 `json:"zero_skip"`
}

func upload(ctx context.Context, ep *endpoint, d *disk, o ebssnap.Options) (ebssnap.Result, uploadResult, error) {
	before, dials := ep.ebs.Counters().Bytes, ep.dials.Load()
	cpu0, err := cpuTime()
	if err != nil {
		return ebssnap.Result{}, uploadResult{}, err
	}
	res, err := ebssnap.Upload(ctx, ep.client.EBS(region), d, o)
	if err != nil {
		return res, uploadResult{}, err
	}
	cpu1, err := cpuTime()
	if err != nil {
		return res, uploadResult{}, err
	}
	s := res.Duration.Seconds()
	return res, uploadResult{
		Concurrency: o.Concurrency, DiskBytes: d.Size(), Blocks: res.Blocks, DataBlocks: res.DataBlocks,
		Sent: res.Sent, Unchanged: res.Unchanged, BytesSent: res.BytesSent,
		Received: ep.ebs.Counters().Bytes - before, MaxInFlight: ep.ebs.Counters().MaxInFlight,
		Connections: ep.dials.Load() - dials, Seconds: s, MBps: float64(res.BytesSent) / 1e6 / s,
		ZeroSkip:   float64(res.BytesSent) / float64(d.Size()),
		CPUSeconds: (cpu1 - cpu0).Seconds(),
	}, nil
}

// uploadCmd: upload -simg FILE -concurrency N: the disk to a new snapshot of a fresh fake.
func uploadCmd(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("upload", flag.ContinueOnError)
	simg := fs.String("simg", "", "the disk (disk.simg)")
	n := fs.Int("concurrency", ebssnap.DefaultConcurrency, "blocks in flight")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the upload (uploader and fake) to this file")
	idle := fs.Int("max-idle-conns", 0, "idle connections the HTTP client keeps per host, if more than ebssnap keeps (0: as ebssnap sets it)")
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	d, err := openDisk(*simg)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ep, err := startFake(ctx, *idle)
	if err != nil {
		return nil, err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	_, out, err := upload(ctx, ep, d, ebssnap.Options{Concurrency: *n})
	return out, err
}

// putCmd: put -simg FILE -concurrency N: the baseline, a plain PUT of every block the upload
// sends (the data blocks that are not all zeros) to a trivial loopback server.
func putCmd(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("put", flag.ContinueOnError)
	simg := fs.String("simg", "", "the disk (disk.simg)")
	n := fs.Int("concurrency", ebssnap.DefaultConcurrency, "requests in flight")
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	d, err := openDisk(*simg)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	blocks, err := nonZero(d, d.blocks())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, url, err := startSink(ctx)
	if err != nil {
		return nil, err
	}
	cpu0, err := cpuTime()
	if err != nil {
		return nil, err
	}
	sent, dur, err := putBlocks(ctx, url, d, d.Size(), publication.BlockSize, blocks, *n)
	if err != nil {
		return nil, err
	}
	cpu1, err := cpuTime()
	if err != nil {
		return nil, err
	}
	return putResult{Concurrency: *n, Blocks: int64(len(blocks)), Bytes: sent, Received: s.bytes.Load(),
		Seconds: dur.Seconds(), MBps: float64(sent) / 1e6 / dur.Seconds(), CPUSeconds: (cpu1 - cpu0).Seconds()}, nil
}

// nonZero keeps the blocks that are not all zeros (read once, before the timed part: the
// uploader reads and checks them while it runs, which the baseline's time leaves out).
func nonZero(r io.ReaderAt, blocks []int64) ([]int64, error) {
	buf := make([]byte, publication.BlockSize)
	zero := make([]byte, publication.BlockSize)
	var out []int64
	for _, i := range blocks {
		n, err := r.ReadAt(buf, i*publication.BlockSize)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("reading block %d: %w", i, err)
		}
		if !bytes.Equal(buf[:n], zero[:n]) {
			out = append(out, i)
		}
	}
	return out, nil
}

// incrementalResult is a full upload of a base disk and then an incremental one of the next
// disk on top of it, with where the next disk's blocks changed.
type incrementalResult struct {
	Base uploadResult `json:"base"`
	Next uploadResult `json:"next"`
	// SentOfBlocks is Next.Sent ÷ Next.Blocks (the volume's blocks); SentOfFull is Next.Sent ÷
	// the blocks a full upload of the next disk sends.
	SentOfBlocks float64 `json:"sent_of_blocks"`
	SentOfFull   float64 `json:"sent_of_full"`
	FullSent     int64   `json:"full_sent"`
	Changed      int64   `json:"changed"` // blocks whose hash differs
	Areas        []area  `json:"areas"`
}

// incrementalCmd: incremental -base FILE -next FILE [-concurrency N] [-areas FILE]: -areas
// writes the where-it-changed table's Markdown rows to FILE.
func incrementalCmd(ctx context.Context, args []string) (any, error) {
	fs := flag.NewFlagSet("incremental", flag.ContinueOnError)
	basePath := fs.String("base", "", "the published image's disk (disk.simg)")
	nextPath := fs.String("next", "", "the next image's disk (disk.simg)")
	n := fs.Int("concurrency", ebssnap.DefaultConcurrency, "blocks in flight")
	areasFile := fs.String("areas", "", "write the table rows of where blocks changed to this file")
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	if *basePath == "" || *nextPath == "" {
		return nil, errors.New("-base and -next are required")
	}
	base, err := openDisk(*basePath)
	if err != nil {
		return nil, err
	}
	defer base.Close()
	next, err := openDisk(*nextPath)
	if err != nil {
		return nil, err
	}
	defer next.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ep, err := startFake(ctx, 0)
	if err != nil {
		return nil, err
	}
	var out incrementalResult
	baseRes, b, err := upload(ctx, ep, base, ebssnap.Options{Concurrency: *n})
	if err != nil {
		return nil, fmt.Errorf("uploading %s: %w", *basePath, err)
	}
	out.Base = b
	nextRes, nx, err := upload(ctx, ep, next, ebssnap.Options{Concurrency: *n, Parent: baseRes.SnapshotID, ParentHashes: baseRes.Hashes})
	if err != nil {
		return nil, fmt.Errorf("uploading %s on top of %s: %w", *nextPath, baseRes.SnapshotID, err)
	}
	out.Next = nx
	// what a full upload of the next disk sends: its non-zero blocks
	out.FullSent = int64(nextRes.Hashes.Len())
	out.SentOfBlocks = float64(nx.Sent) / float64(nx.Blocks)
	out.SentOfFull = float64(nx.Sent) / float64(out.FullSent)
	parts, err := partitions(next)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", *nextPath, err)
	}
	out.Areas, err = changes(baseRes.Hashes, nextRes.Hashes, parts)
	if err != nil {
		return nil, err
	}
	for _, a := range out.Areas {
		out.Changed += a.Changed
	}
	if out.Changed != nx.Sent {
		return nil, fmt.Errorf("the incremental upload sent %d blocks, but %d differ from the base", nx.Sent, out.Changed)
	}
	if *areasFile != "" {
		if err := os.WriteFile(*areasFile, areaRows(out.Areas), 0o644); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// areaRows are Markdown table rows: area, blocks, data blocks, changed, % of its data, first
// change (MiB into the area), where the tail of changed data blocks starts and its length.
func areaRows(areas []area) []byte {
	var b bytes.Buffer
	for _, a := range areas {
		first, tail, pct := "—", "—", "—"
		if a.FirstChanged >= 0 {
			first = fmt.Sprintf("%.1f MiB", float64(a.FirstChanged)/(1<<20))
		}
		if a.TailFrom >= 0 {
			tail = fmt.Sprintf("%.1f MiB (%d blocks)", float64(a.TailFrom)/(1<<20), a.TailData)
		}
		if a.Data > 0 {
			pct = fmt.Sprintf("%.0f%%", 100*float64(a.Changed)/float64(a.Data))
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %s | %s | %s |\n", a.Name, a.Blocks, a.Data, a.Changed, pct, first, tail)
	}
	return b.Bytes()
}

// cpuTime is the process's user + system CPU time so far.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
