package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/images/bootauth"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/inventory"
	"github.com/imgctl/imgctl/images/rollout"
	"github.com/imgctl/imgctl/images/serve"
	"github.com/imgctl/imgctl/images/store"
)

// inventoryPoll is how often serve looks for a changed inventory file.
const inventoryPoll = 2 * time.Second

func (a *app) serveCmd() *cobra.Command {
	var (
		inventoryPath, listen, tlsCert, tlsKey, advertise string
		tftpAddr, tftpDir                                 string
		tokenTTL                                          time.Duration
		insecureSecrets                                   bool
		maxConns                                          int
	)
	cmd := &cobra.Command{
		Use:   "serve --inventory FILE --listen ADDR [--tls-cert FILE --tls-key FILE]",
		Short: "Netboot a bare-metal fleet from the store: iPXE scripts, blobs, node configs, boot reports",
		Long: `Serves, on one address:
  GET  /boot.ipxe                 a static iPXE script (point DHCP or your iPXE build at it) that chains to
  GET  /ipxe?mac=&uuid=&serial=   the machine's own script: the kernel, initrd and root of the image its
                                  channel points to now (or its pinned image), by digest, and a fresh boot
                                  credential; an unknown machine gets a script that says so and retries
  GET  /blobs/sha256:HEX          blobs of the images in the store (sendfile, ranges, immutable caching)
  GET  /v1/channels/CHANNEL       the channel's update pointer (JSON) that disk nodes poll for in-place
                                  updates: only an image the server serves and nodes can install; 404
                                  for no such channel or an empty one, 409 saying why not (see imgctl
                                  channel pointer for the same document as a static file)
  GET  /v1/nodeconfig             the node's NodeConfig: public part by ?mac=, secrets with its credential
  POST /v1/reports                the node agent's boot reports (see imgctl rollout status)
  GET  /healthz, /metrics         health and Prometheus metrics

The inventory (see examples/inventory.yaml) maps machines to names, roles, channels and configs;
it is reloaded when it changes and on SIGHUP (a bad file keeps the previous one and logs
file:line: field). With --tls-cert/--tls-key the same port also speaks TLS, node scripts send the
agent to https with the certificate's pin, and secrets never cross the boot network in clear.
Without TLS, secrets are only served with --insecure-secrets; otherwise nodes get their public
config only. If the store has a trust policy, unsigned images are never served. SIGTERM or
SIGINT shut down gracefully. State (credential key, boot records, reports) lives in STORE/serve,
so replicas on one store answer alike.

For firmware without iPXE, --tftp also serves Debian's iPXE builds (undionly.kpxe for BIOS,
snponly.efi or ipxe.efi for UEFI) to chainload; have DHCP answer iPXE's own request (user class
"iPXE") with http://SERVER:PORT/boot.ipxe.`,
		Example: `  imgctl serve --store /srv/imgctl --inventory /etc/imgctl/inventory.yaml --listen :8080 \
      --tls-cert /etc/imgctl/serve.crt --tls-key /etc/imgctl/serve.key
  # DHCP: hand iPXE clients http://SERVER:8080/boot.ipxe as their boot file
  imgctl promote 1.21.13-6.1.0-20261204.1 --to prod   # the next reboot of each prod node boots it
  imgctl rollout status prod`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case inventoryPath == "":
				return errors.New("--inventory FILE is required (see examples/inventory.yaml)")
			case listen == "":
				return errors.New("--listen ADDR is required, e.g. --listen :8080")
			case (tlsCert == "") != (tlsKey == ""):
				return errors.New("--tls-cert and --tls-key go together")
			case tokenTTL <= 0:
				return fmt.Errorf("--token-ttl %v: expected a positive duration", tokenTTL)
			case maxConns <= 0:
				return fmt.Errorf("--max-conns %d: expected a positive number", maxConns)
			}
			level := slog.LevelInfo
			if a.verbose > 0 {
				level = slog.LevelDebug // every request
			}
			out := newBatchedLog(a.err)
			defer out.Close()
			go out.FlushEvery(cmd.Context(), logFlushEvery)
			logger := slog.New(flushAtWarn{Handler: slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}), flush: out.Flush})
			return runServe(cmd.Context(), logger, serveConfig{
				storeDir: a.storeDir, inventory: inventoryPath, listen: listen, tlsCert: tlsCert, tlsKey: tlsKey,
				advertise: advertise, tokenTTL: tokenTTL, insecureSecrets: insecureSecrets, maxConns: maxConns,
				tftpAddr: tftpAddr, tftpDir: tftpDir,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&inventoryPath, "inventory", "", "the inventory file (YAML, kind: Inventory)")
	f.StringVar(&listen, "listen", "", "address to serve on, e.g. :8080 or 10.0.0.1:80")
	f.StringVar(&tlsCert, "tls-cert", "", "TLS certificate (PEM) to also serve TLS on --listen; nodes pin it")
	f.StringVar(&tlsKey, "tls-key", "", "TLS private key (PEM) of --tls-cert")
	f.StringVar(&advertise, "advertise-url", "", "base URL nodes reach this server at (default: the Host each request names)")
	f.DurationVar(&tokenTTL, "token-ttl", bootauth.DefaultTTL, "lifetime of a node's per-boot credential")
	f.BoolVar(&insecureSecrets, "insecure-secrets", false, "without TLS: serve credentials and secrets over plain HTTP (anyone on the boot network can read them)")
	f.IntVar(&maxConns, "max-conns", serve.DefaultMaxConns, "cap on connections open at once")
	f.StringVar(&tftpAddr, "tftp", "", "also serve iPXE binaries over TFTP on this UDP address (e.g. :69), for firmware without iPXE to chainload")
	f.StringVar(&tftpDir, "tftp-dir", serve.DefaultTFTPDir, "with --tftp: the directory of the iPXE binaries (Debian's ipxe package)")
	return cmd
}

