package bootinit

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/fetch"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/loopdev"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/netup"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/redact"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
)

// NetRootDir is the tmpfs the network root image is downloaded to (into RAM). It moves
// with /run into the switched root, where the loop device keeps using the file.
const NetRootDir = "/run/imgctl/netroot"

// refuseUnverified fails the fetch-root step before anything touches the network when the
// root URL comes without a digest.
func refuseUnverified(log *steplog.Logger, cfg cmdline.Config) error {
	if err := fetch.CheckDigest(cfg.RootURL, cfg.RootDigest); err != nil {
		return log.Start("fetch-root").Fail(err, "url", redact.String(cfg.RootURL))
	}
	return nil
}

// netEnv is where netRoot works; the zero value is the initrd's (tests point it elsewhere).
type netEnv struct {
	RAMDir string        // NetRootDir: a tmpfs is mounted here for the image
	DevDir string        // /dev: loop-control and the loop devices
	Net    netup.Options // BootIF and IP are taken from the command line
	Fetch  fetch.Options // URL, Digest and Dest are set from the command line and RAMDir
	Up     func()        // if set, called once the boot NIC is configured (the boot report may go out)
}

// netRoot brings up the boot NIC, downloads the root image into RAM, verifies it and
// attaches it to a read-only loop device. It returns the device, open (close it once
// mounted), and the image's path.
func netRoot(ctx context.Context, log *steplog.Logger, cfg cmdline.Config, env netEnv) (*os.File, string, error) {
	if env.RAMDir == "" {
		env.RAMDir = NetRootDir
	}
	if env.DevDir == "" {
		env.DevDir = "/dev"
	}
	details := slog.New(slog.NewTextHandler(os.Stdout, nil))
	if env.Net.Logger == nil {
		env.Net.Logger = details
	}
	if env.Fetch.Logger == nil {
		env.Fetch.Logger = details
	}
	env.Net.BootIF, env.Net.IP, env.Net.Steps = cfg.BootIF, cfg.IP, log
	if _, err := netup.Up(ctx, env.Net); err != nil {
		return nil, "", err
	}
	if env.Up != nil {
		env.Up()
	}
	path, err := mountRAM(env.RAMDir)
	if err != nil {
		return nil, "", log.Start("fetch-root").Fail(err, "url", redact.String(cfg.RootURL))
	}
	env.Fetch.Dest = path
	if err := fetchRoot(ctx, log, cfg, env.Fetch); err != nil {
		return nil, "", err
	}
	s := log.Start("attach-root")
	loop, err := loopdev.Attach(path, env.DevDir)
	if err != nil {
		return nil, "", s.Fail(err, "file", path)
	}
	s.Done("device", loop.Name(), "file", path)
	return loop, path, nil
}

// fetchRoot downloads and verifies the root image (o.Dest) as the fetch-root step. Nothing
// is left at o.Dest unless the digest matched.
func fetchRoot(ctx context.Context, log *steplog.Logger, cfg cmdline.Config, o fetch.Options) error {
	s := log.Start("fetch-root")
	o.URL, o.Digest = cfg.RootURL, cfg.RootDigest
	res, err := fetch.Download(ctx, o)
	kv := fetchKV(cfg, res)
	if err != nil {
		return s.Fail(err, kv...)
	}
	s.Done(kv...)
	return nil
}

// mountRAM mounts a tmpfs for the image, as large as the RAM available (tmpfs takes pages
// only as they are written; its default cap, half the RAM, would refuse a larger root that
// still fits), and returns the image's path on it.
func mountRAM(dir string) (string, error) {
	avail, err := fetch.MemAvailable("/proc/meminfo")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	opts := "mode=0700,size=" + strconv.FormatInt(avail, 10)
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
		return "", fmt.Errorf("mount tmpfs on %s (%s): %w", dir, opts, err)
	}
	return filepath.Join(dir, "root.img"), nil
}

// fetchKV are the fetch-root step's fields: bytes, MB/s, attempts, resumed-from when a Range
// request continued a dropped download, restarts when a server ignored one, and the digest.
func fetchKV(cfg cmdline.Config, res fetch.Result) []any {
	kv := []any{"url", redact.String(cfg.RootURL)}
	if res.Bytes > 0 {
		kv = append(kv, "bytes", res.Bytes)
	}
	if res.Duration > 0 {
		kv = append(kv, "mb-per-s", strconv.FormatFloat(res.MBps(), 'f', 1, 64))
	}
	kv = append(kv, "attempts", res.Attempts)
	if len(res.ResumedFrom) > 0 {
		var r []string
		for _, o := range res.ResumedFrom {
			r = append(r, strconv.FormatInt(o, 10))
		}
		kv = append(kv, "resumed-from", strings.Join(r, ","))
	}
	if res.Restarts > 0 {
		kv = append(kv, "restarts", res.Restarts)
	}
	return append(kv, "digest", cfg.RootDigest)
}
