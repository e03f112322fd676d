package inventory

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestHostileInput: an inventory that is too big, expands too far or nests too deep is refused
// quickly, with a located error.
func TestHostileInput(t *testing.T) {
	var bomb strings.Builder
	bomb.WriteString("apiVersion: imgctl/v1alpha1\nkind: Inventory\nx0: &a0 [q, q, q, q, q, q, q, q, q, q]\n")
	for i := 1; i <= 9; i++ {
		fmt.Fprintf(&bomb, "x%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i, i, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1, i-1)
	}
	var many strings.Builder
	many.WriteString("apiVersion: imgctl/v1alpha1\nkind: Inventory\nmachines:\n")
	for i := 0; i <= MaxMachines; i++ {
		fmt.Fprintf(&many, "- {name: n%d}\n", i)
	}
	deep := "apiVersion: imgctl/v1alpha1\nkind: Inventory\nmachines: " + strings.Repeat("[", 40) + strings.Repeat("]", 40) + "\n"
	cases := []struct {
		name string
		src  string
		want string
	}{
		{"alias bomb", bomb.String(), fmt.Sprintf("inv.yaml:3: (document): document too large (more than %d values after expanding aliases)", maxValues)},
		{"too many machines", many.String(), fmt.Sprintf("inv.yaml:4: machines: %d machines (expected at most %d)", MaxMachines+1, MaxMachines)},
		{"too deep", deep, fmt.Sprintf("inv.yaml:3: (document): nested more than %d levels deep", maxDepth)},
		{"too big", "apiVersion: imgctl/v1alpha1\n#" + strings.Repeat("x", MaxFileSize), fmt.Sprintf("inv.yaml: inventory is %d bytes (expected at most %d)", MaxFileSize+29, MaxFileSize)},
		{"dangling alias", "apiVersion: imgctl/v1alpha1\nkind: *nope\n", "inv.yaml:2: malformed YAML: unknown anchor 'nope' referenced"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			_, err := parseString(t, c.src)
			if err == nil || !strings.HasPrefix(err.Error(), c.want) {
				t.Errorf("Parse = %v, want an error starting %q", err, c.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Parse took %v", d)
			}
		})
	}
}

func TestCheckChannels(t *testing.T) {
	inv, err := parseString(t, head+okMachine+"- name: node-2\n  group: workers\n  macs: [\"52:54:00:00:00:02\"]\n"+
		"- name: node-3\n  group: workers\n  macs: [\"52:54:00:00:00:03\"]\n  channel: canary\n"+
		"- name: node-4\n  group: workers\n  macs: [\"52:54:00:00:00:04\"]\n  image: v1\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.CheckChannels([]string{"nightly", "staging", "prod", "canary"}); err != nil {
		t.Errorf("CheckChannels(all known) = %v", err)
	}
	// The group's channel is reported once, where it is set, with the machine's own.
	want := "inv.yaml:6: groups[0].channel: unknown channel \"prod\" (expected one of nightly, staging)\n" +
		"inv.yaml:23: machines[2].channel: unknown channel \"canary\" (expected one of nightly, staging)"
	if err := inv.CheckChannels([]string{"nightly", "staging"}); err == nil || err.Error() != want {
		t.Errorf("CheckChannels = %v, want\n%s", err, want)
	}
	if err := inv.CheckChannels(nil); err == nil || !strings.Contains(err.Error(), `unknown channel "prod" (the store has no channels)`) {
		t.Errorf("CheckChannels(nil) = %v", err)
	}
}
