package restore

import "github.com/pgharbor/pgharbor/backup"

// validateManifest is validatePieces for a manifest whose files still hold their extents,
// as tests build them.
func validateManifest(m *backup.Manifest, roots map[uint32]string) error {
	ps := backup.NewPieces(m.Label)
	for i := range m.FileList {
		if err := ps.Add(&m.FileList[i], false); err != nil {
			return badManifest(m.Label, "%v", err)
		}
	}
	return validatePieces(m, roots, ps)
}
