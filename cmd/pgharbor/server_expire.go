package main

import (
	"context"
	"time"

	"github.com/pgharbor/pgharbor/retention"
	"github.com/pgharbor/pgharbor/storage"
)

// serverTempAge is how long a temporary file or multipart upload has to be left alone before
// the server's expire job takes it for the leftover of a killed writer (`backup cleanup`'s
// --temp-age, at a day: the server runs unattended, and nothing is lost by waiting).
const serverTempAge = 24 * time.Hour

// runExpireJob runs one expire of the cluster with its retention policy, as `pgharbor expire`
// does, then removes what killed writers left a day or more ago, and returns how many
// repository objects expire deleted. The server's expire job (its schedule, and after every
// scheduled backup when a retention section is configured) calls only this function.
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
	if err == nil {
		// What killed writers left (a server killed mid-backup on S3, an archive_command
		// on a filesystem without unnamed files) is removed here too, as `backup cleanup`
		// would; a failure to is logged, and the expire it follows stands.
		if tr, terr := storage.RemoveTemp(ctx, r.Backend(), time.Now().Add(-serverTempAge)); terr != nil {
			a.logger.Warn("expire: temporary files of interrupted writes not removed", "err", terr)
		} else if tr.Count > 0 {
			a.logger.Info("expire: removed temporary files of interrupted writes", "files", tr.Count, "bytes", tr.Bytes)
		}
	}
	return expired, err
}
