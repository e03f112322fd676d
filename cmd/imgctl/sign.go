package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/images/channel"
	"github.com/imgctl/imgctl/images/sign"
	"github.com/imgctl/imgctl/images/store"
)

// trustPolicy makes promotions and rollbacks refuse unsigned or badly signed images when the
// store has a trust policy (STORE/trust.json).
func (a *app) trustPolicy(st *store.Store, l *channel.Log) error {
	p, err := sign.PolicyForStore(st.Dir())
	if err != nil {
		return err
	}
	l.Verify = p.Hook(st)
	return nil
}

func (a *app) signImage(cmd *cobra.Command, st *store.Store, img store.Image, keyPath string) error {
	key, err := sign.LoadPrivateKey(keyPath)
	if err != nil {
		return err
	}
	desc, err := sign.Sign(cmd.Context(), st, img, key, sign.SignOptions{Creator: "imgctl " + version})
	if err != nil {
		return err
	}
	a.logger().Info("signed image", "image", img.Digest(), "signature", desc.Digest)
	return nil
}

func (a *app) keyCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Manage signing keys"}
	var dir string
	gen := &cobra.Command{
		Use:   "generate",
		Short: "Write a new ed25519 key pair: imgctl.key (private, 0600) and imgctl.pub",
		Long: `Writes DIR/imgctl.key (PKCS#8 PEM, mode 0600; never overwritten) and DIR/imgctl.pub (PKIX PEM).
Sign with "imgctl build --sign-key", "imgctl promote --sign-key" or "imgctl sign"; trust the public
key with "imgctl trust add DIR/imgctl.pub" (the store's trust.json; --registry REPO for a
registry's channels) — then promote and rollback refuse images without a valid signature by a
trusted key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.checkFormat(); err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			priv, pub, err := sign.GenerateKey(dir)
			if err != nil {
				return err
			}
			if a.json() {
				return a.printJSON(map[string]string{"privateKey": priv, "publicKey": pub})
			}
			fmt.Fprintf(a.out, "%s\n%s\n", priv, pub)
			return nil
		},
	}
	gen.Flags().StringVar(&dir, "dir", ".", "directory for imgctl.key and imgctl.pub")
	cmd.AddCommand(gen)
	return cmd
}

func (a *app) signCmd() *cobra.Command {
	var keyPath string
	cmd := &cobra.Command{
		Use:   "sign IMAGE --key imgctl.key",
		Short: "Sign an image in the store (a cosign-style signature stored as an OCI referrer)",
		Args:  cobra.ExactArgs(1),
		RunE: a.withChannels(func(cmd *cobra.Command, args []string, st *store.Store, l *channel.Log) error {
			if keyPath == "" {
				return fmt.Errorf("--key is required (imgctl key generate writes one)")
			}
			img, err := l.Mover(st).Resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if err := a.signImage(cmd, st, img, keyPath); err != nil {
				return err
			}
			fmt.Fprintln(a.out, img.Digest())
			return nil
		}),
	}
	cmd.Flags().StringVar(&keyPath, "key", "", "private key (imgctl key generate)")
	return cmd
}

func (a *app) verifyCmd() *cobra.Command {
	var pubs []string
	cmd := &cobra.Command{
		Use:   "verify IMAGE [--key imgctl.pub]",
		Short: "Check an image's signatures against the store's trust policy or the given public keys",
		Args:  cobra.ExactArgs(1),
		RunE: a.withChannels(func(cmd *cobra.Command, args []string, st *store.Store, l *channel.Log) error {
			img, err := l.Mover(st).Resolve(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var p *sign.Policy
			if len(pubs) > 0 {
				p = &sign.Policy{KeyFiles: pubs}
				for _, f := range pubs {
					k, err := sign.LoadPublicKey(f)
					if err != nil {
						return err
					}
					p.Keys = append(p.Keys, k)
				}
			} else if p, err = sign.PolicyForStore(st.Dir()); err != nil {
				return err
			} else if p == nil {
				return fmt.Errorf("no trust policy (%s/%s) and no --key: nothing to verify against (add a key to the policy with imgctl trust add KEY)", st.Dir(), sign.PolicyFile)
			}
			if err := p.Verify(cmd.Context(), st, img); err != nil {
				return err
			}
			fmt.Fprintf(a.out, "%s: signature ok\n", img.Digest())
			return nil
		}),
	}
	cmd.Flags().StringArrayVar(&pubs, "key", nil, "trusted public key (repeatable; default: the store's trust.json)")
	return cmd
}
