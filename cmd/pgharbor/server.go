package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	_ "time/tzdata" // schedules name IANA zones; hosts and containers without a zone database still find them

	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/internal/server"
)

func newServerCmd(a *app) *cobra.Command {
	var listen string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run scheduled backups, verifies and expires of every configured cluster, with metrics and a status page",
		Long: `server runs until SIGTERM or SIGINT. For every cluster of the configuration (the
clusters: list, or the file itself as one cluster) it runs the jobs backup, verify and expire
on their cron schedules (schedules.backup, schedules.verify, schedules.expire), in this
process, through the same code as the commands of the same names. A job still running at its
next tick is not started again (logged, counted). After every successful scheduled backup,
expire runs when a retention section is configured.

One HTTP listener (server.listen, default 127.0.0.1:9187) serves /metrics (Prometheus),
/healthz, /readyz (every cluster's newest backup and WAL within readiness.max_backup_age and
readiness.max_wal_age), /api/v1/clusters (JSON: the facts info shows, per cluster, with the
jobs' last runs) and / (a status page).

SIGTERM/SIGINT: no new job starts; running jobs get server.shutdown_grace to finish, then are
cancelled as an interrupted command is (its lock released, a cancelled backup's objects
removed, or left incomplete for backup cleanup).
SIGHUP re-reads the configuration and replaces the clusters and schedules; a configuration
with an error is refused and the running one kept. See docs/server.md.`,
		Args:        cobra.NoArgs,
		Annotations: map[string]string{annotationAllClusters: "true"},
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runServer(cmd, listen)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "", "address of the HTTP listener (server.listen, default "+server.DefaultListen+")")
	return cmd
}

// serverCluster is one cluster as the server runs it: an app whose configuration is the
// cluster's, and the repository it keeps open to read the cluster's facts.
type serverCluster struct {
	name string
	app  *app

	mu   sync.Mutex
	repo *repo.Repo // opened on first use; dropped after a failure
}

// forCluster is a copy of the app that works on one cluster and logs its name; it prints
// nothing (the server's jobs report through the log, the metrics and the page).
func (a *app) forCluster(cc clusterConfig) *app {
	c := *a
	c.cfg = cc.Cfg
	c.clusterErr = nil
	c.logger = a.logger.With("cluster", cc.Name)
	c.stdout, c.stderr = io.Discard, io.Discard
	return &c
}

func (a *app) runServer(cmd *cobra.Command, listen string) error {
	ctx := cmd.Context()
	if cmd.Flags().Changed("listen") {
		a.cfg.Server.Listen = listen
	}
	sc := a.cfg.Server
	clusters, err := a.serverClusters(a.cfg)
	if err != nil {
		return err
	}
	s := server.New(server.Options{Listen: sc.Listen, Grace: sc.ShutdownGrace, Refresh: sc.RefreshInterval, Logger: a.logger})
	if err := s.Apply(clusters); err != nil {
		return err
	}
	var recv serverReceivers
	if err := recv.apply(ctx, a, a.cfg); err != nil {
		return err
	}
	defer recv.stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if cfg := a.reloadServer(cmd, s, listen); cfg != nil {
					if err := recv.apply(ctx, a, cfg); err != nil {
						a.logger.Error("WAL receivers not restarted after the reload", "err", err)
					}
				}
			}
		}
	}()
	return s.Run(ctx)
}

// reloadServer re-reads the configuration on SIGHUP and hands the clusters to the server; a
// configuration with an error changes nothing.
func (a *app) reloadServer(cmd *cobra.Command, s *server.Server, listen string) *Config {
	a.logger.Info("SIGHUP: reloading the configuration", "config", a.configPath)
	cfg, err := a.loadConfig(cmd)
	if err == nil {
		if cmd.Flags().Changed("listen") {
			cfg.Server.Listen = listen
		}
		if cfg.Server.Listen != a.cfg.Server.Listen {
			a.logger.Warn("server.listen changed: the listener moves only at a restart", "listening", a.cfg.Server.Listen, "configured", cfg.Server.Listen)
		}
		var clusters []server.Cluster
		if clusters, err = a.serverClusters(cfg); err == nil {
			err = s.Apply(clusters)
		}
	}
	if err != nil {
		a.logger.Error("reload refused: the running configuration stays", "error", err)
		return nil
	}
	a.logger.Info("configuration reloaded")
	return cfg
}

