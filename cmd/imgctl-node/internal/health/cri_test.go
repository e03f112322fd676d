package health

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	v1Method       = "/runtime.v1.RuntimeService/Version"
	v1alpha2Method = "/runtime.v1alpha2.RuntimeService/Version"
)

// reply is what the fake runtime answers to one method.
type reply struct {
	msg          []byte // the response message, framed by the server
	body         []byte // if set, written as the raw body instead of a framed msg
	code         Code   // grpc-status
	rawStatus    string // if set, sent as grpc-status instead of code
	message      string // grpc-message, percent-encoded on the wire
	trailersOnly bool   // status in the headers, no body (grpc-go's way to answer errors)
	noStatus     bool   // end the stream without grpc-status
	httpStatus   int    // if set, answer this HTTP status without any gRPC headers
	contentType  string // if set, instead of application/grpc
	hang         bool   // send nothing until the client goes away
	hangAfter    bool   // send headers, then nothing until the client goes away
}

// fakeRuntime is a CRI server on a unix socket: net/http with unencrypted HTTP/2 only, writing
// real gRPC frames and trailers. Methods missing from replies answer Unimplemented, trailers-only,
// as grpc-go does for an unknown service.
type fakeRuntime struct {
	t       *testing.T
	socket  string
	mu      sync.Mutex
	replies map[string]reply
	calls   []string // paths, in order
	timeout []string // grpc-timeout headers received
}

func startFakeRuntime(t *testing.T, replies map[string]reply) *fakeRuntime {
	t.Helper()
	f := &fakeRuntime{t: t, socket: filepath.Join(t.TempDir(), "cri.sock"), replies: replies}
	ln, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: f, Protocols: &p}
	go func() { _ = srv.Serve(ln) }() // ErrServerClosed at cleanup
	t.Cleanup(func() { srv.Close() })
	return f
}

func (f *fakeRuntime) setReplies(replies map[string]reply) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replies = replies
}

func (f *fakeRuntime) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeRuntime) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// What a gRPC server requires of the request.
	if r.ProtoMajor != 2 || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/grpc" ||
		r.Header.Get("Te") != "trailers" {
		f.t.Errorf("request %s %s %s content-type=%q te=%q: not a gRPC request", r.Proto, r.Method, r.URL.Path,
			r.Header.Get("Content-Type"), r.Header.Get("Te"))
	}
	body, err := io.ReadAll(r.Body)
	if err != nil || !bytes.Equal(body, []byte{0, 0, 0, 0, 0}) {
		f.t.Errorf("request body %x, %v; want an empty VersionRequest frame", body, err)
	}
	f.mu.Lock()
	f.calls = append(f.calls, r.URL.Path)
	if v := r.Header.Get("Grpc-Timeout"); v != "" {
		f.timeout = append(f.timeout, v)
	}
	rep, ok := f.replies[r.URL.Path]
	f.mu.Unlock()
	if !ok {
		rep = reply{code: Unimplemented, message: "unknown service " + strings.TrimPrefix(path.Dir(r.URL.Path), "/"), trailersOnly: true}
	}
	switch {
	case rep.hang:
		<-r.Context().Done()
		return
	case rep.httpStatus != 0:
		w.WriteHeader(rep.httpStatus)
		return
	}
	ct := "application/grpc"
	if rep.contentType != "" {
		ct = rep.contentType
	}
	w.Header().Set("Content-Type", ct)
	status := func(h http.Header, prefix string) {
		st := strconv.Itoa(int(rep.code))
		if rep.rawStatus != "" {
			st = rep.rawStatus
		}
		h.Set(prefix+"Grpc-Status", st)
		if rep.message != "" {
			h.Set(prefix+"Grpc-Message", url.PathEscape(rep.message))
		}
	}
	if rep.trailersOnly {
		status(w.Header(), "")
		w.WriteHeader(http.StatusOK)
		return
	}
	w.WriteHeader(http.StatusOK)
	if rep.hangAfter {
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		return
	}
	if rep.body != nil {
		w.Write(rep.body)
	} else if rep.msg != nil {
		w.Write(frame(rep.msg))
	}
	if !rep.noStatus {
		status(w.Header(), http.TrailerPrefix)
	}
}

