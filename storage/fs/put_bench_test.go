package fs_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/fs"
)

// BenchmarkPut writes objects of a backup bundle's size and of a small object's, through
// unnamed files and through named temporary files.
func BenchmarkPut(b *testing.B) {
	for _, size := range []int{4 << 10, 2 << 20} {
		for _, named := range []bool{false, true} {
			for _, ifNotExists := range []bool{false, true} {
				b.Run(fmt.Sprintf("size=%d/named=%v/ifnotexists=%v", size, named, ifNotExists), func(b *testing.B) {
					be, err := fs.New(b.TempDir())
					if err != nil {
						b.Fatal(err)
					}
					if named {
						fs.NamedTempOnly(be)
					}
					body := make([]byte, size)
					ctx := context.Background()
					b.SetBytes(int64(size))
					for i := 0; b.Loop(); i++ {
						err := be.Put(ctx, fmt.Sprintf("d/%08d", i), bytes.NewReader(body), storage.PutOptions{IfNotExists: ifNotExists})
						if err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}
