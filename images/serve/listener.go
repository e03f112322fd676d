package serve

import (
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// tlsHandshakeByte is the first byte of every TLS connection (a handshake record); no HTTP
// request line starts with it.
const tlsHandshakeByte = 0x16

// listener caps the connections open at once and, with a TLS config, serves TLS and plain
// HTTP on one port: a per-connection goroutine reads the first byte (under a deadline, so a
// client that sends nothing holds a slot only that long) and hands http.Server a *tls.Conn
// for 0x16, the plain connection otherwise. The accept loop itself never reads.
type listener struct {
	inner  net.Listener
	tls    *tls.Config
	sniff  time.Duration
	slots  chan struct{}
	conns  chan net.Conn
	errc   chan error
	done   chan struct{}
	closed sync.Once
	log    *slog.Logger
	gauge  func(delta float64)
}

func newListener(inner net.Listener, tlsConfig *tls.Config, maxConns int, sniff time.Duration, log *slog.Logger, gauge func(float64)) *listener {
	l := &listener{
		inner: inner, tls: tlsConfig, sniff: sniff,
		slots: make(chan struct{}, maxConns),
		conns: make(chan net.Conn),
		errc:  make(chan error),
		done:  make(chan struct{}),
		log:   log, gauge: gauge,
	}
	go l.acceptLoop()
	return l
}

func (l *listener) acceptLoop() {
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return
		}
		c, err := l.inner.Accept()
		if err != nil {
			<-l.slots
			select {
			case l.errc <- err: // http.Server backs off and retries a temporary error, else stops
			case <-l.done:
				return
			}
			if !isTemporary(err) {
				return
			}
			continue
		}
		l.gauge(1)
		wc := &conn{Conn: c, release: l.release}
		if l.tls == nil {
			l.deliver(wc)
			continue
		}
		go l.detect(wc)
	}
}

// isTemporary reports accept errors worth retrying (EMFILE and the like): http.Server backs
// off and calls Accept again for them.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (l *listener) release() {
	l.gauge(-1)
	<-l.slots
}

// detect reads the first byte of c and delivers a TLS or a plain connection.
func (l *listener) detect(c *conn) {
	_ = c.SetReadDeadline(time.Now().Add(l.sniff))
	var b [1]byte
	if _, err := io.ReadFull(c.Conn, b[:]); err != nil {
		l.log.Debug("connection closed before its first byte", "remote", c.RemoteAddr().String(), "err", err)
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	c.first = b[:]
	if b[0] == tlsHandshakeByte {
		l.deliver(tls.Server(c, l.tls))
		return
	}
	l.deliver(c)
}

func (l *listener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		_ = c.Close()
	}
}

// Accept implements net.Listener.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errc:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *listener) Close() error {
	var err error
	l.closed.Do(func() {
		close(l.done)
		err = l.inner.Close()
	})
	return err
}

// Addr implements net.Listener.
func (l *listener) Addr() net.Addr { return l.inner.Addr() }

// conn is an accepted connection: it replays the byte detect read, frees its slot when closed,
// and passes ReadFrom and CloseWrite to the TCP connection, so that http.ServeContent on a
// file still uses sendfile(2).
type conn struct {
	net.Conn
	first   []byte
	once    sync.Once
	release func()
}

func (c *conn) Read(p []byte) (int, error) {
	if len(c.first) > 0 {
		n := copy(p, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// ReadFrom passes to the TCP connection's ReadFrom (sendfile for an *os.File).
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{c.Conn}, r)
}

// CloseWrite lets http.Server half-close before closing.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

type writerOnly struct{ io.Writer }