type serveConfig struct {
	storeDir, inventory, listen, tlsCert, tlsKey, advertise string
	tftpAddr, tftpDir                                       string
	tokenTTL                                                time.Duration
	insecureSecrets                                         bool
	maxConns                                                int
}

func runServe(ctx context.Context, logger *slog.Logger, c serveConfig) error {
	st, err := store.Open(ctx, c.storeDir, logger)
	if err != nil {
		return err
	}
	channels, err := channel.Open(st.Dir(), logger)
	if err != nil {
		return err
	}
	// An inventory naming a channel the store does not have is refused (at start and reload).
	check := func(inv *inventory.Inventory) error {
		order, err := channels.Order()
		if err != nil {
			return err
		}
		return inv.CheckChannels(order)
	}
	var srv *serve.Server
	// Reload problems count in the metrics: the watcher logs each one at ERROR.
	watchLog := slog.New(countErrors{Handler: logger.Handler(), count: func() {
		if srv != nil {
			srv.InventoryReloadFailed()
		}
	}})
	watcher, err := inventory.NewWatcher(ctx, c.inventory, check, watchLog)
	if err != nil {
		return fmt.Errorf("loading inventory: %w", err)
	}
	auth, err := bootauth.Open(filepath.Join(st.Dir(), store.ServeDir), bootauth.Options{TTL: c.tokenTTL, Logger: logger})
	if err != nil {
		return err
	}
	reports, err := rollout.Open(rollout.StoreDir(st.Dir()), logger)
	if err != nil {
		return err
	}
	var tlsConfig *tls.Config
	if c.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
		if err != nil {
			return fmt.Errorf("loading --tls-cert %s and --tls-key %s: %w", c.tlsCert, c.tlsKey, err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	} else if !c.insecureSecrets {
		logger.Warn("no --tls-cert and no --insecure-secrets: nodes get their public config only (no credentials, no secrets, no boot reports)")
	}
	srv, err = serve.New(serve.Options{
		Store: st, Channels: channels, Inventory: watcher.Current, Auth: auth, Reports: reports,
		TLS: tlsConfig, AdvertiseURL: c.advertise, InsecureSecrets: c.insecureSecrets, MaxConns: c.maxConns,
		Logger: logger,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", c.listen, err)
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	tftpDone := make(chan error, 1)
	if c.tftpAddr != "" {
		if err := serve.CheckTFTPDir(c.tftpDir); err != nil {
			_ = ln.Close()
			return err
		}
		pc, err := net.ListenPacket("udp", c.tftpAddr)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("--tftp %s: %w", c.tftpAddr, err)
		}
		go func() {
			err := srv.ServeTFTP(ctx, pc, c.tftpDir)
			if err != nil {
				logger.Error("TFTP failed: shutting down", "err", err)
				stop()
			}
			tftpDone <- err
		}()
	} else {
		tftpDone <- nil
	}
	go watcher.Run(ctx, inventoryPoll)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				logger.Info("SIGHUP: reloading the inventory", "file", c.inventory)
				_ = watcher.Reload(ctx) // logged, and counted by countErrors
			}
		}
	}()
	err = srv.Serve(ctx, ln)
	stop()
	if terr := <-tftpDone; err == nil {
		err = terr
	}
	return err
}

// countErrors calls count for every ERROR record it passes on.
type countErrors struct {
	slog.Handler
	count func()
}

func (h countErrors) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.count()
	}
	return h.Handler.Handle(ctx, r)
}

func (h countErrors) WithAttrs(as []slog.Attr) slog.Handler {
	return countErrors{Handler: h.Handler.WithAttrs(as), count: h.count}
}

func (h countErrors) WithGroup(name string) slog.Handler {
	return countErrors{Handler: h.Handler.WithGroup(name), count: h.count}
}

// logFlushEvery bounds how long an INFO line waits in the log's buffer.
const logFlushEvery = 100 * time.Millisecond

// batchedLog gathers log lines and writes them in batches: every node script logs an INFO
// "boot" line, and at the rates of make bench one write(2) per line was about a tenth of the
// server's CPU. Lines reach the output within logFlushEvery, WARN and worse at once (see
// flushAtWarn), everything on Close; a crash can lose at most logFlushEvery of INFO lines.
type batchedLog struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func newBatchedLog(w io.Writer) *batchedLog { return &batchedLog{w: bufio.NewWriterSize(w, 64<<10)} }

func (b *batchedLog) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.Write(p)
}

// Flush writes what is buffered.
func (b *batchedLog) Flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	_ = b.w.Flush()
}

// FlushEvery flushes every d until ctx ends.
func (b *batchedLog) FlushEvery(ctx context.Context, d time.Duration) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.Flush()
		}
	}
}

// Close flushes what is left.
func (b *batchedLog) Close() { b.Flush() }

// flushAtWarn flushes the batched log after every WARN or worse record, so problems are seen
// (and kept) at once.
type flushAtWarn struct {
	slog.Handler
	flush func()
}

func (h flushAtWarn) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		h.flush()
	}
	return err
}

func (h flushAtWarn) WithAttrs(as []slog.Attr) slog.Handler {
	return flushAtWarn{Handler: h.Handler.WithAttrs(as), flush: h.flush}
}

func (h flushAtWarn) WithGroup(name string) slog.Handler {
	return flushAtWarn{Handler: h.Handler.WithGroup(name), flush: h.flush}
}
