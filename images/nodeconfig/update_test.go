package nodeconfig

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

const updateHead = "apiVersion: imgctl/v1alpha1\nkind: NodeConfig\nspec:\n  role: node\n  update:\n"

func TestParseUpdate(t *testing.T) {
	c, err := Parse("test", []byte(updateHead+
		"    server: http://10.0.2.100:8080\n    channel: prod\n    interval: 30m\n    window: \"22:00-02:30\"\n    enabled: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	want := Update{Server: "http://10.0.2.100:8080", Channel: "prod", Interval: "30m", Window: "22:00-02:30", Enabled: &yes}
	if !reflect.DeepEqual(c.Spec.Update, want) {
		t.Fatalf("got %+v, want %+v", c.Spec.Update, want)
	}
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Parse("json", js)
	if err != nil {
		t.Fatalf("%v\n%s", err, js)
	}
	if !reflect.DeepEqual(c, c2) {
		t.Fatalf("JSON round trip changed the config:\n%s", js)
	}
	pub := c.Public()
	*pub.Spec.Update.Enabled = false // the copy's flag is its own
	if !*c.Spec.Update.Enabled {
		t.Fatal("Public shares spec.update.enabled with the original")
	}
}

func TestParseUpdateErrors(t *testing.T) {
	tests := []struct {
		name, body string
		want       []string
	}{
		{"enabled not a boolean", "    server: http://s\n    channel: prod\n    enabled: yes\n", []string{`user-data: spec.update.enabled: expected a boolean, got str "yes"`}},
		{"unknown field", "    url: http://s\n", []string{"user-data: spec.update.url: unknown field (expected server, channel, interval, window or enabled)"}},
		{"server scheme", "    server: ftp://s\n    channel: prod\n", []string{`spec.update.server: update server "ftp://s": want an http:// or https:// URL`}},
		{"server query", "    server: http://s/?a=b\n    channel: prod\n", []string{`spec.update.server: update server "http://s/?a=b": a query is not allowed`}},
		{"server user", "    server: http://u:secret@s\n    channel: prod\n", []string{`spec.update.server: update server "http://u:xxxxx@s": user info in the URL is not allowed`}},
		{"channel grammar", "    server: http://s\n    channel: Prod_1\n", []string{`spec.update.channel: "Prod_1" is not a channel name (1 to 63 lower-case letters, digits or '-', starting and ending with a letter or digit)`}},
		{"interval", "    server: http://s\n    channel: prod\n    interval: hourly\n", []string{`spec.update.interval: "hourly" is not a Go duration (expected e.g. 1h or 30m)`}},
		{"interval short", "    server: http://s\n    channel: prod\n    interval: 5s\n", []string{`spec.update.interval: 5s is shorter than the minimum 10s`}},
		{"window form", "    server: http://s\n    channel: prod\n    window: 2-4\n", []string{`spec.update.window: "2-4" is not HH:MM-HH:MM (UTC, e.g. 02:00-04:00)`}},
		{"window hour", "    server: http://s\n    channel: prod\n    window: \"24:00-04:00\"\n", []string{`spec.update.window: "24:00-04:00" is not HH:MM-HH:MM (UTC, e.g. 02:00-04:00)`}},
		{"window empty", "    server: http://s\n    channel: prod\n    window: \"04:00-04:00\"\n", []string{`spec.update.window: "04:00-04:00" starts where it ends (leave window empty to reboot at any time)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("user-data", []byte(updateHead+tt.body))
			if err == nil {
				t.Fatalf("no error, got %+v", c.Spec.Update)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\n does not contain %q", err, w)
				}
			}
		})
	}
}

func TestValidateUpdateRequired(t *testing.T) {
	yes, no := true, false
	tests := []struct {
		name string
		u    Update
		want string // "" = valid
	}{
		{"absent", Update{}, ""},
		{"disabled alone", Update{Enabled: &no}, ""},
		{"disabled with server", Update{Server: "http://s", Channel: "prod", Enabled: &no}, ""},
		{"enabled without server", Update{Enabled: &yes}, "spec.update.server: required when updates are enabled"},
		{"channel without server", Update{Channel: "prod"}, "spec.update.server: required with spec.update.channel"},
		{"server without channel", Update{Server: "http://s"}, "spec.update.channel: required with spec.update.server"},
		{"window without server", Update{Window: "02:00-04:00"}, "spec.update.server: required with spec.update.window"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			probs := tt.u.check()
			var got []string
			for _, p := range probs {
				got = append(got, p.Error())
			}
			switch {
			case tt.want == "" && len(got) > 0:
				t.Fatalf("unexpected problems %q", got)
			case tt.want != "" && !strings.Contains(strings.Join(got, "\n"), tt.want):
				t.Fatalf("problems %q, want %q", got, tt.want)
			}
		})
	}
}

func TestUpdateDefaults(t *testing.T) {
	no := false
	tests := []struct {
		name        string
		in          Update
		wantEnabled bool
		wantIntvl   string
	}{
		{"absent stays off", Update{}, false, ""},
		{"server enables", Update{Server: "http://s", Channel: "prod"}, true, "1h0m0s"},
		{"explicit off kept", Update{Server: "http://s", Channel: "prod", Enabled: &no}, false, "1h0m0s"},
		{"interval normalized", Update{Server: "http://s", Channel: "prod", Interval: "90m"}, true, "1h30m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &NodeConfig{Spec: Spec{Update: tt.in}}
			c.Defaults()
			u := c.Spec.Update
			if u.IsEnabled() != tt.wantEnabled || u.Interval != tt.wantIntvl {
				t.Fatalf("got %+v (enabled %v)", u, u.IsEnabled())
			}
			if tt.in.Server != "" && u.Enabled == nil {
				t.Fatal("Defaults left enabled unset")
			}
		})
	}
	if got := (Update{Server: "http://s", Channel: "prod", Interval: "2m"}).IntervalDuration(); got != 2*time.Minute {
		t.Fatalf("IntervalDuration = %v", got)
	}
	if got := (Update{}).IntervalDuration(); got != DefaultUpdateInterval {
		t.Fatalf("IntervalDuration of unset = %v", got)
	}
}

func TestUpdateInWindow(t *testing.T) {
	at := func(hm string) time.Time {
		tm, err := time.Parse("15:04", hm)
		if err != nil {
			t.Fatal(err)
		}
		return time.Date(2026, 12, 5, tm.Hour(), tm.Minute(), 30, 0, time.UTC)
	}
	tests := []struct {
		window string
		at     string
		want   bool
	}{
		{"", "13:37", true},
		{"02:00-04:00", "02:00", true},
		{"02:00-04:00", "03:59", true},
		{"02:00-04:00", "04:00", false},
		{"02:00-04:00", "01:59", false},
		{"22:00-02:30", "23:10", true},
		{"22:00-02:30", "00:00", true},
		{"22:00-02:30", "02:29", true},
		{"22:00-02:30", "02:30", false},
		{"22:00-02:30", "21:59", false},
		{"22:00-02:30", "12:00", false},
		{"nonsense", "12:00", false}, // never reboot on a window it cannot read
	}
	for _, tt := range tests {
		u := Update{Window: tt.window}
		if got := u.InWindow(at(tt.at)); got != tt.want {
			t.Errorf("window %q at %s: InWindow = %v, want %v", tt.window, tt.at, got, tt.want)
		}
	}
	// The window is UTC whatever the time's location.
	cet := time.FixedZone("CET", 3600)
	if !(Update{Window: "02:00-04:00"}).InWindow(time.Date(2026, 12, 5, 4, 30, 0, 0, cet)) {
		t.Error("04:30 CET = 03:30 UTC is inside 02:00-04:00 UTC")
	}
}
