package health

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// DefaultKubeletHealthzURL is the kubelet's healthz endpoint (--healthz-port 10248 on loopback).
const DefaultKubeletHealthzURL = "http://127.0.0.1:10248/healthz"

// maxHealthzBody bounds how much of a healthz answer is read and quoted in an error.
const maxHealthzBody = 256

// healthzClient uses a new connection for every check (a wedged kubelet must not be hidden by a
// kept-alive connection), no proxy, and does not follow redirects.
var healthzClient = &http.Client{
	Transport: &http.Transport{DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// KubeletHealthz reports whether the kubelet's healthz endpoint at url (DefaultKubeletHealthzURL
// if empty) answers 200 with the body "ok". Any other answer is an error quoting the status and
// the start of the body (the kubelet lists its failing checks there). ctx bounds the request.
func KubeletHealthz(ctx context.Context, url string) error {
	if url == "" {
		url = DefaultKubeletHealthzURL
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("kubelet healthz: %w", err)
	}
	req.Header.Set("User-Agent", "imgctl-node")
	resp, err := healthzClient.Do(req)
	if err != nil {
		return fmt.Errorf("kubelet healthz: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHealthzBody+1))
	if err != nil {
		return fmt.Errorf("kubelet healthz %s: %s: reading body: %w", url, resp.Status, err)
	}
	if resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == "ok" {
		return nil
	}
	short := string(body)
	if len(body) > maxHealthzBody {
		short = string(body[:maxHealthzBody]) + "…"
	}
	return fmt.Errorf("kubelet healthz %s: %s: %q", url, resp.Status, short)
}
