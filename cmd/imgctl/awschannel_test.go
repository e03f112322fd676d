package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgctl/imgctl/images/awschannel"
)

func TestStoreAWS(t *testing.T) {
	dir := t.TempDir()
	out, _, err := run(t, dir, "store", "aws")
	if err != nil || !strings.Contains(out, "no AWS settings") {
		t.Fatalf("store aws without settings: %v\n%s", err, out)
	}
	if _, _, err := run(t, dir, "store", "aws", "--share", "123456789012"); err == nil || !strings.Contains(err.Error(), "regions") {
		t.Fatalf("settings without regions: %v", err)
	}
	if _, _, err := run(t, dir, "store", "aws", "--regions", "us-east-1,eu-west-1", "--ssm-prefix", "/imgctl/nodes"); err != nil {
		t.Fatal(err)
	}
	// Flags not given keep their value.
	out, _, err = run(t, dir, "store", "aws", "--share", "123456789012,210987654321")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"us-east-1, eu-west-1", "/imgctl/nodes", "123456789012, 210987654321"} {
		if !strings.Contains(out, w) {
			t.Errorf("store aws output lacks %q:\n%s", w, out)
		}
	}
	out, _, err = run(t, dir, "-o", "json", "store", "aws")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Store string               `json:"store"`
		AWS   *awschannel.Settings `json:"aws"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.AWS == nil || got.AWS.SSMPrefix != "/imgctl/nodes" || len(got.AWS.Regions) != 2 || len(got.AWS.Share) != 2 {
		t.Fatalf("store aws -o json: %v\n%s", err, out)
	}
	// A bad value is refused, naming the flag's field and the value; nothing changes.
	_, _, err = run(t, dir, "store", "aws", "--regions", "us-east-1,EU")
	if err == nil || !strings.Contains(err.Error(), "regions[1]") || !strings.Contains(err.Error(), `"EU"`) {
		t.Fatalf("bad region: %v", err)
	}
	if s, err := awschannel.LoadSettings(filepath.Join(dir, "store")); err != nil || len(s.Regions) != 2 {
		t.Fatalf("after a refused change: %+v, %v", s, err)
	}
	if _, _, err := run(t, dir, "store", "aws", "--clear", "--share", "123456789012"); err == nil {
		t.Fatal("--clear with other flags accepted")
	}
	if _, _, err := run(t, dir, "store", "aws", "--clear"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "store", awschannel.SettingsFile)); !os.IsNotExist(err) {
		t.Fatalf("--clear left the settings: %v", err)
	}
}
