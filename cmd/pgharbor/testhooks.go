//go:build pgharbor_testhooks

package main

import (
	"os"
	"strconv"
	"time"
)

// expireTestDelay lets the end-to-end tests pause expire before each delete request
// (PGHARBOR_TEST_EXPIRE_DELAY, a Go duration), so that a SIGKILL lands part-way through.
// Only binaries built with -tags pgharbor_testhooks read it.
func expireTestDelay() time.Duration {
	d, _ := time.ParseDuration(os.Getenv("PGHARBOR_TEST_EXPIRE_DELAY"))
	return d
}

// backupTestSpill lets the end-to-end tests make a backup move its manifest entries and its
// parent's extents to temporary files at a few bytes (PGHARBOR_TEST_SPILL_BYTES), as a
// multi-terabyte cluster's do. Only binaries built with -tags pgharbor_testhooks read it.
func backupTestSpill() int {
	n, _ := strconv.Atoi(os.Getenv("PGHARBOR_TEST_SPILL_BYTES"))
	return n
}
