package awsfake

import (
	"bytes"
	"encoding/xml"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
)

// EC2 stands in front of an upstream EC2 (moto): it records every EC2 request's parameters and
// the EBS direct calls that pass through it, and it can override the states DescribeImages and
// DescribeSnapshots report. Tests use the record for what moto drops (RegisterImage's block
// device mappings and ImdsSupport) and the overrides to make AWS misbehave: a copy stuck
// pending, an AMI failed, a snapshot in error. Requests are otherwise left to the Server's
// upstream. Safe for concurrent use.
type EC2 struct {
	// Upstream is where DescribeImages and DescribeSnapshots go when their reply is rewritten
	// (the Server's Upstream).
	Upstream *url.URL
	// Client sends those requests (nil: http.DefaultClient).
	Client *http.Client

	mu        sync.Mutex
	calls     []Call
	images    []override
	snapshots []override
	faults    []fault
}

type fault struct {
	action, region string // region "" = any
	status         int
	code, message  string
}

// Call is one request the EC2 handler saw.
type Call struct {
	Service string // from the request's signature: ec2, ebs, ssm…
	Region  string // from the request's signature
	// Action is the EC2 Action, or for EBS direct calls StartSnapshot, PutSnapshotBlock,
	// CompleteSnapshot, ListSnapshotBlocks, ListChangedBlocks or GetSnapshotBlock.
	Action string
	Params url.Values // EC2: the query parameters (RegisterImage's BlockDeviceMapping.1.Ebs.VolumeType, …)
	Path   string
}

type override struct {
	region, id     string // "" = any
	state, message string
}

func (o override) match(region, id string) bool {
	return (o.region == "" || o.region == region) && (o.id == "" || o.id == id)
}

// SetImageState makes DescribeImages report state (pending, failed, …) with message as its
// StateReason for image id in region ("" = every image, every region). The latest matching
// setting wins.
func (e *EC2) SetImageState(region, id, state, message string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.images = append(e.images, override{region, id, state, message})
}

// SetSnapshotState makes DescribeSnapshots report state (pending, error, …) with message as
// its StateMessage for snapshot id in region ("" = every snapshot, every region).
func (e *EC2) SetSnapshotState(region, id, state, message string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.snapshots = append(e.snapshots, override{region, id, state, message})
}

// Fail makes every EC2 request of action in region ("" = any) fail with HTTP status and the
// EC2 error code and message (e.g. 403 UnauthorizedOperation).
func (e *EC2) Fail(action, region string, status int, code, message string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = append(e.faults, fault{action, region, status, code, message})
}

// Calls returns the requests seen with action ("" = all), oldest first.
func (e *EC2) Calls(action string) []Call {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Call
	for _, c := range e.calls {
		if action == "" || c.Action == action {
			out = append(out, c)
		}
	}
	return out
}

