// Package ci tells tests whether they run in continuous integration, where a missing
// server binary must fail a test instead of skipping it.
package ci

import (
	"os"
	"strconv"
)

// Enabled reports whether $CI says so: true, 1 and the like (strconv.ParseBool), or any
// other non-empty value that is not false, 0 and the like. CI=false is not CI.
func Enabled() bool {
	v := os.Getenv("CI")
	if v == "" {
		return false
	}
	b, err := strconv.ParseBool(v)
	return err != nil || b
}
