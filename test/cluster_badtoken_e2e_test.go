//go:build cluster

package test

import (
	"context"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgctl/imgctl/layers/testenv"
)

// kubeadmLine is one step=kubeadm console line of a node's join: its status, phase, attempt and
// the wait before the next one.
var kubeadmLine = regexp.MustCompile(`step=kubeadm status=(progress|fail|ok) [^\n]*?(?:phase=(\S+) )?command="kubeadm join" (?:attempt|attempts)=(\d+)(?: retry-in=(\S+))?`)

// wrongSecret is the wrong bootstrap token's secret: one no console line holds by chance.
const wrongSecret = "wr0ngt0ken5ecret"

// TestClusterNodeWrongToken boots the example's master-1, then node-1 with a bootstrap token
// whose secret is wrong (the group's token ID, another secret: a typo in the secret file). The
// real kubeadm join fails in discovery; the node retries a bounded number of times, each failure
// one console line naming the phase, then kube-node-configuration fails once and stays failed:
// no crash loop, no Node object, no token on the console.
func TestClusterNodeWrongToken(t *testing.T) {
	testenv.Integration(t, "qemu guests: a node with a wrong bootstrap token")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	ex := readExampleCluster(t)
	id, _, ok := strings.Cut(ex.token, ".")
	if !ok {
		t.Fatalf("the example's bootstrap token %q has no ID", id)
	}
	wrong := id + "." + wrongSecret
	if wrong == ex.token {
		t.Fatal("the wrong token is the example's")
	}
	c := newCluster(ctx, t, insertAfter(t, "  - name: node-1", "    secret: {bootstrapToken: "+wrong+"}\n"))
	master := c.boot(ctx, "master-1")
	c.waitKubeadm(ctx, master)

	node := c.boot(ctx, "node-1")
	if err := node.vm.waitFor(ctx, "IMGCTL-TEST-CLUSTER"); err != nil {
		t.Fatalf("node-1: %v\nsteps:\n  %s", err, strings.Join(stepLines(node.vm.console.String()), "\n  "))
	}
	t.Logf("node-1: kube-node-configuration ended %v after its power-on: %s",
		time.Since(node.powerOn).Round(time.Second), clusterReport(cleanConsole(node.vm.console.String())))

	// No crash loop: nothing runs kubeadm again once the unit has failed.
	time.Sleep(90 * time.Second)
	log := cleanConsole(node.vm.console.String())
	lines := kubeadmLine.FindAllStringSubmatch(log, -1)
	t.Logf("node-1's kubeadm lines:\n  %s", strings.Join(func() []string {
		var l []string
		for _, m := range lines {
			l = append(l, m[0])
		}
		return l
	}(), "\n  "))
	if !strings.Contains(clusterReport(log), "configuration=failed") {
		t.Errorf("kube-node-configuration did not fail: %s", clusterReport(log))
	}
	if len(lines) < 2 {
		t.Fatalf("node-1: %d kubeadm lines, want retries then one failure", len(lines))
	}
	last := lines[len(lines)-1]
	attempts, _ := strconv.Atoi(last[3])
	if last[1] != "fail" || attempts != len(lines) {
		t.Errorf("the last kubeadm line is %q, want status=fail with attempts=%d (one line per attempt)", last[0], len(lines))
	}
	for i, m := range lines {
		if m[2] != "preflight" {
			t.Errorf("kubeadm line %d names phase %q, want preflight (discovery)", i+1, m[2])
		}
		if i < len(lines)-1 && (m[1] != "progress" || m[3] != strconv.Itoa(i+1) || m[4] == "") {
			t.Errorf("kubeadm line %d is %q, want status=progress attempt=%d with retry-in", i+1, m[0], i+1)
		}
	}
	if n := strings.Count(log, "IMGCTL-TEST-CLUSTER"); n != 1 {
		t.Errorf("kube-node-configuration ended %d times, want once", n)
	}
	if _, err := c.api.do(http.MethodGet, "/api/v1/nodes/node-1", nil, http.StatusNotFound, nil); err != nil {
		t.Errorf("node-1 registered with a wrong token: %v", err)
	}
	if strings.Contains(node.vm.console.String(), wrongSecret) {
		t.Errorf("the wrong token's secret reached node-1's console")
	}
	c.checkNoSecrets()
}
