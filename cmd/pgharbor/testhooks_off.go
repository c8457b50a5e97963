//go:build !pgharbor_testhooks

package main

import "time"

// expireTestDelay is zero in every build but the e2e tests' (see testhooks.go).
func expireTestDelay() time.Duration { return 0 }

// backupTestSpill is zero (the default) in every build but the e2e tests' (see
// testhooks.go).
func backupTestSpill() int { return 0 }
