package ebssnap

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
)

// permanent marks an error no retry can cure.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// verdict says what to do about a failed attempt.
type verdict int

const (
	retry verdict = iota
	fail
	denied // fail, naming the IAM action
)

// classify decides whether a failed attempt of op may succeed if repeated. justStarted says
// the snapshot was started moments ago: EBS may not know it yet (coldsnap#43).
func classify(op string, err error, justStarted bool) verdict {
	var p permanent
	if errors.As(err, &p) {
		return fail
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch code := ae.ErrorCode(); code {
		case "AccessDeniedException", "AccessDenied", "UnauthorizedOperation", "UnrecognizedClientException",
			"InvalidClientTokenId", "InvalidSignatureException", "ExpiredTokenException", "ExpiredToken":
			return denied
		case "RequestThrottledException", "ThrottlingException", "Throttling", "TooManyRequestsException",
			"ConcurrentLimitExceededException", "InternalServerException", "InternalFailure",
			"ServiceUnavailable", "ServiceUnavailableException", "RequestTimeout", "RequestTimeoutException":
			return retry
		case "ResourceNotFoundException":
			// The snapshot just started may not be visible yet; a missing parent at
			// StartSnapshot never appears.
			if op != "StartSnapshot" {
				return retry
			}
			return fail
		case "ValidationException":
			if op != "StartSnapshot" && justStarted && strings.Contains(strings.ToLower(ae.ErrorMessage()), "does not exist") {
				return retry
			}
			return fail
		case "ServiceQuotaExceededException", "ConflictException":
			return fail
		}
	}
	// Status 0: no response at all (a dropped connection, a reset, this attempt's timeout).
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		s := re.HTTPStatusCode()
		if s == 0 || s >= 500 || s == http.StatusTooManyRequests || s == http.StatusRequestTimeout {
			return retry
		}
		if s == http.StatusForbidden {
			return denied
		}
		return fail
	}
	if ae != nil {
		return fail // an answer saying no, whatever its code
	}
	// No response at all: a dropped connection, a reset, a timeout of this attempt.
	return retry
}

// justStartedFor is how long after StartSnapshot "does not exist" is taken for EBS catching
// up rather than a wrong ID.
const justStartedFor = 2 * time.Minute

// call runs one operation (on block i, or -1) with per-attempt timeouts and retries.
func (u *uploader) call(ctx context.Context, op string, i int64, fn func(context.Context) error) error {
	what := op
	switch {
	case i >= 0:
		what = fmt.Sprintf("%s of block %d to %s", op, i, u.id)
	case u.id != "":
		what = fmt.Sprintf("%s of %s", op, u.id)
	}
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, u.o.RequestTimeout)
		err := fn(actx)
		timedOut := actx.Err() != nil
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if timedOut {
			err = fmt.Errorf("no answer within %s: %w", u.o.RequestTimeout, err)
		}
		u.mu.Lock()
		justStarted := !u.startedAt.IsZero() && time.Since(u.startedAt) < justStartedFor
		u.mu.Unlock()
		switch classify(op, err, justStarted) {
		case denied:
			return fmt.Errorf("ebssnap: %s: access denied: the credentials need the IAM permission %s%s: %w", what, iamAction[op], u.kmsHint(), err)
		case fail:
			return fmt.Errorf("ebssnap: %s failed (IAM action %s): %w", what, iamAction[op], err)
		}
		if attempt >= u.o.MaxAttempts {
			return fmt.Errorf("ebssnap: %s: gave up after %d attempts: %w", what, attempt, err)
		}
		d := u.backoff(attempt)
		u.log.Debug("retrying", "op", op, "block", i, "attempt", attempt, "delay", d, "err", err)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

func (u *uploader) kmsHint() string {
	if u.o.Encrypted || u.o.KMSKeyARN != "" {
		return " (and, for an encrypted snapshot, kms:GenerateDataKeyWithoutPlaintext and kms:Decrypt on the KMS key)"
	}
	return ""
}

// backoff is the delay before retry number attempt: RetryDelay doubled per attempt, at most
// 20 s, then between half and all of that at random so that many blocks throttled together
// do not come back together.
func (u *uploader) backoff(attempt int) time.Duration {
	d := u.o.RetryDelay << min(attempt-1, 16)
	if d > maxRetryDelay || d <= 0 {
		d = maxRetryDelay
	}
	return d/2 + rand.N(d/2+1)
}
