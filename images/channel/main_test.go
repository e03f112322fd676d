package channel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/store"
	"github.com/imgctl/imgctl/images/store/storetest"

	digest "github.com/opencontainers/go-digest"
)

// Child processes: the test binary re-executes itself with childEnv set to a mode, so that
// several real processes share one store.
const (
	childEnv    = "IMGCTL_CHANNEL_TEST_CHILD"
	storeEnv    = "CHANNEL_TEST_STORE"
	idEnv       = "CHANNEL_TEST_ID"
	countEnv    = "CHANNEL_TEST_COUNT"
	goFileEnv   = "CHANNEL_TEST_GO"
	versionsEnv = "CHANNEL_TEST_VERSIONS"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		if err := runChild(context.Background(), mode); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childResult is what a "move" child prints on stdout.
type childResult struct {
	OK       []digest.Digest `json:"ok"` // the images it moved the channel to
	Conflict int             `json:"conflict"`
}

func runChild(ctx context.Context, mode string) error {
	dir := os.Getenv(storeEnv)
	l, err := Open(dir, nil)
	if err != nil {
		return err
	}
	switch mode {
	case "move": // COUNT read-head→Move attempts on nightly, once GO exists; no retries
		n, err := strconv.Atoi(os.Getenv(countEnv))
		if err != nil {
			return err
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			if _, err := os.Stat(os.Getenv(goFileEnv)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return errors.New("no go signal")
			}
		}
		var res childResult
		for i := range n {
			h, err := l.History(ctx, "nightly")
			if err != nil {
				return err
			}
			to := digest.FromString(fmt.Sprintf("process %s move %d", os.Getenv(idEnv), i))
			_, err = l.Move(ctx, "nightly", h.Head(), Entry{Action: ActionPromote, To: to})
			switch {
			case err == nil:
				res.OK = append(res.OK, to)
			case errors.Is(err, ErrConflict):
				res.Conflict++
			default:
				return err
			}
		}
		return json.NewEncoder(os.Stdout).Encode(res)

	case "promoteloop": // promote the next of VERSIONS into nightly, then nightly into staging, until killed
		st, err := store.Open(ctx, dir, nil)
		if err != nil {
			return err
		}
		versions := strings.Split(os.Getenv(versionsEnv), ",")
		index := map[digest.Digest]int{}
		for i, v := range versions {
			img, err := st.Resolve(ctx, v)
			if err != nil {
				return err
			}
			index[img.Digest()] = i
		}
		for {
			h, err := l.History(ctx, "nightly")
			if err != nil {
				return err
			}
			next := 0
			if i, ok := index[h.Head()]; ok {
				next = (i + 1) % len(versions)
			}
			if _, err := l.Promote(ctx, st, Promotion{Image: versions[next], To: "nightly", Reason: "crash test"}); err != nil {
				return err
			}
			if _, err := l.Promote(ctx, st, Promotion{Image: "nightly", To: "staging", Reason: "crash test"}); err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// startChild runs the test binary as a child in mode, with extra environment.
func startChild(t *testing.T, mode, dir string, env ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{childEnv + "=" + mode, storeEnv + "=" + dir}, env...)...)
	out := &strings.Builder{}
	cmd.Stdout = out
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, out
}

// testLogger logs to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newEnv opens a new store and its channels, with images of versions.
func newEnv(t *testing.T, versions ...string) (*store.Store, *Log, map[string]store.Image) {
	t.Helper()
	st := storetest.Open(t)
	l, err := Open(st.Dir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	imgs := map[string]store.Image{}
	for i, v := range versions {
		imgs[v] = storetest.PutVersion(t, st, v, int64(1000+i))
	}
	return st, l, imgs
}

// assertWhole checks a history's invariants independently of History.check: Seq 1, 2, … and
// each From the previous To.
func assertWhole(t *testing.T, h History, ch string) {
	t.Helper()
	if h.SchemaVersion != 1 || h.Channel != ch {
		t.Errorf("history header: schemaVersion %d, channel %q", h.SchemaVersion, h.Channel)
	}
	var prev digest.Digest
	for i, e := range h.Entries {
		if e.Seq != i+1 || e.Channel != ch || e.From != prev || e.To == "" || e.To == e.From {
			t.Fatalf("%s entries[%d] breaks the chain (previous To %s): %+v", ch, i, prev, e)
		}
		prev = e.To
	}
}

// fileBytes returns a file's content, or nil if it does not exist.
func fileBytes(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return data
}

func historyFile(l *Log, ch string) string { return filepath.Join(l.Dir(), ch+".json") }
