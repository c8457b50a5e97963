package main

import (
	"context"

	"github.com/pgharbor/pgharbor/retention"
)

// runExpireJob runs one expire of the cluster with its retention policy, as `pgharbor expire`
// does, and returns how many repository objects it deleted. The server's expire job (its
// schedule, and after every scheduled backup when a retention section is configured) calls
// only this function.
func runExpireJob(ctx context.Context, c *serverCluster) (expired int64, err error) {
	a := c.app
	policy, err := a.cfg.Retention.Policy()
	if err != nil {
		return 0, err
	}
	r, err := a.openRepo(ctx, true)
	if err != nil {
		return 0, err
	}
	defer r.Backend().Close()
	rep, err := retention.Expire(ctx, r, policy, retention.ExpireOptions{Logger: a.logger, LockStale: a.cfg.Backup.LockTimeout})
	if rep != nil {
		expired = int64(rep.DeletedObjects)
	}
	if err == nil && rep != nil {
		a.logger.Info("expire done", "backups_deleted", rep.DeletedBackups, "objects_deleted", rep.DeletedObjects, "freed_bytes", rep.FreedBytes)
	}
	return expired, err
}
