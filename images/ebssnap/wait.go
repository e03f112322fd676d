package ebssnap

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// WaitCompleted polls snapshot id every poll until it is completed, at most timeout. A
// snapshot in state error fails with its state message; one still pending at the deadline
// fails naming its state and progress.
func WaitCompleted(ctx context.Context, ec2c *ec2.Client, id string, timeout, poll time.Duration) error {
	if poll <= 0 {
		poll = 10 * time.Second
	}
	outer := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := "not yet visible"
	for {
		out, err := ec2c.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{id}})
		var ae smithy.APIError
		switch {
		case err == nil && len(out.Snapshots) > 0:
			s := out.Snapshots[0]
			switch s.State {
			case ec2types.SnapshotStateCompleted:
				return nil
			case ec2types.SnapshotStateError, ec2types.SnapshotStateRecoverable:
				msg := aws.ToString(s.StateMessage)
				if msg == "" {
					msg = "AWS gave no state message"
				}
				return fmt.Errorf("ebssnap: snapshot %s is in state %s: %s", id, s.State, msg)
			}
			last = fmt.Sprintf("%s (%s)", s.State, aws.ToString(s.Progress))
		case err == nil:
		case errors.As(err, &ae) && ae.ErrorCode() == "InvalidSnapshot.NotFound":
			// EC2 learns of a snapshot the EBS direct APIs made a little later.
		case ctx.Err() != nil:
		default:
			return fmt.Errorf("ebssnap: describing snapshot %s: %w", id, err)
		}
		select {
		case <-time.After(poll):
		case <-ctx.Done():
			if err := outer.Err(); err != nil {
				return err
			}
			return fmt.Errorf("ebssnap: snapshot %s still %s after %s", id, last, timeout)
		}
	}
}