// ServeAWS implements Handler: it records the request, answers DescribeImages and
// DescribeSnapshots itself when an override applies (asking Upstream and rewriting its
// reply), and leaves everything else to the Server.
func (e *EC2) ServeAWS(w http.ResponseWriter, r *http.Request, body []byte) bool {
	service, region := signedScope(r)
	c := Call{Service: service, Region: region, Path: r.URL.Path}
	switch service {
	case "ec2":
		q, err := url.ParseQuery(string(body))
		if err != nil {
			return false
		}
		c.Params, c.Action = q, q.Get("Action")
	case "ebs":
		c.Action = ebsAction(r.Method, r.URL.Path)
	default:
		return false
	}
	e.mu.Lock()
	e.calls = append(e.calls, c)
	for _, f := range e.faults {
		if f.action == c.Action && (f.region == "" || f.region == region) && service == "ec2" {
			e.mu.Unlock()
			w.Header().Set("Content-Type", "text/xml")
			w.WriteHeader(f.status)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<Response><Errors><Error><Code>`+escape(f.code)+
				`</Code><Message>`+escape(f.message)+`</Message></Error></Errors><RequestID>awsfake</RequestID></Response>`)
			return true
		}
	}
	var rules []override
	var rewrite func([]byte, []override, string) []byte
	switch c.Action {
	case "DescribeImages":
		rules, rewrite = e.applying(e.images, region), rewriteImages
	case "DescribeSnapshots":
		rules, rewrite = e.applying(e.snapshots, region), rewriteSnapshots
	}
	e.mu.Unlock()
	if len(rules) == 0 {
		return false
	}
	resp, err := e.forward(r, body)
	if err != nil {
		http.Error(w, "awsfake: "+err.Error(), http.StatusBadGateway)
		return true
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		http.Error(w, "awsfake: "+err.Error(), http.StatusBadGateway)
		return true
	}
	if resp.StatusCode == http.StatusOK {
		out = rewrite(out, rules, region)
	}
	for k, v := range resp.Header {
		if k != "Content-Length" {
			w.Header()[k] = v
		}
	}
	w.WriteHeader(resp.StatusCode)
	w.Write(out)
	return true
}

// applying returns the overrides that may apply in region, latest first. e.mu is held.
func (e *EC2) applying(all []override, region string) []override {
	var out []override
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].region == "" || all[i].region == region {
			out = append(out, all[i])
		}
	}
	return out
}

func (e *EC2) forward(r *http.Request, body []byte) (*http.Response, error) {
	u := *e.Upstream
	u.Path, u.RawQuery = r.URL.Path, r.URL.RawQuery
	req, err := http.NewRequestWithContext(r.Context(), r.Method, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = r.Header.Clone()
	c := e.Client
	if c == nil {
		c = http.DefaultClient
	}
	return c.Do(req)
}

// signedScope reads the service and region from a SigV4 Authorization header
// (Credential=KEY/DATE/REGION/SERVICE/aws4_request).
func signedScope(r *http.Request) (service, region string) {
	_, cred, ok := strings.Cut(r.Header.Get("Authorization"), "Credential=")
	if !ok {
		return "", ""
	}
	cred, _, _ = strings.Cut(cred, ",")
	parts := strings.Split(cred, "/")
	if len(parts) != 5 {
		return "", ""
	}
	return parts[3], parts[2]
}

// ebsAction names an EBS direct API call by its method and path.
func ebsAction(method, path string) string {
	p := strings.Split(strings.Trim(path, "/"), "/")
	switch {
	case method == http.MethodPost && len(p) == 1 && p[0] == "snapshots":
		return "StartSnapshot"
	case method == http.MethodPost && len(p) == 3 && p[1] == "completion":
		return "CompleteSnapshot"
	case method == http.MethodPut && len(p) == 4 && p[2] == "blocks":
		return "PutSnapshotBlock"
	case method == http.MethodGet && len(p) == 4 && p[2] == "blocks":
		return "GetSnapshotBlock"
	case method == http.MethodGet && len(p) == 3 && p[2] == "blocks":
		return "ListSnapshotBlocks"
	case method == http.MethodGet && len(p) == 3 && p[2] == "changedblocks":
		return "ListChangedBlocks"
	}
	return method + " " + path
}

// rewriteImages sets imageState (and a stateReason) of the matching items of a
// DescribeImages reply.
func rewriteImages(b []byte, rules []override, region string) []byte {
	return rewriteItems(b, rules, region, "imageId", "imageState", func(msg string) string {
		return "<stateReason><code>Client.Fake</code><message>" + escape(msg) + "</message></stateReason>"
	})
}

// rewriteSnapshots sets status (and a statusMessage) of the matching items of a
// DescribeSnapshots reply.
func rewriteSnapshots(b []byte, rules []override, region string) []byte {
	return rewriteItems(b, rules, region, "snapshotId", "status", func(msg string) string {
		return "<statusMessage>" + escape(msg) + "</statusMessage>"
	})
}

// rewriteItems finds each <idTag>ID</idTag>, and for a matching ID replaces the text of the
// next <stateTag> (moto writes an item's state after its ID) and inserts extra(message) after
// it.
func rewriteItems(b []byte, rules []override, region, idTag, stateTag string, extra func(string) string) []byte {
	s := string(b)
	openID, closeID := "<"+idTag+">", "</"+idTag+">"
	openSt, closeSt := "<"+stateTag+">", "</"+stateTag+">"
	var out strings.Builder
	for {
		i := strings.Index(s, openID)
		if i < 0 {
			break
		}
		j := strings.Index(s[i:], closeID)
		if j < 0 {
			break
		}
		id := s[i+len(openID) : i+j]
		end := i + j + len(closeID)
		out.WriteString(s[:end])
		s = s[end:]
		var rule *override
		for k := range rules {
			if rules[k].match(region, id) {
				rule = &rules[k]
				break
			}
		}
		if rule == nil {
			continue
		}
		a := strings.Index(s, openSt)
		if a < 0 {
			continue
		}
		z := strings.Index(s[a:], closeSt)
		if z < 0 {
			continue
		}
		out.WriteString(s[:a])
		out.WriteString(openSt + escape(rule.state) + closeSt)
		if rule.message != "" {
			out.WriteString(extra(rule.message))
		}
		s = s[a+z+len(closeSt):]
	}
	out.WriteString(s)
	return []byte(out.String())
}

func escape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}
