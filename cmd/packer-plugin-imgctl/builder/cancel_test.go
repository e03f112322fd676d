package builder

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/packer-plugin-sdk/packer"

	"github.com/imgctl/imgctl/builders/buildtest"
)

// TestRunCancelDuringBuild: Packer cancels Run while a source downloads: Run returns promptly
// with the cancellation, and the output directory and lock file it would have made are gone.
func TestRunCancelDuringBuild(t *testing.T) {
	b := newBuild(t)
	started := make(chan struct{}, 1)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-r.Context().Done() // never answers: only a cancelled build ends this
	}))
	defer slow.Close()
	body := []byte("never sent")
	src := "extra=" + slow.URL + "/slow#sha256=" + buildtest.Sha(body) + "&path=/etc/slow&mode=0644"
	bl := prepared(t, b.config(map[string]any{"sources": []string{src}}))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-started:
			cancel()
		case <-time.After(time.Minute):
		}
	}()
	begin := time.Now()
	art, err := bl.Run(ctx, &packer.MockUi{}, &packer.MockHook{})
	took := time.Since(begin)
	if !errors.Is(err, errCancelled) || art != nil {
		t.Fatalf("Run: %v (artifact %v), want the cancellation", err, art)
	}
	if took > 10*time.Second {
		t.Errorf("Run took %s after being cancelled", took)
	}
	for _, p := range []string{b.out(), filepath.Join(b.dir, "imgctl.lock")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after the cancelled build: %v", p, err)
		}
	}
}

// TestRunCancelDuringPublish: Packer cancels Run while a copy of the AMI is pending: Run
// returns promptly and the cleanup removes the AMIs, snapshots and parameter already made.
func TestRunCancelDuringPublish(t *testing.T) {
	e := newAWS(t)
	b := newBuild(t)
	before := map[string]map[string]bool{"us-east-1": e.snapshots(t, "us-east-1"), "eu-west-1": e.snapshots(t, "eu-west-1")}
	e.fake.SetImageState("eu-west-1", "", "pending", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil && len(e.fake.Calls("CopyImage")) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond) // waiting for the copy now
		cancel()
	}()
	art, err := runAMI(t, ctx, b, e, nil)
	if !errors.Is(err, errCancelled) || art != nil {
		t.Fatalf("Run: %v (artifact %v), want the cancellation", err, art)
	}
	if len(e.fake.Calls("CopyImage")) == 0 {
		t.Fatal("cancelled before the copy: proves nothing")
	}
	e.checkNothingLeft(t, b, before, "cancelled")
}
