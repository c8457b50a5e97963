package main

import (
	"context"
	"errors"
)

// errExpireNotBuilt is what the server's expire job reports until the retention package is
// wired in here.
var errExpireNotBuilt = errors.New("expire is not built into this binary (the retention package is not part of this build); backups are not expired")

// runExpireJob runs one expire of the cluster with its retention policy, as `pgharbor expire`
// does, and returns how many repository objects it deleted. The server's expire job (its
// schedule, and after every scheduled backup when a retention section is configured) calls
// only this function.
func runExpireJob(ctx context.Context, c *serverCluster) (expired int64, err error) {
	return 0, errExpireNotBuilt
}
