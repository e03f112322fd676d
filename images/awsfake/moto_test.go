package awsfake

import (
	"context"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/imgctl/imgctl/layers/testenv"
)

func TestStartMoto(t *testing.T) {
	testenv.Integration(t, "starts moto_server")
	testenv.Tools(t, "moto_server")
	ctx := context.Background()
	m, err := StartMoto(ctx, time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Reset(ctx); err != nil {
		t.Fatalf("%v\n%s", err, m.Log())
	}
	m.Close()
	c := &http.Client{Timeout: time.Second}
	for i := 0; ; i++ {
		resp, err := c.Get(m.URL + "/moto-api/")
		if err != nil {
			break
		}
		resp.Body.Close()
		if i == 50 {
			t.Fatal("moto_server still answers after Close")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	StopMoto()
	os.Exit(code)
}

// TestMotoForTest: each test gets the one moto_server, reset (what the test before made is
// gone), the AWS test environment, and a front that asks the test's handlers before the EC2
// recorder.
func TestMotoForTest(t *testing.T) {
	// Here, not only in MotoForTest: under -short the subtests skip, and the checks after
	// them would fail on handlers nobody asked.
	testenv.Integration(t, "runs moto_server")
	testenv.Tools(t, "moto_server")
	t.Setenv("AWS_PROFILE", "someone")
	var first *Moto
	var asked []string
	for i, name := range []string{"first", "second"} {
		t.Run(name, func(t *testing.T) {
			e := MotoForTest(t, "eu-west-1", HandlerFunc(func(w http.ResponseWriter, r *http.Request, body []byte) bool {
				asked = append(asked, name)
				return false
			}))
			if v, ok := os.LookupEnv("AWS_PROFILE"); ok {
				t.Errorf("AWS_PROFILE=%q set in the test environment", v)
			}
			if first == nil {
				first = e.Moto
			} else if e.Moto != first {
				t.Error("a second moto_server started")
			}
			c := e.Clients.EC2("eu-west-1")
			vs, err := c.DescribeVolumes(t.Context(), &ec2.DescribeVolumesInput{})
			if err != nil {
				t.Fatalf("%v\n%s", err, e.Moto.Log())
			}
			if len(vs.Volumes) != 0 {
				t.Errorf("test %d sees %d volumes, want 0 (moto not reset)", i, len(vs.Volumes))
			}
			if _, err := c.CreateVolume(t.Context(), &ec2.CreateVolumeInput{AvailabilityZone: aws.String("eu-west-1a"), Size: aws.Int32(1)}); err != nil {
				t.Fatal(err)
			}
			if calls := e.EC2.Calls("CreateVolume"); len(calls) != 1 || calls[0].Region != "eu-west-1" {
				t.Errorf("the recorder saw %+v, want one CreateVolume in eu-west-1", calls)
			}
		})
	}
	if os.Getenv("AWS_PROFILE") != "someone" {
		t.Error("the test environment outlived the test")
	}
	if len(asked) < 4 || asked[0] != "first" || asked[len(asked)-1] != "second" {
		t.Errorf("front handlers asked %v, want each test's own, first", asked)
	}
}