// serverClusters builds the server's clusters from a configuration, checking every schedule.
func (a *app) serverClusters(cfg *Config) ([]server.Cluster, error) {
	list, err := cfg.Clusters()
	if err != nil {
		return nil, err
	}
	var out []server.Cluster
	for _, cc := range list {
		if cc.Name == "" {
			return nil, fmt.Errorf("no cluster name: set repo.cluster (or list clusters with names, see docs/server.md)")
		}
		c := &serverCluster{name: cc.Name, app: a.forCluster(cc)}
		sch := cc.Cfg.Schedules
		spec := server.Cluster{
			Name:              cc.Name,
			Schedules:         map[server.JobKind]string{},
			Jobs:              map[server.JobKind]server.Job{server.JobBackup: c.backupJob, server.JobVerify: c.verifyJob, server.JobExpire: c.expireJob},
			ExpireAfterBackup: cc.Cfg.hasSection("retention"),
			CatchUpBackup:     sch.CatchUp == nil || *sch.CatchUp,
			MaxBackupAge:      cc.Cfg.Readiness.MaxBackupAge,
			MaxWALAge:         cc.Cfg.Readiness.MaxWALAge,
			Inspect:           c.inspect,
		}
		for kind, expr := range map[server.JobKind]string{server.JobBackup: sch.Backup, server.JobVerify: sch.Verify, server.JobExpire: sch.Expire} {
			if expr == "" {
				continue
			}
			if spec.Schedules[kind], err = scheduleSpec(cc, kind, expr); err != nil {
				return nil, err
			}
		}
		out = append(out, spec)
	}
	return out, nil
}

// backupJob takes a backup as `pgharbor backup` with the cluster's configuration does.
func (c *serverCluster) backupJob(ctx context.Context) (server.Result, error) {
	a := c.app
	req := a.backupRequestFromConfig()
	if t := a.cfg.Server.ArchiveTimeout; t > 0 {
		req.archiveTimeout = t
	}
	sum, err := a.runBackup(ctx, req)
	if err != nil {
		return server.Result{}, err
	}
	return server.Result{Detail: fmt.Sprintf("backup %s: %s in %d files, stored %s, WAL %s..%s timeline %d",
		sum.Label, humanBytes(sum.Size), sum.Files, humanBytes(sum.StoredSize), sum.StartLSN, sum.StopLSN, sum.Timeline)}, nil
}

// verifyJob verifies every backup as `pgharbor verify` does.
func (c *serverCluster) verifyJob(ctx context.Context) (server.Result, error) {
	res, err := c.app.runVerify(ctx, "", 4)
	if err != nil {
		return server.Result{}, err
	}
	var bytes int64
	for _, r := range res {
		bytes += r.Bytes
	}
	return server.Result{Detail: fmt.Sprintf("%d backups verified (%s), their WAL intact", len(res), humanBytes(bytes))}, nil
}

// expireJob expires what the cluster's retention policy lets go (server_expire.go).
func (c *serverCluster) expireJob(ctx context.Context) (server.Result, error) {
	n, err := runExpireJob(ctx, c)
	if err != nil {
		return server.Result{}, err
	}
	return server.Result{Detail: fmt.Sprintf("%d objects expired", n), ExpiredObjects: n}, nil
}

// inspect reads the facts `pgharbor info` shows. The repository stays open between readings:
// opening a passphrase cluster costs a key derivation.
func (c *serverCluster) inspect(ctx context.Context) (*server.Facts, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.repo == nil {
		a := c.app
		r, err := a.openRepo(ctx, false)
		if err != nil {
			return nil, err
		}
		c.repo = r
	}
	f, err := readInfo(ctx, c.repo)
	if err != nil {
		c.repo.Backend().Close()
		c.repo = nil
		return nil, err
	}
	return f, nil
}
