package restore

import (
	"context"
	"errors"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
)

// readPieces reads the manifest of backup label with its files' extents in backup.Pieces
// (32 bytes each, where the manifest's own form takes more than 100): a restore holds every
// extent for its whole run. delta keeps every SHA-256 (a delta restore compares the files
// on disk with them); otherwise only pg_control's are kept, for the check before it is
// written.
func readPieces(ctx context.Context, r *repo.Repo, label string, delta bool) (*backup.Manifest, *backup.Pieces, error) {
	m, ps, err := backup.ReadManifestPieces(ctx, r, label, func(f *backup.File) bool { return delta || isControl(*f) })
	if pe, ok := errors.AsType[*backup.PiecesError](err); ok {
		return nil, nil, badManifest(label, "%v", pe.Err)
	}
	return m, ps, err
}
