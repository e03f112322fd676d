package awsfake

import (
	"context"
	"net/http"
	"testing"
	"time"

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
