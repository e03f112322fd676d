package awsfake

import (
	"context"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/imgctl/imgctl/images/awsclient"
	"github.com/imgctl/imgctl/layers/testenv"
)

// This file is a test kit (like net/http/httptest): the AWS environment the tests of every
// package run in, and one moto_server per test binary that its tests take turns on.

// SetTestEnv sets, for the rest of t, the environment the AWS SDK (and moto_server, a child
// that inherits it) sees: static test credentials, no shared config or credentials file, no
// instance metadata service, and no other AWS_* setting of this machine.
func SetTestEnv(t testing.TB) {
	t.Helper()
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
		"AWS_CONFIG_FILE": os.DevNull, "AWS_SHARED_CREDENTIALS_FILE": os.DevNull,
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:1",
	} {
		t.Setenv(k, v)
	}
	for _, k := range []string{"AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
		"AWS_ENDPOINT_URL", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"} {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)  // unset, not empty: moto_server's boto3 takes AWS_PROFILE="" for a profile named ""
	}
}

// ClientsForTest sets the test environment (SetTestEnv) and returns clients of endpoint with
// region as their default region.
func ClientsForTest(t testing.TB, region, endpoint string) *awsclient.Clients {
	t.Helper()
	SetTestEnv(t)
	cfg, err := awsclient.Load(t.Context(), awsclient.Options{Region: region, EndpointURL: endpoint, NoIMDS: true})
	if err != nil {
		t.Fatal(err)
	}
	return awsclient.NewClients(cfg)
}

// TestEnv is one test's AWS: the test binary's moto_server, reset for the test, behind a
// Server that asks the test's handlers first, then an EC2 recorder, then passes the request
// to moto.
type TestEnv struct {
	Moto    *Moto              // the shared moto_server (its URL, its Log for a failure's message)
	Front   *Server            // the endpoint in front of Moto; Use adds handlers after EC2
	URL     string             // Front's endpoint URL
	EC2     *EC2               // records the EC2 and EBS direct calls through Front; fakes states and faults
	Clients *awsclient.Clients // clients of URL, the region given as their default
}

var shared struct {
	once sync.Once
	moto *Moto
	err  error
	turn sync.Mutex // the test that holds it has moto_server to itself
}

// MotoForTest gives t an AWS endpoint backed by moto_server: it skips (fails under CI=true)
// when integration tests are off or moto_server is not installed, sets the test environment
// (SetTestEnv), starts moto_server on the first call of the test binary and resets it on each
// (tests take turns: a second test's call waits until the first has ended, so a test must not
// call it again inside itself or its subtests), and starts a Server in front of it serving
// front, then an EC2 recorder. Everything but moto_server ends with t; a package's TestMain
// calls StopMoto after its tests.
func MotoForTest(t testing.TB, region string, front ...Handler) *TestEnv {
	t.Helper()
	testenv.Integration(t, "runs moto_server")
	testenv.Tools(t, "moto_server")
	SetTestEnv(t)
	shared.once.Do(func() { shared.moto, shared.err = StartMoto(context.Background(), 2*time.Minute, nil) })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	shared.turn.Lock()
	t.Cleanup(shared.turn.Unlock)
	ctx := t.Context()
	if err := shared.moto.Reset(ctx); err != nil {
		t.Fatalf("%v\n%s", err, shared.moto.Log())
	}
	up, err := url.Parse(shared.moto.URL)
	if err != nil {
		t.Fatal(err)
	}
	e := &TestEnv{Moto: shared.moto, Front: &Server{Upstream: up}, EC2: &EC2{Upstream: up}}
	e.Front.Use(front...)
	e.Front.Use(e.EC2)
	if e.URL, err = e.Front.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Front.Close() })
	e.Clients = ClientsForTest(t, region, e.URL)
	return e
}

// StopMoto stops the moto_server MotoForTest started, if it did. Call it from TestMain after
// m.Run.
func StopMoto() {
	if shared.moto != nil {
		shared.moto.Close()
	}
}
