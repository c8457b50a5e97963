package main

import (
	"context"

	"github.com/pgharbor/pgharbor/failover"
	"github.com/pgharbor/pgharbor/pool"
	"github.com/pgharbor/pgharbor/replica"
	"github.com/pgharbor/pgharbor/wal"
)

var _ pool.NodeControl = failover.Console{}

// failoverRebuilder is how the pool's monitor rebuilds a node (RECOVER NODE, auto_rejoin):
// replica.Rebuild from the configured repository, as `pgharbor replica rebuild --start`
// does. Without a repository it returns nil: only nodes that did not diverge can rejoin.
func (a *app) failoverRebuilder() failover.Rebuilder {
	if a.cfg == nil || a.cfg.Repo.URL == "" {
		return nil
	}
	return func(ctx context.Context, req failover.RebuildRequest) (string, error) {
		r, cat, err := a.openCatalog(ctx, true)
		if err != nil {
			return "", err
		}
		defer r.Backend().Close()
		arch, err := wal.ListArchive(ctx, r)
		if err != nil {
			return "", err
		}
		restoreCmd, err := a.restoreCommand()
		if err != nil {
			return "", err
		}
		id, err := r.ReadIdentity(ctx)
		if err != nil {
			return "", err
		}
		o := replica.Options{
			PGData: req.DataDir, BinDir: a.pgBinDir(id.PGVersion), Primary: req.PrimaryConnInfo, AppName: req.AppName,
			RestoreCommand: restoreCmd, Workers: 4, Start: true, Wait: req.Wait, Method: replica.MethodAuto,
			Logger: a.logger.With("node", req.Node),
		}
		rep, err := replica.Rebuild(ctx, replica.Source{Repo: r, Backups: cat.Backups, Archive: arch}, o)
		if err != nil {
			return "", err
		}
		return rep.Method, nil
	}
}
