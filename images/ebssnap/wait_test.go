package ebssnap

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/imgctl/imgctl/images/awsfake"
)

// describeSnapshots answers EC2 DescribeSnapshots with the states given, one per call (the
// last repeats); "missing" answers InvalidSnapshot.NotFound.
func describeSnapshots(t *testing.T, states ...string) (*ec2.Client, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	s := &awsfake.Server{}
	s.Use(awsfake.HandlerFunc(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		q, _ := url.ParseQuery(string(body))
		if q.Get("Action") != "DescribeSnapshots" {
			return false
		}
		n := int(calls.Add(1))
		st := states[min(n, len(states))-1]
		id := q.Get("SnapshotId.1")
		w.Header().Set("Content-Type", "text/xml")
		if st == "missing" {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `<Response><Errors><Error><Code>InvalidSnapshot.NotFound</Code><Message>The snapshot '%s' does not exist.</Message></Error></Errors><RequestID>r</RequestID></Response>`, id)
			return true
		}
		msg := ""
		if st == "error" {
			msg = "<statusMessage>the volume data could not be stored</statusMessage>"
		}
		fmt.Fprintf(w, `<DescribeSnapshotsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId><snapshotSet><item><snapshotId>%s</snapshotId><status>%s</status>%s<progress>42%%</progress></item></snapshotSet></DescribeSnapshotsResponse>`, id, st, msg)
		return true
	}))
	ctx, cancel := context.WithCancel(context.Background())
	u, err := s.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); cancel() })
	return awsfake.ClientsForTest(t, region, u).EC2(region), &calls
}

func TestWaitCompleted(t *testing.T) {
	ctx := context.Background()
	c, calls := describeSnapshots(t, "missing", "pending", "completed")
	if err := WaitCompleted(ctx, c, "snap-1", 10*time.Second, time.Millisecond); err != nil || calls.Load() != 3 {
		t.Errorf("completed after not found and pending: %v after %d calls", err, calls.Load())
	}
	c, _ = describeSnapshots(t, "pending", "error")
	err := WaitCompleted(ctx, c, "snap-2", 10*time.Second, time.Millisecond)
	if want := "ebssnap: snapshot snap-2 is in state error: the volume data could not be stored"; err == nil || err.Error() != want {
		t.Errorf("error state: %v, want %q", err, want)
	}
	c, _ = describeSnapshots(t, "pending")
	err = WaitCompleted(ctx, c, "snap-3", 50*time.Millisecond, 5*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "snapshot snap-3 still pending (42%) after 50ms") {
		t.Errorf("timeout: %v", err)
	}
}
