//go:build !linux

package restore

import (
	"io/fs"
	"os"
	"path/filepath"
)

// syncFS makes every file below dir durable. Without syncfs (Linux only) that takes an
// fsync per file and directory: slower, the same guarantee. Operators run restore from
// other systems (laptops) too.
func syncFS(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	})
}

// startWriteback has no portable equivalent; the final sync does the work.
func startWriteback(*os.File, int64, int64) {}

// adviseDontNeed has no portable equivalent.
func adviseDontNeed(*os.File, int64, int64) {}
