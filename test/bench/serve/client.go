package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"os"
	"strconv"
)

// conn is one HTTP/1.1 keep-alive connection of the load generator. It parses only what it
// needs (status, Content-Length, chunked, Connection: close) so that the generator costs far less
// CPU per request than the servers it measures: net/http's client would cost more than a small
// response does to serve, and on a shared machine that would cap both servers alike.
type conn struct {
	addr string
	host string
	c    net.Conn
	br   *bufio.Reader
	req  []byte // reused request buffer
	buf  []byte // body sink
	// null, if set, is /dev/null: bodies with a Content-Length go there from the socket by
	// splice(2), without being copied to user space (see fetch -splice)
	null *os.File
}

func dialConn(ctx context.Context, addr string, sink int) (*conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	return &conn{addr: addr, host: addr, c: c, br: bufio.NewReaderSize(c, 64<<10), buf: make([]byte, sink)}, nil
}

func (c *conn) Close() error { return c.c.Close() }

// get sends GET path and reads the whole response, discarding the body. It returns the status,
// the body length and whether the server keeps the connection open.
func (c *conn) get(path string) (status int, n int64, keep bool, err error) {
	c.req = append(c.req[:0], "GET "...)
	c.req = append(c.req, path...)
	c.req = append(c.req, " HTTP/1.1\r\nHost: "...)
	c.req = append(c.req, c.host...)
	c.req = append(c.req, "\r\nUser-Agent: imgctl-bench\r\n\r\n"...)
	if _, err := c.c.Write(c.req); err != nil {
		return 0, 0, false, fmt.Errorf("GET %s: %w", path, err)
	}
	return c.read(path)
}

var (
	hdrContentLength    = []byte("content-length")
	hdrTransferEncoding = []byte("transfer-encoding")
	hdrConnection       = []byte("connection")
)

func (c *conn) read(path string) (status int, n int64, keep bool, err error) {
	line, err := c.line()
	if err != nil {
		return 0, 0, false, fmt.Errorf("GET %s: reading the status line: %w", path, err)
	}
	// "HTTP/1.1 200 OK"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, 0, false, fmt.Errorf("GET %s: malformed status line %q", path, line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, 0, false, fmt.Errorf("GET %s: malformed status line %q", path, line)
	}
	length, chunked, keep := int64(-1), false, true
	for {
		line, err = c.line()
		if err != nil {
			return 0, 0, false, fmt.Errorf("GET %s: reading headers: %w", path, err)
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, 0, false, fmt.Errorf("GET %s: malformed header %q", path, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, hdrContentLength):
			length, err = strconv.ParseInt(string(value), 10, 64)
			if err != nil || length < 0 {
				return 0, 0, false, fmt.Errorf("GET %s: malformed Content-Length %q", path, value)
			}
		case bytes.EqualFold(name, hdrTransferEncoding):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, hdrConnection):
			keep = !bytes.EqualFold(value, []byte("close"))
		}
	}
	switch {
	case chunked:
		n, err = c.discard(httputil.NewChunkedReader(c.br), -1)
		for err == nil { // the chunked reader stops after the last chunk: the trailer and its end are ours
			if line, err = c.line(); err == nil && len(line) == 0 {
				break
			}
		}
	case length >= 0 && c.null != nil:
		n, err = c.splice(length)
	case length >= 0:
		n, err = c.discard(c.br, length)
	default:
		n, err = c.discard(c.br, -1)
		keep = false
	}
	if err != nil {
		return status, n, false, fmt.Errorf("GET %s: reading the body (%d bytes in): %w", path, n, err)
	}
	return status, n, keep, nil
}

// splice drops want bytes: what bufio already holds, then the rest from the socket to /dev/null
// (os.File.ReadFrom splices from a TCP connection).
func (c *conn) splice(want int64) (int64, error) {
	k, err := c.br.Discard(int(min(want, int64(c.br.Buffered()))))
	n := int64(k)
	if err != nil || n == want {
		return n, err
	}
	m, err := io.CopyN(c.null, c.c, want-n)
	n += m
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// line returns the next header line without its CRLF; it is valid until the next read.
func (c *conn) line() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

// discard reads and drops want bytes (all until EOF if want < 0) from r into c.buf; a large
// read goes straight from the socket into buf (bufio does not copy reads bigger than its buffer).
func (c *conn) discard(r io.Reader, want int64) (int64, error) {
	var n int64
	for want < 0 || n < want {
		p := c.buf
		if want >= 0 && want-n < int64(len(p)) {
			p = p[:want-n]
		}
		k, err := r.Read(p)
		n += int64(k)
		if err == io.EOF {
			if want < 0 {
				return n, nil
			}
			return n, io.ErrUnexpectedEOF
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// getOK is get that wants 200 and a connection that stays open.
func (c *conn) getOK(path string) (int64, error) {
	status, n, keep, err := c.get(path)
	if err != nil {
		return n, err
	}
	if status != 200 {
		return n, fmt.Errorf("GET %s from %s: status %d, want 200", path, c.addr, status)
	}
	if !keep {
		return n, fmt.Errorf("GET %s from %s: the server closed the keep-alive connection", path, c.addr)
	}
	return n, nil
}
