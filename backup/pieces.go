package backup

import (
	"context"
	"fmt"
	"math"

	"github.com/pgharbor/pgharbor/internal/repo"
)

// Piece is a manifest's extent as a reader that keeps every extent of a backup holds it
// (Pieces): a restore, which fetches bundles in parallel and must know which pieces of which
// files each one holds, and a verify. There is one per 128 KiB of relation files: in
// Extent's form (a label, the SHA-256, page hashes) a large cluster's would take gigabytes.
// The SHA-256 is kept beside it, for the files whose SHA-256s the reader asked for.
type Piece struct {
	Offset   int64 // in the bundle's decoded bytes
	Length   int64
	Bundle   int32
	CRC      uint32
	owner    uint16 // index in Pieces.owners: the backup whose bundle holds the piece
	PageTree bool   // the SHA-256 is a page tree (Extent.PageTree)
}

// Pieces holds the extents of every file of a manifest, by the file's index in FileList.
type Pieces struct {
	owners []string // owners[0] is the backup of the manifest
	owner  map[string]uint16
	files  [][]Piece
	sha    [][]Digest // nil for a file whose SHA-256s are not kept
}

// NewPieces returns an empty Pieces for the manifest of backup label.
func NewPieces(label string) *Pieces {
	// An extent names no backup when it is in this one's bundles. One that names this
	// backup gets an index of its own: Named reports it, as a reader must refuse it.
	return &Pieces{owners: []string{label}, owner: map[string]uint16{"": 0}}
}

// Add records the extents of the next file of the manifest (its index is the number of
// files added before), with their SHA-256s when keepSHA is set. It refuses a bundle number
// that does not fit a Piece, and pieces in more backups than it can name.
func (ps *Pieces) Add(f *File, keepSHA bool) error {
	var xs []Piece
	var shas []Digest
	if len(f.Extents) > 0 {
		xs = make([]Piece, len(f.Extents))
		if keepSHA {
			shas = make([]Digest, len(f.Extents))
		}
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
		xs[j] = Piece{Offset: e.Offset, Length: e.Length, Bundle: int32(e.Bundle), CRC: e.CRC, owner: o, PageTree: e.PageTree}
		if shas != nil {
			shas[j] = e.SHA256
		}
	}
	ps.files = append(ps.files, xs)
	ps.sha = append(ps.sha, shas)
	return nil
}

// Len is the number of files added.
func (ps *Pieces) Len() int { return len(ps.files) }

// File returns the pieces of file i; the caller must not change them.
func (ps *Pieces) File(i int) []Piece { return ps.files[i] }

// Owner is the label of the backup whose bundle holds p.
func (ps *Pieces) Owner(p Piece) string { return ps.owners[p.owner] }

// Named returns the backup p's extent named (Extent.Backup): false when it named none, so
// that p is in the manifest's own backup.
func (ps *Pieces) Named(p Piece) (string, bool) {
	if p.owner == 0 {
		return "", false
	}
	return ps.owners[p.owner], true
}

// Extent returns piece j of file i in Extent's form, with its SHA-256 when it was kept (zero
// otherwise, as in manifests written before they were recorded) and without page hashes.
func (ps *Pieces) Extent(i, j int) Extent {
	p := ps.files[i][j]
	e := Extent{Bundle: int(p.Bundle), Offset: p.Offset, Length: p.Length, CRC: p.CRC, PageTree: p.PageTree}
	if p.owner != 0 {
		e.Backup = ps.owners[p.owner]
	}
	if ps.sha[i] != nil {
		e.SHA256 = ps.sha[i][j]
	}
	return e
}

// Extents returns the pieces of file i in Extent's form (Extent).
func (ps *Pieces) Extents(i int) []Extent {
	if len(ps.files[i]) == 0 {
		return nil
	}
	out := make([]Extent, len(ps.files[i]))
	for j := range out {
		out[j] = ps.Extent(i, j)
	}
	return out
}

// ReadManifestPieces reads a complete backup's manifest with its files' extents in Pieces,
// put there as each file is decoded (without page hashes), so that the manifest's own form
// of them is never held whole; the returned FileList has no Extents. keepSHA says for which files the SHA-256s are
// kept. An error from Add is returned as it is (*PiecesError), for the caller to report as
// a bad manifest.
func ReadManifestPieces(ctx context.Context, r *repo.Repo, label string, keepSHA func(f *File) bool) (*Manifest, *Pieces, error) {
	ps := NewPieces(label)
	var files []File
	var addErr error
	m, err := readManifestFiles(ctx, r, label, false, func(f *File) error {
		if addErr = ps.Add(f, keepSHA(f)); addErr != nil {
			return addErr
		}
		g := *f
		g.Extents = nil
		files = append(files, g)
		return nil
	})
	if addErr != nil {
		return nil, nil, &PiecesError{Label: label, Err: addErr}
	}
	if err != nil {
		return nil, nil, err
	}
	m.FileList = files
	ps.owners[0] = m.Label
	return m, ps, nil
}

// PiecesError is a manifest entry Pieces cannot hold.
type PiecesError struct {
	Label string
	Err   error
}

func (e *PiecesError) Error() string { return fmt.Sprintf("backup %s: manifest: %v", e.Label, e.Err) }
func (e *PiecesError) Unwrap() error { return e.Err }
