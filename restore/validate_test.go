package restore

import (
	"context"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/mem"
)

// forged returns a manifest of one small file plus whatever change makes it hostile.
func forged(change func(m *backup.Manifest)) *backup.Manifest {
	data := []byte("15\n")
	m := &backup.Manifest{Summary: backup.Summary{Format: backup.ManifestFormat, Label: "20261204T000000Z", Timeline: 1,
		StartLSN: "0/2000028", StopLSN: "0/2000100", WALSegmentSize: 16 << 20},
		FileList: []backup.File{{Path: "base", Type: "dir", Mode: 0o700}, fileOf("PG_VERSION", data, 8192)}}
	change(m)
	return m
}

func TestRestoreRefusesForgedManifestsBeforeWritingAnything(t *testing.T) {
	evil := fileOf("x", []byte("owned\n"), 8192)
	cases := map[string]func(m *backup.Manifest){
		"dotdot": func(m *backup.Manifest) {
			f := evil
			f.Path = "../../etc/x"
			m.FileList = append(m.FileList, f)
		},
		"dotdot-inside": func(m *backup.Manifest) {
			f := evil
			f.Path = "base/../../x"
			m.FileList = append(m.FileList, f)
		},
		"absolute": func(m *backup.Manifest) {
			f := evil
			f.Path = "/etc/x"
			m.FileList = append(m.FileList, f)
		},
		"nul": func(m *backup.Manifest) {
			f := evil
			f.Path = "base/x\x00y"
			m.FileList = append(m.FileList, f)
		},
		"symlink-to-root": func(m *backup.Manifest) {
			m.FileList = append(m.FileList, backup.File{Path: "base/1", Type: "symlink", Link: "/"})
			f := evil
			f.Path = "base/1/etc/x"
			m.FileList = append(m.FileList, f)
		},
		"reference-path": func(m *backup.Manifest) {
			m.References = []string{"../../other-cluster/backups/20261204T000000Z"}
		},
		"reference-to-itself": func(m *backup.Manifest) {
			m.References = []string{m.Label}
		},
		"piece-in-an-unlisted-backup": func(m *backup.Manifest) {
			f := evil
			f.Extents = append([]backup.Extent(nil), evil.Extents...) // evil is shared by the cases
			f.Extents[0].Backup = "20261203T000000Z"
			m.FileList = append(m.FileList, f)
		},
		"tablespace-link-elsewhere": func(m *backup.Manifest) {
			m.Tablespaces = []backup.Tablespace{{OID: 16400, Location: "/srv/ts"}}
			m.FileList = append(m.FileList, backup.File{Path: "pg_tblspc/16400", Type: "symlink", Link: "/etc"})
		},
		"file-below-tablespace-link": func(m *backup.Manifest) {
			m.Tablespaces = []backup.Tablespace{{OID: 16400, Location: "/srv/ts"}}
			m.FileList = append(m.FileList, backup.File{Path: "pg_tblspc/16400", Type: "symlink", Link: "/srv/ts"})
			f := evil
			f.Path = "pg_tblspc/16400/PG_15_202209061/x"
			m.FileList = append(m.FileList, f)
		},
		"unlisted-tablespace": func(m *backup.Manifest) {
			f := evil
			f.Tablespace, f.Path = 16401, "PG_15_202209061/x"
			m.FileList = append(m.FileList, f)
		},
		"tablespace-outside-version-dir": func(m *backup.Manifest) {
			m.Tablespaces = []backup.Tablespace{{OID: 16400, Location: "/etc"}}
			f := evil
			f.Tablespace, f.Path = 16400, "passwd"
			m.FileList = append(m.FileList, f)
		},
		"tablespace-is-root": func(m *backup.Manifest) {
			m.Tablespaces = []backup.Tablespace{{OID: 16400, Location: "/"}}
		},
		"pieces-do-not-add-up": func(m *backup.Manifest) {
			f := evil
			f.Path, f.Size = "base/x", 1<<30
			m.FileList = append(m.FileList, f)
		},
		"duplicate": func(m *backup.Manifest) {
			m.FileList = append(m.FileList, m.FileList[1])
		},
		"device": func(m *backup.Manifest) {
			m.FileList = append(m.FileList, backup.File{Path: "base/dev", Type: "chardev"})
		},
	}
	ctx := context.Background()
	for name, change := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := codec.New(codec.Config{Encryption: "none", Compression: "none"})
			if err != nil {
				t.Fatal(err)
			}
			r, err := repo.New(mem.New(), c, "main")
			if err != nil {
				t.Fatal(err)
			}
			m := forged(change)
			prefix := backup.BackupPrefix(r, m.Label)
			if err := r.PutJSON(ctx, path.Join(prefix, "manifest"), m, true); err != nil {
				t.Fatal(err)
			}
			if err := r.PutBytes(ctx, path.Join(prefix, "backup_manifest"), []byte("{}"), true); err != nil {
				t.Fatal(err)
			}
			root := t.TempDir()
			pgdata := filepath.Join(root, "data")
			if err := os.Mkdir(pgdata, 0o700); err != nil {
				t.Fatal(err)
			}
			_, err = Execute(ctx, r, &Plan{Backup: m.Summary, Settings: map[string]string{}}, Options{PGData: pgdata, NoSync: true})
			if !errors.Is(err, ErrBadManifest) {
				t.Fatalf("forged manifest: %v, want ErrBadManifest", err)
			}
			t.Log(err)
			var written []string
			filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if p != root && p != pgdata {
					written = append(written, strings.TrimPrefix(p, root))
				}
				return nil
			})
			if len(written) > 0 {
				t.Fatalf("a refused restore wrote %v", written)
			}
		})
	}
}

func TestRestoreAcceptsWhatPostgreSQLHas(t *testing.T) {
	m := forged(func(m *backup.Manifest) {
		m.Tablespaces = []backup.Tablespace{{OID: 16400, Location: "/srv/ts/"}}
		m.FileList = append(m.FileList,
			backup.File{Path: "pg_tblspc", Type: "dir"},
			backup.File{Path: "pg_tblspc/16400", Type: "symlink", Link: "/srv/ts"},
			backup.File{Tablespace: 16400, Path: "PG_15_202209061", Type: "dir"},
			fileOf("global/pg_filenode.map", make([]byte, 512), 8192))
		f := fileOf("PG_15_202209061/5/16401", make([]byte, 3<<20), 1<<20)
		f.Tablespace = 16400
		m.FileList = append(m.FileList, f)
	})
	if err := validateManifest(m, map[uint32]string{0: "/tmp/x/data", 16400: "/srv/ts"}); err != nil {
		t.Fatal(err)
	}
	if err := validateManifest(m, map[uint32]string{0: "/srv/ts/data", 16400: "/srv/ts"}); !errors.Is(err, ErrBadManifest) {
		t.Fatalf("a data directory inside a tablespace's directory: %v, want ErrBadManifest", err)
	}
}