// frame prefixes msg with the gRPC message header (not compressed, big-endian length).
func frame(msg []byte) []byte {
	b := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

var containerd16 = CRIInfo{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "1.6.20~ds1", RuntimeAPIVersion: "v1"}

func TestCRIVersionV1(t *testing.T) {
	f := startFakeRuntime(t, map[string]reply{
		v1Method:       {msg: encodeVersionResponse(containerd16)},
		v1alpha2Method: {msg: encodeVersionResponse(CRIInfo{RuntimeName: "wrong: v1 answered"})},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, socket := range []string{f.socket, "unix://" + f.socket} {
		got, err := CRIVersion(ctx, socket)
		want := containerd16
		want.API = APIv1
		if err != nil || got != want {
			t.Errorf("CRIVersion(%s) = %+v, %v; want %+v", socket, got, err, want)
		}
	}
	if calls := f.Calls(); len(calls) != 2 || calls[0] != v1Method || calls[1] != v1Method {
		t.Errorf("calls = %v; want v1 twice", calls)
	}
	// The deadline reached the server as grpc-timeout, in microseconds (just under 5 s).
	if len(f.timeout) != 2 || !strings.HasSuffix(f.timeout[0], "u") || len(f.timeout[0]) != 8 {
		t.Errorf("grpc-timeout headers = %q; want 2 of about 5000000u", f.timeout)
	}
}

func TestCRIVersionFallsBackToV1alpha2(t *testing.T) {
	old := CRIInfo{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "v1.4.13", RuntimeAPIVersion: "v1alpha2"}
	for name, v1 := range map[string]reply{
		"trailers-only":   {code: Unimplemented, message: "unknown service runtime.v1.RuntimeService", trailersOnly: true},
		"status trailers": {code: Unimplemented, message: "unknown method Version"},
		"HTTP 404":        {httpStatus: http.StatusNotFound},
	} {
		t.Run(name, func(t *testing.T) {
			f := startFakeRuntime(t, map[string]reply{v1Method: v1, v1alpha2Method: {msg: encodeVersionResponse(old)}})
			got, err := CRIVersion(context.Background(), f.socket)
			want := old
			want.API = APIv1alpha2
			if err != nil || got != want {
				t.Errorf("CRIVersion = %+v, %v; want %+v", got, err, want)
			}
			if calls := f.Calls(); len(calls) != 2 || calls[0] != v1Method || calls[1] != v1alpha2Method {
				t.Errorf("calls = %v; want v1 then v1alpha2", calls)
			}
		})
	}
}

func TestCRIVersionNoCRIService(t *testing.T) {
	f := startFakeRuntime(t, nil) // e.g. containerd with disabled_plugins = ["cri"]
	_, err := CRIVersion(context.Background(), f.socket)
	if !IsCode(err, Unimplemented) || !strings.Contains(err.Error(), v1alpha2Method[1:]) ||
		!strings.Contains(err.Error(), "CRI plugin enabled?") || !strings.Contains(err.Error(), f.socket) {
		t.Errorf("err = %v; want Unimplemented naming the socket, the v1alpha2 method and the CRI plugin", err)
	}
}

func TestCRIVersionStatusError(t *testing.T) {
	for name, rep := range map[string]reply{
		"trailers-only": {code: 14, message: "runtime not ready: 100% busy\nretry", trailersOnly: true},
		"trailers":      {code: 14, message: "runtime not ready: 100% busy\nretry"},
		"after message": {code: 14, message: "runtime not ready: 100% busy\nretry", msg: encodeVersionResponse(containerd16)},
	} {
		t.Run(name, func(t *testing.T) {
			f := startFakeRuntime(t, map[string]reply{v1Method: rep, v1alpha2Method: {msg: encodeVersionResponse(containerd16)}})
			_, err := CRIVersion(context.Background(), f.socket)
			var se *StatusError
			if !errors.As(err, &se) || se.Code != 14 || se.Message != rep.message {
				t.Fatalf("err = %#v; want StatusError{14, %q}", err, rep.message)
			}
			want := f.socket + " runtime.v1.RuntimeService/Version: rpc error: code = Unavailable desc = runtime not ready"
			if !strings.Contains(err.Error(), want) {
				t.Errorf("err = %q; want it to contain %q", err, want)
			}
			if calls := f.Calls(); len(calls) != 1 {
				t.Errorf("calls = %v; want no fallback for a status other than Unimplemented", calls)
			}
		})
	}
}

func TestCRIVersionMalformed(t *testing.T) {
	good := encodeVersionResponse(containerd16)
	for _, tc := range []struct {
		name string
		rep  reply
		want string
	}{
		{"truncated frame", reply{body: frame(good)[:12]}, "truncated"},
		{"short frame header", reply{body: []byte{0, 0, 0}}, "message header: 3 of 5 bytes"},
		{"no message", reply{}, "without a response message"},
		{"two messages", reply{body: append(frame(good), frame(good)...)}, "after the response message"},
		{"compressed", reply{body: append([]byte{1}, frame(good)[1:]...)}, "compressed"},
		{"bad flags", reply{body: append([]byte{0x80}, frame(good)[1:]...)}, "invalid message flags"},
		{"bad protobuf", reply{msg: []byte{0x0f}}, "invalid wire type 7"},
		{"no grpc-status", reply{msg: good, noStatus: true}, "without grpc-status"},
		{"bad grpc-status", reply{msg: good, rawStatus: "OK"}, `invalid grpc-status "OK"`},
		{"grpc+proto content-type", reply{msg: good, contentType: "application/grpc+proto"}, ""}, // valid
		{"not gRPC", reply{msg: good, contentType: "text/html"}, `content-type "text/html"`},
		{"HTTP 503", reply{httpStatus: http.StatusServiceUnavailable}, "code = Unavailable desc = HTTP status 503"},
		{"too large", reply{body: frame(bytes.Repeat([]byte{0}, maxResponse))}, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFakeRuntime(t, map[string]reply{v1Method: tc.rep})
			got, err := CRIVersion(context.Background(), f.socket)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("CRIVersion = %+v, %v; want success", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), f.socket) {
				t.Errorf("CRIVersion = %+v, %v; want an error naming the socket and containing %q", got, err, tc.want)
			}
		})
	}
}

func TestCRIVersionNoSocket(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "missing.sock")
	_, err := CRIVersion(context.Background(), socket)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), socket) ||
		!strings.Contains(err.Error(), "runtime.v1.RuntimeService/Version") {
		t.Errorf("err = %v; want ErrNotExist naming %s and the method", err, socket)
	}
	if _, err := CRIVersion(context.Background(), "unix://"); err == nil {
		t.Error("empty socket path: no error")
	}
}

