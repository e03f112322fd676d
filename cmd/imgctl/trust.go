package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/registry"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
)

func (a *app) trustCmd() *cobra.Command {
	var reg registryFlags
	cmd := &cobra.Command{
		Use:   "trust",
		Short: "Manage the trust policy: the keys whose signature promote and rollback require",
		Long: `Without a trust policy, promote and rollback accept unsigned images (and warn on every
move). The policy of the local store is STORE/trust.json ({"publicKeys": [...]}, keys copied to
STORE/trusted-keys/); the policy of a registry repository's channels lives in that repository
(the artifact REPO:_trust, one PEM blob per key) and is the only one promote --registry and
rollback --registry apply.`,
	}
	reg.add(cmd.PersistentFlags())
	cmd.AddCommand(&cobra.Command{
		Use:   "add KEY.pub",
		Short: "Trust a public key (imgctl key generate), creating the policy if there is none",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.checkFormat(); err != nil {
				return err
			}
			pub, err := sign.LoadPublicKey(args[0])
			if err != nil {
				return err
			}
			id := sign.KeyID(pub)
			var where string
			var added bool
			if reg.repo != "" {
				ok, d, err := registry.AddTrustKey(cmd.Context(), reg.repo, pub, registry.Options{Insecure: reg.insecure, Logger: a.logger()})
				if err != nil {
					return err
				}
				added, where = ok, reg.repo+":"+registry.TrustTag+"@"+d.String()
			} else {
				st, err := a.openStore(cmd.Context())
				if err != nil {
					return err
				}
				if where, added, err = sign.AddStoreKey(cmd.Context(), st.Dir(), pub); err != nil {
					return err
				}
			}
			if a.json() {
				return a.printJSON(map[string]any{"keyID": id, "added": added, "policy": where})
			}
			if added {
				fmt.Fprintf(a.out, "trusted key %s (%s)\n", id, where)
			} else {
				fmt.Fprintf(a.out, "key %s is already trusted (%s)\n", id, where)
			}
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "Print the key IDs (SHA-256 of the DER public key) of the trusted keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.checkFormat(); err != nil {
				return err
			}
			var (
				p     *sign.Policy
				where string
			)
			if reg.repo != "" {
				pol, d, err := registry.TrustPolicy(cmd.Context(), reg.repo, registry.Options{Insecure: reg.insecure, Logger: a.logger()})
				if err != nil {
					return err
				}
				p, where = pol, reg.repo+":"+registry.TrustTag
				if pol != nil {
					where += "@" + d.String()
				}
			} else {
				st, err := a.openStore(cmd.Context())
				if err != nil {
					return err
				}
				if p, err = sign.PolicyForStore(st.Dir()); err != nil {
					return err
				}
				where = filepath.Join(st.Dir(), sign.PolicyFile)
			}
			type key struct {
				KeyID string `json:"keyID"`
				File  string `json:"file"`
			}
			keys := []key{}
			if p != nil {
				for i, k := range p.Keys {
					keys = append(keys, key{sign.KeyID(k), p.KeyFiles[i]})
				}
			}
			if a.json() {
				return a.printJSON(map[string]any{"policy": where, "present": p != nil, "keys": keys})
			}
			if p == nil {
				fmt.Fprintf(a.out, "no trust policy (%s): unsigned images can be promoted\n", where)
				return nil
			}
			fmt.Fprintf(a.out, "policy %s\n", where)
			for _, k := range keys {
				fmt.Fprintf(a.out, "%s  %s\n", k.KeyID, k.File)
			}
			return nil
		},
	})
	return cmd
}

// applyTrust sets m.Verify to the trust policy of the channels m moves (see trustHook).
func (a *app) applyTrust(ctx context.Context, m *channel.Mover, st *store.Store, l *channel.Log, r registryFlags, verb string) error {
	hook, err := a.trustHook(ctx, st, l, r, verb)
	m.Verify = hook
	return err
}

// trustHook returns the check the trust policy of some channels makes before one moves to an
// image: the local store's policy, or with r.repo the repository's (never the local store's).
// With no policy it returns nil and prints one warning line to stderr, for every move (verb
// says what is allowed: "promoting", "rolling back to").
func (a *app) trustHook(ctx context.Context, st *store.Store, l *channel.Log, r registryFlags, verb string) (func(context.Context, store.Image) error, error) {
	if r.repo == "" {
		if l.Verify == nil {
			fmt.Fprintf(a.err, "warning: no trust policy (%s): %s unsigned images is allowed; add one with imgctl trust add KEY\n",
				filepath.Join(st.Dir(), sign.PolicyFile), verb)
		}
		return l.Verify, nil
	}
	p, d, err := registry.TrustPolicy(ctx, r.repo, registry.Options{Insecure: r.insecure, Logger: a.logger()})
	if err != nil {
		return nil, err
	}
	if p == nil {
		fmt.Fprintf(a.err, "warning: no trust policy (%s:%s): %s unsigned images is allowed; add one with imgctl trust add KEY --registry %s\n",
			r.repo, registry.TrustTag, verb, r.repo)
		return nil, nil
	}
	a.logger().Info("applying the registry's trust policy", "repo", r.repo, "policy", d, "keys", len(p.Keys))
	images := &registry.Images{Repo: r.repo, Options: registry.Options{Insecure: r.insecure, Logger: a.logger()}}
	return func(ctx context.Context, img store.Image) error {
		// The signatures in the registry (push uploads them), and those in the local store if
		// it holds the image (signed here, not pushed yet). The image's manifest digest was
		// checked when it was resolved (in the registry, or in the store).
		sigs, err := images.Signatures(ctx, img)
		if err != nil {
			return err
		}
		switch local, err := st.Resolve(ctx, img.Digest().String()); {
		case err == nil:
			ls, err := sign.Signatures(ctx, st, local)
			if err != nil {
				return err
			}
			sigs = append(sigs, ls...)
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		if err := p.VerifySignatures(img.Digest(), sigs); err != nil {
			return fmt.Errorf("trust policy of %s (%s:%s@%s): %w", r.repo, r.repo, registry.TrustTag, d, err)
		}
		return nil
	}, nil
}
