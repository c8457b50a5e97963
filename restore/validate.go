package restore

import (
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/pgharbor/pgharbor/backup"
)

// ErrBadManifest means a backup's manifest describes something a restore must not write.
// Anyone who can write to the repository can store a manifest (age recipients are public),
// and restore often runs as root: every entry is checked before the first byte is written.
var ErrBadManifest = errors.New("the backup manifest is unsafe to restore")

// validatePieces checks every entry of m, whose extents are in ps, against the restore's
// roots (tablespace OID -> directory, 0 the data directory): relative local paths only, no
// entry twice, symlinks only where PostgreSQL has them (pg_tblspc/<oid>, pointing at that
// tablespace's recorded location), nothing below such a link, pieces that add up to the
// file's size and lie in this backup or one it references, and tablespace directories that
// neither hold nor sit inside each other.
func validatePieces(m *backup.Manifest, roots map[uint32]string, ps *backup.Pieces) error {
	bad := func(format string, args ...any) error { return badManifest(m.Label, format, args...) }
	for _, ref := range m.References {
		// A reference becomes part of an object key: it must name a backup, nothing else.
		if ref == "" || ref == "." || ref == ".." || ref == m.Label || strings.ContainsAny(ref, "/\\") {
			return bad("references backup %q", ref)
		}
	}
	locations := map[uint32]string{}
	for _, ts := range m.Tablespaces {
		if ts.OID == 0 {
			return bad("tablespace with OID 0")
		}
		if _, dup := locations[ts.OID]; dup {
			return bad("tablespace %d listed twice", ts.OID)
		}
		locations[ts.OID] = ts.Location
	}
	for oid, a := range roots {
		if a == "/" || !filepath.IsAbs(a) {
			return bad("restoring into %q is refused", a)
		}
		for other, b := range roots {
			if oid != other && (a == b || within(a, b)) {
				return bad("the directories of tablespace %d (%s) and %d (%s) overlap: map one elsewhere with --tablespace-map", oid, a, other, b)
			}
		}
	}
	if ps.Len() != len(m.FileList) {
		return bad("%d files, pieces for %d", len(m.FileList), ps.Len())
	}
	seen := make(map[string]bool, len(m.FileList))
	for i, f := range m.FileList {
		if err := checkEntryPath(f.Path); err != nil {
			return bad("entry %q: %v", f.Path, err)
		}
		key := strconv.FormatUint(uint64(f.Tablespace), 10) + ":" + f.Path
		if seen[key] {
			return bad("entry %q appears twice", f.Path)
		}
		seen[key] = true
		if f.Tablespace != 0 {
			if _, ok := locations[f.Tablespace]; !ok {
				return bad("entry %q belongs to tablespace %d, which the backup does not list", f.Path, f.Tablespace)
			}
			if !strings.HasPrefix(f.Path, "PG_") {
				return bad("entry %q of tablespace %d is outside its version directory (PG_…)", f.Path, f.Tablespace)
			}
		}
		if f.Tablespace == 0 && strings.HasPrefix(f.Path, "pg_tblspc/") && strings.Count(f.Path, "/") > 1 {
			return bad("entry %q lies below a tablespace link", f.Path)
		}
		switch f.Type {
		case "dir":
		case "symlink":
			dir, base := path.Split(f.Path)
			oid, err := strconv.ParseUint(base, 10, 32)
			if f.Tablespace != 0 || dir != "pg_tblspc/" || err != nil {
				return bad("symlink %q: PostgreSQL has symbolic links only at pg_tblspc/<oid>", f.Path)
			}
			loc, ok := locations[uint32(oid)]
			if !ok {
				return bad("symlink %q names tablespace %d, which the backup does not list", f.Path, oid)
			}
			if filepath.Clean(f.Link) != filepath.Clean(loc) {
				return bad("symlink %q points at %q, but tablespace %d is at %q", f.Path, f.Link, oid, loc)
			}
		case "file":
			if f.Size < 0 {
				return bad("file %q has a negative size", f.Path)
			}
			var sum int64
			for _, e := range ps.File(i) {
				if e.Bundle < 0 || e.Offset < 0 || e.Length <= 0 {
					return bad("file %q has a piece at bundle %d offset %d length %d", f.Path, e.Bundle, e.Offset, e.Length)
				}
				if named, ok := ps.Named(e); ok && !slices.Contains(m.References, named) {
					return bad("file %q has a piece in backup %q, which the manifest does not list among its references", f.Path, named)
				}
				if sum += e.Length; sum < 0 {
					return bad("file %q has more bytes in its pieces than a file can hold", f.Path)
				}
			}
			if sum != f.Size {
				return bad("file %q has %d bytes in its pieces but a size of %d", f.Path, sum, f.Size)
			}
		default:
			return bad("entry %q has type %q", f.Path, f.Type)
		}
	}
	return nil
}

// badManifest is ErrBadManifest for backup label, saying why.
func badManifest(label, format string, args ...any) error {
	return fmt.Errorf("%w: backup %s: %s (nothing was written)", ErrBadManifest, label, fmt.Sprintf(format, args...))
}

// checkEntryPath accepts only clean, relative, local slash-separated paths.
func checkEntryPath(p string) error {
	switch {
	case p == "" || p == ".":
		return errors.New("empty path")
	case strings.ContainsAny(p, "\x00\\"):
		return errors.New("NUL or backslash in the path")
	case path.IsAbs(p):
		return errors.New("absolute path")
	case path.Clean(p) != p:
		return errors.New("not a clean path")
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." || el == "." || el == "" {
			return errors.New("a path element is . or .. or empty")
		}
	}
	return nil
}

// within reports whether p lies strictly inside dir.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}
