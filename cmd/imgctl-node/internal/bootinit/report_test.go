package bootinit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/cmdline"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/report"
	"github.com/imgctl/imgctl/cmd/imgctl-node/internal/steplog"
	"github.com/imgctl/imgctl/images/nodeapi"
)

// TestInitReport: a network boot reports the init phase (its steps so far and the root digest)
// once the network is up: ok just before switching root, or the failed step before rebooting.
// A disk boot, a boot whose network never came up, or a command line without a metadata server
// and credential sends nothing.
func TestInitReport(t *testing.T) {
	var mu sync.Mutex
	var reports []*nodeapi.Report
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rep, err := nodeapi.ParseReport(body)
		if r.Method != http.MethodPost || r.URL.Path != nodeapi.ReportPath || err != nil ||
			nodeapi.CredentialFromHeader(r.Header.Get(nodeapi.AuthorizationHeader)) != "tok" {
			http.Error(w, fmt.Sprint("bad report: ", err), http.StatusBadRequest)
			return
		}
		mu.Lock()
		reports = append(reports, rep)
		mu.Unlock()
	}))
	defer srv.Close()
	got := func() []*nodeapi.Report {
		mu.Lock()
		defer mu.Unlock()
		return append([]*nodeapi.Report(nil), reports...)
	}
	d := digest([]byte("root"))
	meta := " imgctl.metadata=" + srv.URL + " imgctl.credential=tok imgctl.metadata-insecure=1"
	netLine := "console=ttyS0 imgctl.root=http://10.0.2.2/blobs/" + d + meta
	o := report.Options{Timeout: time.Second, Backoff: time.Millisecond}

	boot := func(line string, up bool, failed error) {
		t.Helper()
		cfg, err := cmdline.Parse(line)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		log := steplog.New(&out)
		log.Start("cmdline").Done()
		r := newInitReport(line, cfg, o)
		if up {
			r.netUp()
		}
		if failed != nil {
			_ = log.Start("fetch-root").Fail(failed)
		} else {
			log.Start("mount-root").Done()
		}
		r.send(context.Background(), log, failed)
	}

	boot(netLine, true, nil)
	boot(netLine, true, errors.New("digest mismatch: want "+d))
	rs := got()
	if len(rs) != 2 {
		t.Fatalf("%d reports, want 2", len(rs))
	}
	if r := rs[0]; r.Phase != nodeapi.PhaseInit || !r.OK || r.RootDigest != d || len(r.Steps) != 2 || r.Steps[1].Name != "mount-root" || r.Role != "" {
		t.Errorf("ok report = %+v", r)
	}
	if r := rs[1]; r.OK || r.Failed != "fetch-root" || r.RootDigest != d || !strings.Contains(r.Steps[1].Error, "digest mismatch") {
		t.Errorf("failed report = %+v", r)
	}

	boot(netLine, false, errors.New("no DHCP answer")) // the network never came up
	boot("console=ttyS0 imgctl.root=PARTLABEL=ROOT-A"+meta, true, nil)
	boot("console=ttyS0 imgctl.root=http://10.0.2.2/blobs/"+d+" imgctl.metadata="+srv.URL, true, nil)
	if n := len(got()); n != 2 {
		t.Errorf("%d reports after three boots that must not report, want still 2", n)
	}
}
