package awsfake

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// Moto is a moto_server process listening on 127.0.0.1: the real peer the AWS tests run
// against (EBS direct, EC2 images and snapshots, SSM parameters, S3).
type Moto struct {
	URL string // http://127.0.0.1:PORT
	cmd *exec.Cmd
	out *os.File
}

// StartMoto starts moto_server (found in PATH) on a free loopback port and waits, at most
// timeout, until it answers. Its output goes to a temporary file that Close removes; the
// process is in its own process group and is killed by Close or when ctx ends.
func StartMoto(ctx context.Context, timeout time.Duration, logger *slog.Logger) (*Moto, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		return nil, fmt.Errorf("moto_server: %w (it comes with pip's moto[server])", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	out, err := os.CreateTemp("", "moto-*.log")
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, "-H", "127.0.0.1", "-p", strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		out.Close()
		os.Remove(out.Name())
		return nil, fmt.Errorf("starting moto_server: %w", err)
	}
	m := &Moto{URL: "http://127.0.0.1:" + strconv.Itoa(port), cmd: cmd, out: out}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(m.URL + "/moto-api/")
		if err == nil {
			resp.Body.Close()
			logger.Debug("moto_server is up", "url", m.URL, "pid", cmd.Process.Pid)
			go func() { <-exited }() // reaps the process once Close kills it
			return m, nil
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(out.Name())
			out.Close()
			os.Remove(out.Name())
			return nil, fmt.Errorf("moto_server exited before answering (%v): %s", err, tail(log, 2000))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.Close()
			return nil, fmt.Errorf("moto_server did not answer on %s within %s", m.URL, timeout)
		}
	}
}

// Log returns what moto_server printed so far (for a failing test's message).
func (m *Moto) Log() string {
	b, _ := os.ReadFile(m.out.Name())
	return tail(b, 8000)
}

// Reset forgets every resource moto holds (its /moto-api/reset), so tests can share one
// server.
func (m *Moto) Reset(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.URL+"/moto-api/reset", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("resetting moto: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("resetting moto: %s", resp.Status)
	}
	return nil
}

// Close kills moto_server and removes its log.
func (m *Moto) Close() {
	if m.cmd.Process != nil {
		syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
	}
	m.out.Close()
	os.Remove(m.out.Name())
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("no TCP port")
	}
	return addr.Port, nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
