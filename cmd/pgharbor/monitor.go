package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/failover"
)

// newMonitorCmd is `pgharbor monitor`: the failover monitor without a pool.
func newMonitorCmd(a *app) *cobra.Command {
	var metricsListen string
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Run the failover monitor on its own (promote a standby when the primary fails)",
		Long: `Run the failover monitor configured by the failover: section, on the nodes listed under
pool.cluster.nodes, without a pool in this process.

It checks the primary, and when it has failed promotes the best standby, re-points the
other standbys and runs failover_command, follow_primary_command and on_role_change.
Pools elsewhere learn the new roles through their own health checks. Only one monitor may
act on a cluster: without failover.etcd do not run this next to a pool with
failover.enabled or another monitor. With failover.etcd several may run; the etcd leader
acts and the others wait to take over. See docs/ha.md.`,
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
			ctx := cmd.Context()
			reg := prometheus.NewRegistry()
			if fcfg.Etcd != nil {
				el, err := failover.NewElector(*fcfg.Etcd, a.logger)
				if err != nil {
					return err
				}
				mon.SetElector(el)
				_ = reg.Register(el.Collector())
			}
			if metricsListen != "" {
				stop, err := serveMetrics(ctx, metricsListen, reg)
				if err != nil {
					return err
				}
				defer stop()
			}
			return mon.RunElected(ctx)
		},
	}
	cmd.Flags().StringVar(&metricsListen, "metrics-listen", "", "host:port serving Prometheus /metrics (pgharbor_failover_leader with failover.etcd); off when empty")
	return cmd
}

// serveMetrics serves reg on addr's /metrics until stop is called.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }() // ends with Shutdown
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
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
