package buildtest

import (
	"net/http"
	"sync"
	"testing"
)

// The fixture's server counts requests from concurrent fetches (builds fetch in parallel):
// the count must be right and, under -race, free of data races.
func TestFixtureCountsConcurrentRequests(t *testing.T) {
	f := NewFixture(t)
	const n = 16
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(f.Srv.URL + "/bin/kubelet")
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		}()
	}
	wg.Wait()
	if got := f.Hits("/bin/kubelet"); got != n {
		t.Errorf("Hits(/bin/kubelet) = %d, want %d", got, n)
	}
}
