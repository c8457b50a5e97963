package restore

import (
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pgharbor/pgharbor/backup"
)

// FuzzValidateManifest decodes manifests as restore reads them (seeds in testdata/fuzz are
// manifests of real backups, stream and local, with a tablespace, trimmed to a few dozen
// entries) and checks that whatever passes validateManifest can only write inside the
// restore's directories: every path joined to its root stays below that root, symbolic
// links exist only at pg_tblspc/<oid> and point at that tablespace's directory, no entry
// lies below a link, and the pieces of each file add up to its size.
func FuzzValidateManifest(f *testing.F) {
	for _, m := range []*backup.Manifest{
		forged(func(*backup.Manifest) {}),
		forged(func(m *backup.Manifest) { m.FileList[1].Path = "../../etc/x" }),
		forged(func(m *backup.Manifest) {
			m.Tablespaces = []backup.Tablespace{{OID: 16400, Location: "/srv/ts"}}
			m.FileList = append(m.FileList, backup.File{Path: "pg_tblspc/16400", Type: "symlink", Link: "/"},
				backup.File{Tablespace: 16400, Path: "PG_15_202209061/x", Type: "dir"})
		}),
	} {
		b, err := json.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "")
	}
	f.Add([]byte(`{"format":1,"label":"x","tablespaces":[{"oid":1,"location":"/restore"}],"file_list":[]}`), "1=/restore/ts")
	f.Fuzz(func(t *testing.T, data []byte, tsMap string) {
		var m backup.Manifest
		if json.Unmarshal(data, &m) != nil || !backup.ReadableFormat(m.Format) {
			return
		}
		o := Options{PGData: "/restore/data", TablespaceMap: map[string]string{}}
		for _, kv := range strings.Split(tsMap, ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				o.TablespaceMap[k] = v
			}
		}
		roots, err := tablespaceRoots(o, m.Tablespaces)
		if err != nil {
			return
		}
		if validateManifest(&m, roots) != nil {
			return
		}
		locations := map[uint32]string{}
		for _, ts := range m.Tablespaces {
			locations[ts.OID] = ts.Location
		}
		links := map[string]bool{}
		for _, fl := range m.FileList {
			if fl.Type == "symlink" {
				links[fl.Path] = true
			}
		}
		for _, fl := range m.FileList {
			root, ok := roots[fl.Tablespace]
			if !ok {
				t.Fatalf("entry %q of tablespace %d accepted without a directory for it", fl.Path, fl.Tablespace)
			}
			dst := filepath.Join(root, filepath.FromSlash(fl.Path))
			if !strings.HasPrefix(dst, strings.TrimSuffix(root, "/")+"/") {
				t.Fatalf("entry %q (tablespace %d) writes %s, outside %s", fl.Path, fl.Tablespace, dst, root)
			}
			for dir := filepath.Dir(fl.Path); fl.Tablespace == 0 && dir != "."; dir = filepath.Dir(dir) {
				if links[dir] {
					t.Fatalf("entry %q lies below the link %q", fl.Path, dir)
				}
			}
			switch fl.Type {
			case "symlink":
				oid, err := strconv.ParseUint(strings.TrimPrefix(fl.Path, "pg_tblspc/"), 10, 32)
				if fl.Tablespace != 0 || !strings.HasPrefix(fl.Path, "pg_tblspc/") || err != nil {
					t.Fatalf("symlink %q accepted", fl.Path)
				}
				if filepath.Clean(fl.Link) != filepath.Clean(locations[uint32(oid)]) {
					t.Fatalf("symlink %q -> %q accepted, tablespace %d is at %q", fl.Path, fl.Link, oid, locations[uint32(oid)])
				}
			case "file":
				var sum int64
				for _, e := range fl.Extents {
					if e.Length <= 0 || e.Offset < 0 || e.Bundle < 0 {
						t.Fatalf("file %q: piece %+v accepted", fl.Path, e)
					}
					sum += e.Length
				}
				if sum != fl.Size {
					t.Fatalf("file %q: pieces of %d bytes for a size of %d accepted", fl.Path, sum, fl.Size)
				}
			case "dir":
			default:
				t.Fatalf("entry %q of type %q accepted", fl.Path, fl.Type)
			}
		}
		for a, ra := range roots {
			for b, rb := range roots {
				if a != b && (ra == rb || strings.HasPrefix(ra, strings.TrimSuffix(rb, "/")+"/")) {
					t.Fatalf("directories of %d (%s) and %d (%s) overlap", a, ra, b, rb)
				}
			}
		}
	})
}
