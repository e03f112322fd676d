package awsclient

import (
	"context"
	"errors"
	"testing"
)

func TestCheckRegion(t *testing.T) {
	for r, ok := range map[string]bool{
		"us-east-1": true, "eu-central-2": true, "us-gov-west-1": true, "cn-north-1": true, "ap-southeast-4": true,
		"": false, "us-east": false, "US-EAST-1": false, "us--1": false, "us-east-1a": false, "-us-east-1": false,
		"us-east-1;rm": false, "us-east-x": false, "us-east-01-": false,
	} {
		if err := CheckRegion(r); (err == nil) != ok {
			t.Errorf("CheckRegion(%q) = %v, want ok=%v", r, err, ok)
		}
	}
}

func TestCheckAccount(t *testing.T) {
	for a, ok := range map[string]bool{"123456789012": true, "12345678901": false, "1234567890123": false, "12345678901a": false, "": false, "all": false} {
		if err := CheckAccount(a); (err == nil) != ok {
			t.Errorf("CheckAccount(%q) = %v, want ok=%v", a, err, ok)
		}
	}
}

func TestCheckEndpointURL(t *testing.T) {
	for u, ok := range map[string]bool{
		"http://127.0.0.1:5000": true, "https://ebs.us-east-1.amazonaws.com": true, "http://localhost:5000/moto": true,
		"": false, "127.0.0.1:5000": false, "ftp://x": false, "http://user:pw@host": false, "http://h/?a=b": false, "http://": false,
	} {
		if err := CheckEndpointURL(u); (err == nil) != ok {
			t.Errorf("CheckEndpointURL(%q) = %v, want ok=%v", u, err, ok)
		}
	}
}

// isolate points the SDK at no shared files and no environment credentials.
func isolate(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

func TestLoad(t *testing.T) {
	ctx := context.Background()
	isolate(t)
	if _, err := Load(ctx, Options{Region: "us-east-1", NoIMDS: true}); !errors.Is(err, ErrNoCredentials) {
		t.Fatalf("no credentials: err = %v, want ErrNoCredentials", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	if _, err := Load(ctx, Options{NoIMDS: true}); !errors.Is(err, ErrNoRegion) {
		t.Fatalf("no region: err = %v, want ErrNoRegion", err)
	}
	if _, err := Load(ctx, Options{Region: "nowhere", NoIMDS: true}); err == nil {
		t.Fatal("a bad region was accepted")
	}
	if _, err := Load(ctx, Options{Region: "us-east-1", EndpointURL: "localhost:5000", NoIMDS: true}); err == nil {
		t.Fatal("a bad endpoint URL was accepted")
	}
	cfg, err := Load(ctx, Options{Region: "us-east-1", EndpointURL: "http://127.0.0.1:5000", NoIMDS: true})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Region != "us-east-1" || cfg.BaseEndpoint == nil || *cfg.BaseEndpoint != "http://127.0.0.1:5000" {
		t.Fatalf("config: region %q endpoint %v", cfg.Region, cfg.BaseEndpoint)
	}
	if c := InRegion(cfg, "eu-west-1"); c.Region != "eu-west-1" || cfg.Region != "us-east-1" {
		t.Fatalf("InRegion: %q, original %q", c.Region, cfg.Region)
	}
	t.Setenv("AWS_REGION", "eu-west-2")
	if cfg, err := Load(ctx, Options{NoIMDS: true}); err != nil || cfg.Region != "eu-west-2" {
		t.Fatalf("AWS_REGION: %q, %v", cfg.Region, err)
	}
}

func TestClients(t *testing.T) {
	isolate(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	cfg, err := Load(context.Background(), Options{Region: "us-east-1", EndpointURL: "http://127.0.0.1:1", NoIMDS: true})
	if err != nil {
		t.Fatal(err)
	}
	c := NewClients(cfg)
	first := c.EC2("eu-west-1")
	if again := c.EC2("eu-west-1"); again != first || first == c.EC2("us-east-1") {
		t.Error("EC2 clients are not one per region")
	}
	if got := c.EC2("eu-west-1").Options().Region; got != "eu-west-1" {
		t.Errorf("EC2 client region %q", got)
	}
	if !c.S3("us-east-1").Options().UsePathStyle {
		t.Error("S3 with an endpoint override does not use path-style addressing")
	}
	if c.EBS("us-east-1") == nil || c.SSM("us-east-1") == nil || c.Region() != "us-east-1" {
		t.Error("clients missing")
	}
}
