package ebssnap

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

func TestClassify(t *testing.T) {
	api := func(code, msg string) error { return &smithy.GenericAPIError{Code: code, Message: msg} }
	status := func(s int) error {
		return &awshttp.ResponseError{ResponseError: &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: s}}, Err: errors.New("x")}}
	}
	cases := []struct {
		op          string
		err         error
		justStarted bool
		want        verdict
	}{
		{"PutSnapshotBlock", api("AccessDeniedException", "no"), false, denied},
		{"PutSnapshotBlock", api("RequestThrottledException", "slow down"), false, retry},
		{"PutSnapshotBlock", api("InternalServerException", ""), false, retry},
		{"PutSnapshotBlock", api("ValidationException", "The snapshot 'snap-1' does not exist."), true, retry}, // coldsnap#43
		{"PutSnapshotBlock", api("ValidationException", "The snapshot 'snap-1' does not exist."), false, fail},
		{"PutSnapshotBlock", api("ValidationException", "bad checksum"), true, fail},
		{"PutSnapshotBlock", api("ResourceNotFoundException", "gone"), true, retry},
		{"StartSnapshot", api("ResourceNotFoundException", "no parent"), false, fail},
		{"StartSnapshot", api("ServiceQuotaExceededException", "too many"), false, fail},
		{"PutSnapshotBlock", status(503), false, retry},
		{"PutSnapshotBlock", status(429), false, retry},
		{"PutSnapshotBlock", status(403), false, denied},
		{"PutSnapshotBlock", status(400), false, fail},
		{"PutSnapshotBlock", status(0), false, retry},
		{"PutSnapshotBlock", fmt.Errorf("dial: %w", context.DeadlineExceeded), false, retry},
		{"CompleteSnapshot", permanent{errors.New("state error")}, false, fail},
	}
	for _, c := range cases {
		if got := classify(c.op, c.err, c.justStarted); got != c.want {
			t.Errorf("classify(%s, %v, just started %v) = %d, want %d", c.op, c.err, c.justStarted, got, c.want)
		}
	}
}
