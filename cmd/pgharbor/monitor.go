package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/failover"
)

// newMonitorCmd is `pgharbor monitor`: the failover monitor without a pool.
func newMonitorCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "monitor",
		Short: "Run the failover monitor on its own (promote a standby when the primary fails)",
		Long: `Run the failover monitor configured by the failover: section, on the nodes listed under
pool.cluster.nodes, without a pool in this process.

It checks the primary, and when it has failed promotes the best standby, re-points the
other standbys and runs failover_command, follow_primary_command and on_role_change.
Pools elsewhere learn the new roles through their own health checks. Only one monitor may
act on a cluster: do not run this next to a pool with failover.enabled. See docs/ha.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			pcfg, err := loadPoolConfig(a, "")
			if err != nil {
				return err
			}
			fcfg, err := loadFailoverConfig(a)
			if err != nil {
				return err
			}
			mon, err := failover.New(fcfg, pcfg.Cluster.Nodes, nil, a.logger)
			if err != nil {
				return err
			}
			return mon.Run(cmd.Context())
		},
	}
}

// loadFailoverConfig decodes the failover: section of the loaded configuration.
func loadFailoverConfig(a *app) (failover.Config, error) {
	var cfg failover.Config
	if a.cfg == nil {
		return cfg, fmt.Errorf("no configuration loaded")
	}
	if err := a.cfg.Section("failover", &cfg); err != nil {
		return cfg, err
	}
	if cfg.BinDir == "" {
		cfg.BinDir = a.cfg.Postgres.BinDir
	}
	return cfg, nil
}
