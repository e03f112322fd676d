package serve

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pin/tftp/v3"

	"github.com/imgctl/imgctl/images/store/storetest"
)

func TestTFTPServesOnlyIPXEBinaries(t *testing.T) {
	dir := t.TempDir()
	ipxe := bytes.Repeat([]byte("undionly "), 20000) // several blocks
	if err := os.WriteFile(filepath.Join(dir, "undionly.kpxe"), ipxe, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret.txt"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckTFTPDir(dir); err != nil {
		t.Fatal(err)
	}
	if err := CheckTFTPDir(t.TempDir()); err == nil || !strings.Contains(err.Error(), "holds none of undionly.kpxe") {
		t.Errorf("empty TFTP dir: %v", err)
	}
	f := newFixture(t, storetest.Open(t), Options{})
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.s.ServeTFTP(ctx, conn, dir) }()
	c, err := tftp.NewClient(conn.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	c.SetRetries(2)
	fetch := func(name string) ([]byte, error) {
		wt, err := c.Receive(name, "octet")
		if err != nil {
			return nil, err
		}
		var buf bytes.Buffer
		_, err = wt.WriteTo(&buf)
		return buf.Bytes(), err
	}
	for _, name := range []string{"undionly.kpxe", "/undionly.kpxe"} {
		got, err := fetch(name)
		if err != nil || !bytes.Equal(got, ipxe) {
			t.Errorf("%s: %d bytes, %v", name, len(got), err)
		}
	}
	for _, name := range []string{"secret.txt", "../secret.txt", dir + "/secret.txt", "undionly.kpxe/../secret.txt", "ipxe.efi"} {
		if got, err := fetch(name); err == nil {
			t.Errorf("%s: served %q", name, got)
		}
	}
	if _, err := c.Send("undionly.kpxe", "octet"); err == nil {
		t.Error("a TFTP write was accepted")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeTFTP: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("ServeTFTP did not return after its context ended")
	}
	if !strings.Contains(f.logs.String(), `msg="TFTP request for a file not served" file=secret.txt`) {
		t.Errorf("no WARN for a refused file:\n%s", f.logs)
	}
}
