package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/failover"
	"github.com/pgharbor/pgharbor/pool"
)

// newPoolCmd is `pgharbor pool`: the connection pooler in front of the cluster.
func newPoolCmd(a *app) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "Run the PostgreSQL connection pooler (session/transaction pooling, read/write routing, admin console)",
		Long: `Run the connection pooler configured by the pool: section of the config file.

Clients connect to the listen address as to PostgreSQL. The admin console is the database
"pgharbor" (SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS, SHOW CONFIG, SHOW POOL_NODES,
PAUSE, RESUME, RELOAD, and the node commands SWITCHOVER, ATTACH/DETACH/RECOVER NODE that
pgharbor switchover and pgharbor node send); SIGHUP reloads the configuration file as RELOAD
does. See docs/pool.md and docs/ha.md.

With failover.enabled the failover monitor runs inside the pool (see docs/ha.md); run it in
one pool instance only, or set failover.etcd so that an etcd leader election picks the one
that acts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadPoolConfig(a, listen)
			if err != nil {
				return err
			}
			srv, err := pool.New(cfg, a.logger)
			if err != nil {
				return err
			}
			srv.SetReloader(func() (pool.Config, error) { return loadPoolConfig(a, listen) })
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			fcfg, err := loadFailoverConfig(a)
			if err != nil {
				return err
			}
			// The monitor tells the pool's own view of the cluster, so a failover reroutes
			// writes at once instead of at the pool's next health check. Without
			// failover.enabled it does not watch, but still serves the admin console's
			// node commands (SWITCHOVER, ATTACH/DETACH/RECOVER NODE).
			if fcfg.RestoreCommand == "" && a.cfg != nil && a.cfg.Repo.URL != "" {
				// A rejoined standby can fetch archived WAL from the same repository.
				if rc, err := a.restoreCommand(); err == nil {
					fcfg.RestoreCommand = rc
				}
			}
			mon, err := failover.New(fcfg, cfg.Cluster.Nodes, srv.Cluster(), a.logger)
			switch {
			case err != nil && fcfg.Enabled:
				return err
			case err != nil:
				a.logger.Info("node commands of the admin console are off", "reason", err)
			default:
				mon.SetPauser(srv)
				mon.SetRebuilder(a.failoverRebuilder())
				if fcfg.Enabled && fcfg.Etcd != nil {
					// Several pools may run the monitor: the etcd leader acts, and node
					// commands run only there.
					el, err := failover.NewElector(*fcfg.Etcd, a.logger)
					if err != nil {
						return err
					}
					mon.SetElector(el)
					srv.AddCollector(el.Collector())
				}
				srv.SetNodeControl(failover.Console{M: mon})
				if fcfg.Enabled {
					// New transactions wait for the new primary instead of failing while
					// the primary is down, and a refused login asks the monitor to check
					// at once.
					srv.SetFailover(&pool.FailoverOptions{ClientWait: mon.Config().ClientWait, CheckPrimary: mon.CheckSoon})
					go mon.RunElected(ctx)
				}
			}
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						cfg, err := loadPoolConfig(a, listen)
						if err == nil {
							err = srv.Reload(cfg)
						}
						if err != nil {
							a.logger.Error("reload on SIGHUP failed; keeping the running configuration", "err", err)
						}
					}
				}
			}()
			return srv.Serve(ctx)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "listen address host:port (overrides pool.listen)")
	return cmd
}

// loadPoolConfig re-reads the config file (for reloads) and decodes its pool: section.
func loadPoolConfig(a *app, listen string) (pool.Config, error) {
	var cfg pool.Config
	c := a.cfg
	if a.configPath != "" {
		fresh, err := LoadConfig(a.configPath)
		if err != nil {
			return cfg, err
		}
		c = fresh
	}
	if c == nil {
		return cfg, fmt.Errorf("no configuration loaded")
	}
	if err := c.Section("pool", &cfg); err != nil {
		return cfg, err
	}
	if listen != "" {
		cfg.Listen = listen
	}
	return cfg, nil
}
