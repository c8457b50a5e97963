package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// newSwitchoverCmd is `pgharbor switchover --to NODE`: a planned change of primary through
// the running pool's admin console.
func newSwitchoverCmd(a *app) *cobra.Command {
	var (
		f        consoleFlags
		to       string
		noRejoin bool
	)
	cmd := &cobra.Command{
		Use:   "switchover --to NODE",
		Short: "Move the primary to a standby without losing a transaction (through the pool)",
		Long: `switchover asks the running pool (its admin console: SWITCHOVER node) to move the primary
to NODE (id or name, as in SHOW POOL_NODES). The pool holds new transactions and waits for
running ones (failover.drain_timeout; past it nothing changes), stops the primary
(failover.stop_command, or pg_ctl stop -m fast when its data_dir is on the pool's host),
waits until NODE replayed the old primary's shutdown checkpoint (failover.replay_timeout),
promotes NODE, routes writes to it and lets the held transactions run, re-points the other
standbys, and starts the old primary as a standby of NODE (unless --no-rejoin). Clients
between transactions see no error, only a short wait. See docs/ha.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return fmt.Errorf("--to NODE is required (a node id or name from SHOW POOL_NODES)")
			}
			q := "SWITCHOVER TO " + to
			if noRejoin {
				q += " NOREJOIN"
			}
			return a.runNodeCommand(cmd.Context(), f, q)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the standby to promote (node id or name)")
	cmd.Flags().BoolVar(&noRejoin, "no-rejoin", false, "leave the old primary stopped instead of starting it as a standby")
	addConsoleFlags(cmd.Flags(), &f)
	return cmd
}
