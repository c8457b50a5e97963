//go:build unix

package secret

import (
	"io/fs"
	"syscall"
)

func ownedByRoot(st fs.FileInfo) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && sys.Uid == 0
}
