package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/imgctl/imgctl/images/store"
)

func (a *app) storeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "store", Short: "Maintain the image store"}
	cmd.AddCommand(&cobra.Command{
		Use:   "verify",
		Short: "Re-hash every blob and check that every manifest's references exist",
		Args:  cobra.NoArgs,
		RunE: a.withStore(func(cmd *cobra.Command, _ []string, st *store.Store) error {
			problems, err := st.Verify(cmd.Context())
			if err != nil {
				return err
			}
			if a.json() {
				out := []string{}
				for _, p := range problems {
					out = append(out, p.String())
				}
				if err := a.printJSON(map[string]any{"store": st.Dir(), "problems": out}); err != nil {
					return err
				}
			} else {
				for _, p := range problems {
					fmt.Fprintln(a.out, p.String())
				}
			}
			if len(problems) > 0 {
				return fmt.Errorf("store %s: %d problem(s)", st.Dir(), len(problems))
			}
			if !a.json() {
				fmt.Fprintf(a.out, "store %s: ok\n", st.Dir())
			}
			return nil
		}),
	})
	cmd.AddCommand(a.storeAWSCmd())
	return cmd
}
