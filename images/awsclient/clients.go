package awsclient

import (
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
)

// Clients makes each service's client once per region from one configuration (Load's), so
// every package talking to AWS gets the same credentials, endpoint and retry settings. Safe
// for concurrent use.
type Clients struct {
	Config aws.Config

	mu  sync.Mutex
	ebs map[string]*ebs.Client
	ec2 map[string]*ec2.Client
	ssm map[string]*ssm.Client
	s3  map[string]*s3.Client
}

// NewClients returns the clients of cfg.
func NewClients(cfg aws.Config) *Clients { return &Clients{Config: cfg} }

// Region is the configuration's default region.
func (c *Clients) Region() string { return c.Config.Region }

// EBS returns the EBS direct APIs client for region r.
func (c *Clients) EBS(r string) *ebs.Client {
	return client(c, &c.ebs, r, func(cfg aws.Config) *ebs.Client { return ebs.NewFromConfig(cfg) })
}

// EC2 returns the EC2 client for region r.
func (c *Clients) EC2(r string) *ec2.Client {
	return client(c, &c.ec2, r, func(cfg aws.Config) *ec2.Client { return ec2.NewFromConfig(cfg) })
}

// SSM returns the Systems Manager client for region r.
func (c *Clients) SSM(r string) *ssm.Client {
	return client(c, &c.ssm, r, func(cfg aws.Config) *ssm.Client { return ssm.NewFromConfig(cfg) })
}

// S3 returns the S3 client for region r. With an endpoint override it addresses buckets by
// path (http://HOST/BUCKET/KEY), as moto and most S3-compatible endpoints need.
func (c *Clients) S3(r string) *s3.Client {
	return client(c, &c.s3, r, func(cfg aws.Config) *s3.Client {
		return s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = cfg.BaseEndpoint != nil })
	})
}

func client[T any](c *Clients, m *map[string]T, r string, mk func(aws.Config) T) T {
	c.mu.Lock()
	defer c.mu.Unlock()
	if *m == nil {
		*m = map[string]T{}
	}
	if cl, ok := (*m)[r]; ok {
		return cl
	}
	cl := mk(InRegion(c.Config, r))
	(*m)[r] = cl
	return cl
}
