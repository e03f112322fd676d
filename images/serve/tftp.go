package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pin/tftp/v3"
)

// DefaultTFTPDir is where Debian's ipxe package puts its binaries.
const DefaultTFTPDir = "/usr/lib/ipxe"

// TFTPFiles are the only files the TFTP server hands out: iPXE builds to chainload from
// firmware that speaks plain PXE (BIOS: undionly.kpxe, undionly.kkpxe, ipxe.pxe; UEFI:
// snponly.efi with the firmware's NIC driver, ipxe.efi with iPXE's own). The iPXE they start
// asks DHCP again; answer that request (user class "iPXE", DHCP option 77) with
// http://SERVER/boot.ipxe as the boot file.
var TFTPFiles = []string{"undionly.kpxe", "undionly.kkpxe", "ipxe.pxe", "snponly.efi", "ipxe.efi"}

// CheckTFTPDir reports an error unless dir holds at least one of TFTPFiles.
func CheckTFTPDir(dir string) error {
	for _, name := range TFTPFiles {
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && fi.Mode().IsRegular() {
			return nil
		}
	}
	return fmt.Errorf("TFTP directory %s holds none of %s (install Debian's ipxe package, or point --tftp-dir at iPXE binaries)",
		dir, strings.Join(TFTPFiles, ", "))
}

// ServeTFTP answers TFTP read requests on conn for TFTPFiles in dir until ctx ends. A requested
// name is only compared with TFTPFiles (a leading '/' allowed): no other path from the network
// reaches the file system. Writes are refused.
func (s *Server) ServeTFTP(ctx context.Context, conn net.PacketConn, dir string) error {
	srv := tftp.NewServer(func(filename string, rf io.ReaderFrom) error { return s.tftpRead(dir, filename, rf) }, nil)
	srv.SetTimeout(5 * time.Second)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(conn) }()
	s.log.Info("serving TFTP", "addr", conn.LocalAddr().String(), "dir", dir)
	select {
	case err := <-errc:
		return fmt.Errorf("serving TFTP on %s: %w", conn.LocalAddr(), err)
	case <-ctx.Done():
	}
	srv.Shutdown()
	<-errc
	return nil
}

func (s *Server) tftpRead(dir, filename string, rf io.ReaderFrom) error {
	remote := ""
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		a := ot.RemoteAddr()
		remote = a.String()
	}
	name := strings.TrimPrefix(filename, "/")
	if !slices.Contains(TFTPFiles, name) {
		s.m.requests.WithLabelValues("tftp", "404").Inc()
		s.log.Warn("TFTP request for a file not served", "file", clipName(filename), "remote", remote)
		return errors.New("file not found")
	}
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		s.m.requests.WithLabelValues("tftp", "404").Inc()
		s.log.Warn("TFTP file missing", "file", name, "dir", dir, "remote", remote, "err", err)
		return errors.New("file not found")
	}
	defer func() { _ = f.Close() }()
	if fi, err := f.Stat(); err == nil {
		if ot, ok := rf.(tftp.OutgoingTransfer); ok {
			ot.SetSize(fi.Size())
		}
	}
	n, err := rf.ReadFrom(f)
	s.m.bytes.WithLabelValues("tftp").Add(float64(n))
	if err != nil {
		s.m.requests.WithLabelValues("tftp", "500").Inc()
		s.log.Warn("TFTP transfer failed", "file", name, "remote", remote, "bytes", n, "err", err)
		return err
	}
	s.m.requests.WithLabelValues("tftp", "200").Inc()
	s.log.Info("TFTP transfer", "file", name, "remote", remote, "bytes", n)
	return nil
}

// clipName shortens a hostile file name for a log line.
func clipName(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