func TestCRIVersionHonoursContext(t *testing.T) {
	for name, rep := range map[string]reply{
		"no headers":         {hang: true},
		"headers, then none": {hangAfter: true},
	} {
		t.Run(name, func(t *testing.T) {
			f := startFakeRuntime(t, map[string]reply{v1Method: rep})
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := CRIVersion(ctx, f.socket)
			if took := time.Since(start); took > time.Second {
				t.Errorf("CRIVersion took %v with a 200ms deadline", took)
			}
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), f.socket) {
				t.Errorf("err = %v; want DeadlineExceeded naming the socket", err)
			}
		})
	}
}

func TestStatusErr(t *testing.T) {
	if err := statusErr("0", "ignored"); err != nil {
		t.Errorf(`statusErr("0") = %v`, err)
	}
	if err := statusErr("x", ""); err == nil || IsCode(err, 0) {
		t.Errorf(`statusErr("x") = %v; want an invalid-status error`, err)
	}
	err := statusErr("99", "raw %zz kept")
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 99 || se.Message != "raw %zz kept" || !strings.Contains(err.Error(), "Code(99)") {
		t.Errorf(`statusErr("99") = %#v`, err)
	}
}

func TestGRPCTimeout(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:             "1u",
		0:                        "1u",
		1500 * time.Microsecond:  "1500u",
		20 * time.Second:         "20000000u",
		time.Hour:                "3600000m",
		30 * time.Hour:           "108000S",
		time.Duration(1<<63 - 1): "99999999S",
	} {
		if got := grpcTimeout(d); got != want {
			t.Errorf("grpcTimeout(%v) = %q; want %q", d, got, want)
		}
	}
}
