package restore

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/pgharbor/pgharbor/backup"
)

// firstUserOID is PostgreSQL's FirstNormalObjectId: databases below it (template0,
// template1, postgres) are always restored whole.
const firstUserOID = 16384

// relationFile matches the files of a relation: <relfilenode>[_fsm|_vm|_init][.<segment>].
var relationFile = regexp.MustCompile(`^[0-9]+(_(fsm|vm|init))?(\.[0-9]+)?$`)

// dbOIDOf returns the database a file or directory belongs to (its base/<oid> or, in a
// tablespace, <version dir>/<oid>), and whether it belongs to one.
func dbOIDOf(f backup.File) (uint32, bool) {
	parts := strings.Split(f.Path, "/")
	if len(parts) < 2 || (f.Tablespace == 0 && parts[0] != "base") {
		return 0, false
	}
	if f.Tablespace != 0 && !strings.HasPrefix(parts[0], "PG_") {
		return 0, false
	}
	oid, err := strconv.ParseUint(parts[1], 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(oid), true
}

// excludedDatabases resolves --db-include against the manifest: it returns the OIDs of
// the user databases whose relation files are restored as sparse, zeroed files (nil when
// include is empty). include holds names or OIDs.
func excludedDatabases(m *backup.Manifest, include []string) (map[uint32]bool, error) {
	if len(include) == 0 {
		return nil, nil
	}
	present := map[uint32]bool{}
	for _, f := range m.FileList {
		if oid, ok := dbOIDOf(f); ok && f.Type == "dir" && strings.Count(f.Path, "/") == 1 {
			present[oid] = true
		}
	}
	byName := map[string]uint32{}
	var names []string
	for _, d := range m.Databases {
		byName[d.Name] = d.OID
		names = append(names, d.Name)
	}
	keep := map[uint32]bool{}
	for _, in := range include {
		oid, ok := byName[in]
		if !ok {
			n, err := strconv.ParseUint(in, 10, 32)
			switch {
			case err == nil:
				oid = uint32(n)
			case len(m.Databases) == 0:
				return nil, fmt.Errorf("--db-include %q: backup %s records no database names (taken by an older pgharbor): give the database's OID instead (SELECT oid FROM pg_database WHERE datname = '%s')", in, m.Label, in)
			default:
				slices.Sort(names)
				return nil, fmt.Errorf("--db-include %q: backup %s has no such database (it has %s)", in, m.Label, strings.Join(names, ", "))
			}
		}
		if !present[oid] {
			return nil, fmt.Errorf("--db-include %s: backup %s has no directory base/%d", in, m.Label, oid)
		}
		keep[oid] = true
	}
	out := map[uint32]bool{}
	for oid := range present {
		if oid >= firstUserOID && !keep[oid] {
			out[oid] = true
		}
	}
	return out, nil
}

// zeroed reports whether f is a relation file of an excluded database.
func (x *executor) zeroed(f backup.File) bool {
	if len(x.excluded) == 0 || f.Type != "file" {
		return false
	}
	oid, ok := dbOIDOf(f)
	return ok && x.excluded[oid] && relationFile.MatchString(path.Base(f.Path))
}

// excludedList names the excluded databases, by OID.
func excludedList(m *backup.Manifest, excluded map[uint32]bool) []backup.Database {
	var out []backup.Database
	for oid := range excluded {
		d := backup.Database{OID: oid}
		for _, md := range m.Databases {
			if md.OID == oid {
				d.Name = md.Name
			}
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b backup.Database) int { return int(a.OID) - int(b.OID) })
	return out
}
