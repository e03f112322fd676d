package awschannel

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/ami"
)

func TestSettingsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if s, err := LoadSettings(dir); s != nil || err != nil {
		t.Fatalf("no aws.json: %v, %v; want nil, nil", s, err)
	}
	want := Settings{Regions: []string{"us-east-1", "eu-west-1"}, SSMPrefix: "/imgctl/nodes", Share: []string{"123456789012"}}
	if err := SaveSettings(t.Context(), dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := LoadSettings(dir)
	if err != nil || got == nil || !reflect.DeepEqual(*got, want) {
		t.Fatalf("LoadSettings: %+v, %v; want %+v", got, err, want)
	}
	fi, err := os.Stat(filepath.Join(dir, SettingsFile))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("aws.json: %v, %v", fi, err)
	}
	if err := RemoveSettings(dir); err != nil {
		t.Fatal(err)
	}
	if s, err := LoadSettings(dir); s != nil || err != nil {
		t.Fatalf("after RemoveSettings: %v, %v; want nil, nil", s, err)
	}
	if err := RemoveSettings(dir); err != nil {
		t.Fatalf("removing absent settings: %v", err)
	}
}

func TestSettingsErrorsNameFileAndField(t *testing.T) {
	cases := []struct {
		name, content string
		want          []string
	}{
		{"not json", `{"regions": [`, []string{"unexpected EOF"}},
		{"unknown field", `{"regions":["us-east-1"],"ssmPrefix":"/p","prefix":"/x"}`, []string{`"prefix"`}},
		{"no regions", `{"ssmPrefix":"/p"}`, []string{"regions", "at least one"}},
		{"bad region", `{"regions":["us-east-1","Mars"],"ssmPrefix":"/p"}`, []string{"regions[1]", `"Mars"`}},
		{"duplicate region", `{"regions":["us-east-1","us-east-1"],"ssmPrefix":"/p"}`, []string{"regions[1]", "twice"}},
		{"no prefix", `{"regions":["us-east-1"]}`, []string{"ssmPrefix", "required"}},
		{"bad prefix", `{"regions":["us-east-1"],"ssmPrefix":"/aws/x"}`, []string{"ssmPrefix", "reserved"}},
		{"bad account", `{"regions":["us-east-1"],"ssmPrefix":"/p","share":["12345"]}`, []string{"share[0]", "12 digits"}},
		{"trailing data", `{"regions":["us-east-1"],"ssmPrefix":"/p"} {}`, []string{"after the JSON object"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, SettingsFile)
			if err := os.WriteFile(path, []byte(c.content), 0o644); err != nil {
				t.Fatal(err)
			}
			s, err := LoadSettings(dir)
			if err == nil {
				t.Fatalf("LoadSettings accepted %s: %+v", c.content, s)
			}
			for _, w := range append([]string{path}, c.want...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
	// SaveSettings refuses what LoadSettings would, and writes nothing.
	dir := t.TempDir()
	err := SaveSettings(t.Context(), dir, Settings{Regions: []string{"us-east-1"}, SSMPrefix: "imgctl"})
	if err == nil || !strings.Contains(err.Error(), "ssmPrefix") {
		t.Fatalf("SaveSettings of a bad prefix: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, SettingsFile)); !os.IsNotExist(err) {
		t.Fatalf("a refused SaveSettings wrote the file: %v", err)
	}
}

// TestPublishDefaults: a publication with the settings' defaults reaches what promote checks;
// what the caller gave wins.
func TestPublishDefaults(t *testing.T) {
	s := Settings{Regions: []string{"us-east-1", "eu-west-1", "ap-south-1"}, SSMPrefix: "/imgctl/nodes", Share: []string{"123456789012"}}
	for _, c := range []struct {
		name    string
		in      ami.Options
		want    ami.Options
		changed bool
	}{
		{"empty flags take the settings", ami.Options{Region: "us-east-1"},
			ami.Options{Region: "us-east-1", CopyTo: []string{"eu-west-1", "ap-south-1"}, Share: []string{"123456789012"}, SSMPrefix: "/imgctl/nodes"}, true},
		{"flags win", ami.Options{Region: "eu-west-1", CopyTo: []string{"us-west-2"}, Share: []string{"210987654321"}, SSMPrefix: "/other"},
			ami.Options{Region: "eu-west-1", CopyTo: []string{"us-west-2"}, Share: []string{"210987654321"}, SSMPrefix: "/other"}, false},
		{"public needs no share list", ami.Options{Region: "ap-south-1", Public: true, SSMPrefix: "/p"},
			ami.Options{Region: "ap-south-1", Public: true, CopyTo: []string{"us-east-1", "eu-west-1"}, SSMPrefix: "/p"}, true},
	} {
		got := c.in
		if changed := s.PublishDefaults(&got); changed != c.changed || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %+v (changed %v), want %+v (changed %v)", c.name, got, changed, c.want, c.changed)
		}
	}
	if (Settings{Regions: []string{"us-east-1"}}).PublishDefaults(&ami.Options{Region: "us-east-1"}) {
		t.Error("settings naming only the upload region and no prefix changed the options")
	}
}
