package health

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultCRISocket is containerd's CRI endpoint.
const DefaultCRISocket = "/run/containerd/containerd.sock"

// CRI API versions, as reported in CRIInfo.API.
const (
	APIv1       = "v1"
	APIv1alpha2 = "v1alpha2"
)

// maxResponse bounds a gRPC response body; a VersionResponse is about a hundred bytes.
const maxResponse = 64 << 10

// CRIInfo is a container runtime's answer to RuntimeService/Version.
type CRIInfo struct {
	Version           string // the CRI version the runtime speaks, e.g. "0.1.0"
	RuntimeName       string // e.g. "containerd"
	RuntimeVersion    string // e.g. "1.6.20~ds1"
	RuntimeAPIVersion string // e.g. "v1"
	API               string // the service that answered: APIv1 or APIv1alpha2
}

// Code is a gRPC status code.
type Code uint32

// Unimplemented is the gRPC status of a method or service the server does not have.
const Unimplemented Code = 12

var codeNames = [...]string{
	"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
	"PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
	"Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
}

// String returns the code's name, as grpc-go spells it.
func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "Code(" + strconv.FormatUint(uint64(c), 10) + ")"
}

// StatusError is a non-OK gRPC status returned by the server (grpc-status and grpc-message), or
// derived from a non-200 HTTP status as the gRPC HTTP/2 protocol specifies.
type StatusError struct {
	Code    Code
	Message string
}

// Error reads like grpc-go's status errors.
func (e *StatusError) Error() string {
	return fmt.Sprintf("rpc error: code = %s desc = %s", e.Code, e.Message)
}

// IsCode reports whether err carries a *StatusError with code c.
func IsCode(err error, c Code) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == c
}

// CRIVersion calls RuntimeService/Version on the CRI endpoint at socket (a path, or a
// unix:// URL) and returns the runtime's answer. It asks runtime.v1 first and, if the runtime
// answers Unimplemented (containerd before 1.6 serves only the older service), runtime.v1alpha2.
//
// gRPC is spoken directly over net/http's unencrypted HTTP/2 (prior knowledge) on a fresh
// connection, closed before returning, so each call also proves the runtime still accepts
// connections. ctx bounds the whole call; its deadline is passed on as grpc-timeout. Errors name
// the socket and the method; a gRPC status is a *StatusError (see IsCode).
func CRIVersion(ctx context.Context, socket string) (CRIInfo, error) {
	path := strings.TrimPrefix(socket, "unix://")
	if path == "" {
		return CRIInfo{}, errors.New("CRI version: empty socket path")
	}
	tr := unixH2Transport(path)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}

	info, err := criVersion(ctx, c, socket, APIv1)
	if err == nil || !IsCode(err, Unimplemented) {
		return info, err
	}
	info, err = criVersion(ctx, c, socket, APIv1alpha2)
	if IsCode(err, Unimplemented) {
		return CRIInfo{}, fmt.Errorf("%w (runtime.v1 is Unimplemented too: is the CRI plugin enabled?)", err)
	}
	return info, err
}

func criVersion(ctx context.Context, c *http.Client, socket, api string) (CRIInfo, error) {
	method := "runtime." + api + ".RuntimeService/Version"
	// An empty VersionRequest: its only field, the kubelet's API version, is informational.
	msg, err := grpcUnary(ctx, c, method, nil)
	if err != nil {
		return CRIInfo{}, fmt.Errorf("CRI %s %s: %w", socket, method, err)
	}
	info, err := decodeVersionResponse(msg)
	if err != nil {
		return CRIInfo{}, fmt.Errorf("CRI %s %s: %w", socket, method, err)
	}
	info.API = api
	return info, nil
}

