//go:build pgharbor_testhooks

package main

import (
	"os"
	"time"
)

// expireTestDelay lets the end-to-end tests pause expire before each delete request
// (PGHARBOR_TEST_EXPIRE_DELAY, a Go duration), so that a SIGKILL lands part-way through.
// Only binaries built with -tags pgharbor_testhooks read it.
func expireTestDelay() time.Duration {
	d, _ := time.ParseDuration(os.Getenv("PGHARBOR_TEST_EXPIRE_DELAY"))
	return d
}
