package registry

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/store/storetest"
)

// dockerConfig points the default keychain at a fresh docker config directory (HOME too, so
// that the developer's own ~/.docker/config.json is not read) and returns the directory. With
// auths, it writes config.json with those "user:password" entries per registry host.
func dockerConfig(t *testing.T, auths map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("HOME", t.TempDir())
	t.Setenv("DOCKER_CONFIG", dir)
	t.Setenv("REGISTRY_AUTH_FILE", "")
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	if auths != nil {
		cfg := map[string]map[string]map[string]string{"auths": {}}
		for host, up := range auths {
			cfg["auths"][host] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(up))}
		}
		data, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// basicAuth makes the registry answer 401 with a Basic challenge (as distribution's htpasswd
// auth does) unless a request carries user:password.
func basicAuth(reg *testRegistry, user, password string) {
	reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if u, p, ok := r.BasicAuth(); ok && u == user && p == password {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="imgctl-test"`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		if r.Method != http.MethodHead {
			_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}`))
		}
		return true
	})
}

// TestUnauthorizedSaysWhichRegistryAndHow: a 401 names the registry, says whether credentials
// were found for it, and how to provide them, for every operation that talks to a registry.
func TestUnauthorizedSaysWhichRegistryAndHow(t *testing.T) {
	reg := newRegistry(t)
	st := storetest.Open(t)
	img := storetest.PutVersion(t, st, testVersion, 1795651200)
	repo := reg.host + "/imgctl/node"
	basicAuth(reg, "alice", "secret")
	h := move(channel.History{SchemaVersion: 1, Channel: "nightly"}, channel.ActionPromote, img, "ci@host")

	ops := map[string]func() error{
		"push": func() error { _, err := Push(t.Context(), st, img, repo, testOptions(t)); return err },
		"pull": func() error {
			_, err := Pull(t.Context(), storetest.Open(t), repo+":"+Tag(testVersion), testOptions(t))
			return err
		},
		"push channel": func() error { return PushChannel(t.Context(), repo, h, testOptions(t)) },
		"pull channel": func() error { _, err := PullChannel(t.Context(), repo, "nightly", testOptions(t)); return err },
		"resolve": func() error {
			_, err := (&Images{Repo: repo, Options: testOptions(t)}).Resolve(t.Context(), testVersion)
			return err
		},
		"check": func() error { return (&Images{Repo: repo, Options: testOptions(t)}).Check(t.Context(), img) },
		"channel history": func() error {
			_, err := (&Channels{Repo: repo, Options: testOptions(t)}).History(t.Context(), "nightly")
			return err
		},
	}
	for _, tc := range []struct {
		name  string
		auths map[string]string
		want  []string
	}{
		{"none", nil, []string{"registry " + reg.host, "no credentials for " + reg.host + " were found", "docker login " + reg.host, "config.json"}},
		{"other registry only", map[string]string{"other.example:5000": "alice:secret"}, []string{"no credentials for " + reg.host + " were found"}},
		{"wrong", map[string]string{reg.host: "alice:wrong"}, []string{"registry " + reg.host, "rejected the credentials found for it", "docker login " + reg.host, "config.json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfgDir := dockerConfig(t, tc.auths)
			for op, fn := range ops {
				err := fn()
				if err == nil {
					t.Fatalf("%s: succeeded without valid credentials", op)
				}
				msg := err.Error()
				t.Logf("%s: %s", op, msg)
				for _, w := range tc.want {
					if !strings.Contains(msg, w) {
						t.Errorf("%s: error lacks %q:\n%s", op, w, msg)
					}
				}
				if !strings.Contains(msg, filepath.Join(cfgDir, "config.json")) {
					t.Errorf("%s: error does not name the docker config file %s:\n%s", op, filepath.Join(cfgDir, "config.json"), msg)
				}
				if strings.Contains(msg, "HEAD responses have no body") {
					t.Errorf("%s: error still has go-containerregistry's HEAD note:\n%s", op, msg)
				}
				var terr *transport.Error
				if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
					t.Errorf("%s: error does not wrap the registry's 401: %v", op, err)
				}
				if !errors.Is(err, ErrUnauthorized) {
					t.Errorf("%s: error does not wrap ErrUnauthorized", op)
				}
			}
		})
	}

	// 403 with credentials: they were accepted, but the account may not do this.
	dockerConfig(t, map[string]string{reg.host: "alice:secret"})
	reg.setHook(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		w.WriteHeader(http.StatusForbidden)
		return true
	})
	_, err := Push(t.Context(), st, img, repo, testOptions(t))
	if err == nil || !strings.Contains(err.Error(), "registry "+reg.host+" denied access with the credentials found for it") ||
		!strings.Contains(err.Error(), "403 Forbidden") || !errors.Is(err, ErrUnauthorized) {
		t.Errorf("push refused with 403: %v", err)
	}
	basicAuth(reg, "alice", "secret")

	// With the right credentials, everything works.
	if _, err := Push(t.Context(), st, img, repo, testOptions(t)); err != nil {
		t.Fatalf("push with credentials: %v", err)
	}
	if err := PushChannel(t.Context(), repo, h, testOptions(t)); err != nil {
		t.Fatalf("push channel with credentials: %v", err)
	}
	if _, err := PullChannel(t.Context(), repo, "nightly", testOptions(t)); err != nil {
		t.Fatalf("pull channel with credentials: %v", err)
	}
	if _, err := Pull(t.Context(), storetest.Open(t), repo+":"+Tag(testVersion), testOptions(t)); err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
}