// unixH2Transport returns a transport that speaks HTTP/2 without TLS (prior knowledge, as gRPC
// does) to the unix socket at path, whatever the request's host.
func unixH2Transport(path string) *http.Transport {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Transport{
		Protocols: &p,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
}

// grpcUnary makes one unary gRPC call of method ("pkg.Service/Method") with the serialized
// request msg and returns the serialized response message.
func grpcUnary(ctx context.Context, c *http.Client, method string, msg []byte) ([]byte, error) {
	body := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:5], uint32(len(msg))) // body[0] = 0: not compressed
	copy(body[5:], msg)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://localhost/"+method, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("User-Agent", "imgctl-node")
	if dl, ok := ctx.Deadline(); ok {
		req.Header.Set("Grpc-Timeout", grpcTimeout(time.Until(dl)))
	}
	resp, err := c.Do(req)
	if err != nil {
		var ue *url.Error // drop its `Post "http://localhost/…"`: the caller names socket and method
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, ctxErr(ctx, err)
	}
	defer resp.Body.Close()

	// A trailers-only response (an error before any message) carries its status in the headers.
	if st := resp.Header.Get("Grpc-Status"); st != "" {
		if err := statusErr(st, resp.Header.Get("Grpc-Message")); err != nil {
			return nil, err
		}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &StatusError{Code: httpStatusCode(resp.StatusCode), Message: "HTTP status " + resp.Status}
	}
	if ct := resp.Header.Get("Content-Type"); !isGRPCContentType(ct) {
		return nil, fmt.Errorf("not a gRPC response: content-type %q", ct)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("reading response: %w", ctxErr(ctx, err))
	}
	if len(data) > maxResponse {
		return nil, fmt.Errorf("response larger than %d bytes", maxResponse)
	}
	st := resp.Trailer.Get("Grpc-Status")
	if st == "" {
		st = resp.Header.Get("Grpc-Status")
	}
	if st == "" {
		return nil, errors.New("response ended without grpc-status")
	}
	if err := statusErr(st, resp.Trailer.Get("Grpc-Message")); err != nil {
		return nil, err
	}
	return unaryMessage(data)
}

// unaryMessage returns the single length-prefixed message of a unary response body.
func unaryMessage(data []byte) ([]byte, error) {
	if len(data) == 0 {
		return nil, errors.New("status OK without a response message")
	}
	if len(data) < 5 {
		return nil, fmt.Errorf("message header: %d of 5 bytes: %w", len(data), errTruncated)
	}
	switch data[0] {
	case 0:
	case 1:
		return nil, errors.New("compressed response message (none was accepted)")
	default:
		return nil, fmt.Errorf("invalid message flags %#x", data[0])
	}
	n := binary.BigEndian.Uint32(data[1:5])
	rest := data[5:]
	if uint64(n) > uint64(len(rest)) {
		return nil, fmt.Errorf("message of %d bytes, %d received: %w", n, len(rest), errTruncated)
	}
	if int(n) < len(rest) {
		return nil, fmt.Errorf("%d bytes after the response message of a unary call", len(rest)-int(n))
	}
	return rest, nil
}

// statusErr turns grpc-status and grpc-message into nil (OK) or a *StatusError.
func statusErr(status, message string) error {
	code, err := strconv.ParseUint(status, 10, 32)
	if err != nil {
		return fmt.Errorf("invalid grpc-status %q", status)
	}
	if code == 0 {
		return nil
	}
	// grpc-message is percent-encoded UTF-8; keep it raw if it is not.
	if m, err := url.PathUnescape(message); err == nil {
		message = m
	}
	return &StatusError{Code: Code(code), Message: message}
}

// httpStatusCode maps a non-200 HTTP status without grpc-status to a gRPC code, as
// doc/http-grpc-status-mapping.md in grpc/grpc specifies.
func httpStatusCode(status int) Code {
	switch status {
	case http.StatusBadRequest:
		return 13 // Internal
	case http.StatusUnauthorized:
		return 16 // Unauthenticated
	case http.StatusForbidden:
		return 7 // PermissionDenied
	case http.StatusNotFound:
		return Unimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return 14 // Unavailable
	default:
		return 2 // Unknown
	}
}

// isGRPCContentType accepts application/grpc and application/grpc+proto (with parameters).
func isGRPCContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/grpc" || mt == "application/grpc+proto")
}

// grpcTimeout formats d as a grpc-timeout header value: at most 8 digits and a unit.
func grpcTimeout(d time.Duration) string {
	const maxValue = 99999999
	if d < time.Microsecond {
		d = time.Microsecond
	}
	if us := d.Microseconds(); us <= maxValue {
		return strconv.FormatInt(us, 10) + "u"
	}
	if ms := d.Milliseconds(); ms <= maxValue {
		return strconv.FormatInt(ms, 10) + "m"
	}
	s := min(int64(d/time.Second), maxValue)
	return strconv.FormatInt(s, 10) + "S"
}

// ctxErr makes sure an error caused by the end of ctx matches ctx.Err() (context.DeadlineExceeded
// or context.Canceled) with errors.Is, whatever the transport made of it.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	return err
}
