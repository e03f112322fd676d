package nodeconfig

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
)

const etcdHead = "apiVersion: imgctl/v1alpha1\nkind: NodeConfig\nspec:\n  role: master\n  cluster:\n    name: lab\n    etcd:\n"

func TestParseEtcd(t *testing.T) {
	tests := []struct {
		name, body string
		want       map[string]string
	}{
		{"both", "      heartbeatInterval: 500ms\n      electionTimeout: 10s\n", map[string]string{"heartbeat-interval": "500", "election-timeout": "10000"}},
		{"election only", "      electionTimeout: 2500ms\n", map[string]string{"election-timeout": "2500"}},
		{"heartbeat within the default election timeout", "      heartbeatInterval: 200ms\n", map[string]string{"heartbeat-interval": "200"}},
		{"exactly five heartbeats", "      heartbeatInterval: 1s\n      electionTimeout: 5s\n", map[string]string{"heartbeat-interval": "1000", "election-timeout": "5000"}},
		{"etcd's maximum", "      heartbeatInterval: 1s\n      electionTimeout: 50s\n", map[string]string{"heartbeat-interval": "1000", "election-timeout": "50000"}},
		{"unset", "      {}\n", map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("test", []byte(strings.Replace(etcdHead+tt.body, "etcd:\n      {}", "etcd: {}", 1)))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Spec.Cluster.Etcd.Flags(); !maps.Equal(got, tt.want) {
				t.Errorf("Flags() = %v, want %v", got, tt.want)
			}
			js, err := json.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			if c.Spec.Cluster.Etcd.IsZero() == strings.Contains(string(js), `"etcd"`) {
				t.Errorf("JSON %s: etcd written iff set", js)
			}
			back, err := Parse("json", js)
			if err != nil || back.Spec.Cluster.Etcd != c.Spec.Cluster.Etcd {
				t.Errorf("JSON round trip: %v, %+v", err, back.Spec.Cluster.Etcd)
			}
		})
	}
}

func TestParseEtcdErrors(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{"not a duration", "      heartbeatInterval: fast\n", `user-data: spec.cluster.etcd.heartbeatInterval: "fast" is not a Go duration (expected e.g. 500ms or 5s)`},
		{"a number without unit", "      electionTimeout: 5000\n", `spec.cluster.etcd.electionTimeout: "5000" is not a Go duration`},
		{"below a millisecond", "      heartbeatInterval: 500us\n", `spec.cluster.etcd.heartbeatInterval: 500µs is not a whole number of milliseconds of at least 1ms (etcd counts in ms)`},
		{"fraction of a millisecond", "      electionTimeout: 1500.5ms\n", `spec.cluster.etcd.electionTimeout: 1.5005s is not a whole number of milliseconds`},
		{"negative", "      electionTimeout: -1s\n", `spec.cluster.etcd.electionTimeout: -1s is not a whole number of milliseconds of at least 1ms`},
		{"too long", "      heartbeatInterval: 1s\n      electionTimeout: 1m\n", `spec.cluster.etcd.electionTimeout: 1m0s is longer than etcd's maximum 50s`},
		{"too few heartbeats", "      heartbeatInterval: 500ms\n      electionTimeout: 2s\n", `spec.cluster.etcd.electionTimeout: 2s is shorter than 5 heartbeats of 500ms (2.5s): etcd refuses it`},
		{"default heartbeat", "      electionTimeout: 400ms\n", `spec.cluster.etcd.electionTimeout: 400ms is shorter than 5 heartbeats of 100ms (500ms): etcd refuses it`},
		{"default election timeout", "      heartbeatInterval: 500ms\n", `spec.cluster.etcd.heartbeatInterval: 500ms needs an election timeout of at least 2.5s (5 heartbeats), etcd's default is 1s: set electionTimeout too`},
		{"unknown field", "      snapshotCount: 10\n", `spec.cluster.etcd.snapshotCount: unknown field (expected heartbeatInterval or electionTimeout)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("user-data", []byte(etcdHead+tt.body))
			if err == nil {
				t.Fatalf("no error, got %+v", c.Spec.Cluster.Etcd)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\n does not contain %q", err, tt.want)
			}
		})
	}
}

// Every role accepts spec.cluster.etcd, so that an inventory group's config can carry it for
// the whole cluster: only the master uses it.
func TestEtcdAnyRole(t *testing.T) {
	for _, body := range []string{
		"  role: node\n  cluster: {apiServer: \"https://10.0.0.1:6443\", etcd: {electionTimeout: 5s}}\n  credentials: {bootstrapToken: abcdef.0123456789abcdef, caCertHashes: [\"sha256:" + strings.Repeat("a", 64) + "\"]}\n",
		"  role: masterFollower\n  cluster: {apiServer: \"https://10.0.0.1:6443\", etcd: {electionTimeout: 5s}}\n  credentials: {bootstrapToken: abcdef.0123456789abcdef, certificateKey: " + strings.Repeat("b", 64) + ", caCertHashes: [\"sha256:" + strings.Repeat("a", 64) + "\"]}\n",
	} {
		if _, err := Parse("test", []byte("apiVersion: imgctl/v1alpha1\nkind: NodeConfig\nspec:\n"+body)); err != nil {
			t.Errorf("%v\n%s", err, body)
		}
	}
}
