package restore

import (
	"context"
	"fmt"
	"math"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
)

// ext is a manifest extent as a restore holds it. A restore keeps every extent of the backup
// for its whole run, one per 128 KiB of relation files: in backup.Extent's form (labels,
// SHA-256, page hashes) a restore of a large cluster would hold gigabytes of them. The
// SHA-256s, which only a delta restore and pg_control's check read, are kept beside it for
// those files only (pieces.sha).
type ext struct {
	off    int64 // offset in the bundle's decoded bytes
	length int64
	bundle int32
	crc    uint32
	owner  uint16 // index in pieces.owners: the backup whose bundle holds the piece
	tree   bool   // the SHA-256 is a page tree (backup.Extent.PageTree)
}

// pieces holds the extents of every file of a manifest, by the file's index in FileList.
type pieces struct {
	owners []string // owners[0] is the backup restored
	owner  map[string]uint16
	file   [][]ext
	sha    [][]backup.Digest // nil for a file whose SHA-256s are not kept
}

func newPieces(label string) *pieces {
	// An extent names no backup when it is in this one's bundles. One that names this
	// backup gets an index of its own, which validatePieces refuses as it refused the label.
	return &pieces{owners: []string{label}, owner: map[string]uint16{"": 0}}
}

// add records the extents of the next file of the manifest (its index is the number of
// files added before), with their SHA-256s when keepSHA is set. It refuses values that do
// not fit its fields; validateManifest checks the rest.
func (ps *pieces) add(f *backup.File, keepSHA bool) error {
	var xs []ext
	if len(f.Extents) > 0 {
		xs = make([]ext, len(f.Extents))
	}
	var shas []backup.Digest
	if keepSHA && len(f.Extents) > 0 {
		shas = make([]backup.Digest, len(f.Extents))
	}
	for j, e := range f.Extents {
		if e.Bundle < 0 || e.Bundle > math.MaxInt32 {
			return fmt.Errorf("file %q has a piece in bundle %d", f.Path, e.Bundle)
		}
		o, ok := ps.owner[e.Backup]
		if !ok {
			if len(ps.owners) > math.MaxUint16 {
				return fmt.Errorf("file %q: pieces in more than %d backups", f.Path, math.MaxUint16)
			}
			o = uint16(len(ps.owners))
			ps.owners = append(ps.owners, e.Backup)
			ps.owner[e.Backup] = o
		}
		xs[j] = ext{off: e.Offset, length: e.Length, bundle: int32(e.Bundle), crc: e.CRC, owner: o, tree: e.PageTree}
		if shas != nil {
			shas[j] = e.SHA256
		}
	}
	ps.file = append(ps.file, xs)
	ps.sha = append(ps.sha, shas)
	return nil
}

// label is the backup whose bundle holds e.
func (ps *pieces) label(e ext) string { return ps.owners[e.owner] }

// extents returns file i's extents in backup.Extent's form, with their SHA-256s when they
// were kept (zero otherwise, as in manifests written before they were recorded).
func (ps *pieces) extents(i int) []backup.Extent {
	xs := ps.file[i]
	if len(xs) == 0 {
		return nil
	}
	out := make([]backup.Extent, len(xs))
	for j, e := range xs {
		out[j] = backup.Extent{Bundle: int(e.bundle), Offset: e.off, Length: e.length, CRC: e.crc, PageTree: e.tree}
		if e.owner != 0 {
			out[j].Backup = ps.owners[e.owner]
		}
		if ps.sha[i] != nil {
			out[j].SHA256 = ps.sha[i][j]
		}
	}
	return out
}

// compactManifest moves the extents of every file of m into pieces, leaving FileList with
// the files' other fields only; keepSHA says for which files the SHA-256s are kept.
func compactManifest(m *backup.Manifest, keepSHA func(f *backup.File) bool) (*pieces, error) {
	ps := newPieces(m.Label)
	for i := range m.FileList {
		f := &m.FileList[i]
		if err := ps.add(f, keepSHA(f)); err != nil {
			return nil, fmt.Errorf("%w: backup %s: %v (nothing was written)", ErrBadManifest, m.Label, err)
		}
		f.Extents = nil
	}
	return ps, nil
}

// readPieces reads the manifest of backup label with its files' extents in pieces, put
// there as each file is decoded: a restore never holds the manifest's own form of them.
// delta keeps every SHA-256 (a delta restore compares the files on disk with them);
// otherwise only pg_control's are kept, for the check before it is written.
func readPieces(ctx context.Context, r *repo.Repo, label string, delta bool) (*backup.Manifest, *pieces, error) {
	ps := newPieces(label)
	var files []backup.File
	var addErr error
	m, err := backup.ReadManifestEach(ctx, r, label, func(f *backup.File) error {
		if addErr = ps.add(f, delta || isControl(*f)); addErr != nil {
			return addErr
		}
		g := *f
		g.Extents = nil
		files = append(files, g)
		return nil
	})
	if addErr != nil {
		return nil, nil, fmt.Errorf("%w: backup %s: %v (nothing was written)", ErrBadManifest, label, addErr)
	}
	if err != nil {
		return nil, nil, err
	}
	m.FileList = files
	ps.owners[0] = m.Label
	return m, ps, nil
}
