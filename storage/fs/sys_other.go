//go:build !linux

package fs

import (
	"errors"
	"os"
)

// dropCached has no portable equivalent.
func dropCached(*os.File) {}

// openUnnamed: unnamed files (O_TMPFILE) are Linux's; elsewhere Put writes a named
// temporary file.
func openUnnamed(string, os.FileMode) (*os.File, error) { return nil, errors.ErrUnsupported }

func linkUnnamed(*os.File, string) error { return errors.ErrUnsupported }
