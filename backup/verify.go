package backup

import (
	"bufio"
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"sort"

	"golang.org/x/sync/errgroup"

	"github.com/pgharbor/pgharbor/internal/repo"
)

// VerifyResult reports a verified backup.
type VerifyResult struct {
	Label   string `json:"label"`
	Files   int    `json:"files"`
	Bundles int    `json:"bundles"`
	Bytes   int64  `json:"bytes"`
	// References are the earlier backups whose bundles were checked for this one's pieces.
	References []string `json:"references,omitempty"`
}

// Verify reads every bundle of a backup, decrypting and decompressing it (which checks its
// authentication or checksum), and checks every file piece's CRC-32C and SHA-256 and every
// whole file's size against the manifest, and that backup_manifest decodes. For a diff or
// incr backup it checks the chain too: every bundle of an earlier backup that its pieces
// point into exists, decrypts and holds those pieces intact; an error names the object and
// the backup it belongs to. workers bundles are read in parallel.
func Verify(ctx context.Context, r *repo.Repo, label string, workers int) (*VerifyResult, error) {
	m, err := ReadManifest(ctx, r, label)
	if err != nil {
		return nil, err
	}
	if _, err := ReadPGManifest(ctx, r, label); err != nil {
		return nil, fmt.Errorf("backup %s: backup_manifest: %w", label, err)
	}
	type piece struct {
		file, ext int
	}
	type bundle struct {
		label string
		n     int
	}
	byBundle := map[bundle][]piece{}
	for i, f := range m.FileList {
		var total int64
		for j, e := range f.Extents {
			k := bundle{e.Owner(label), e.Bundle}
			byBundle[k] = append(byBundle[k], piece{i, j})
			total += e.Length
		}
		if f.Type == "file" && total != f.Size {
			return nil, fmt.Errorf("backup %s: manifest: %s has %d bytes in its pieces, size %d", label, f.Path, total, f.Size)
		}
	}
	// Every bundle of the backup is read, even one no piece points into; of the referenced
	// backups, the bundles that hold pieces of this one.
	bundles := make([]bundle, 0, m.Bundles+len(byBundle))
	for n := 0; n < m.Bundles; n++ {
		bundles = append(bundles, bundle{label, n})
	}
	for k := range byBundle {
		if k.label != label {
			bundles = append(bundles, k)
		}
	}
	sort.Slice(bundles[m.Bundles:], func(i, j int) bool {
		a, b := bundles[m.Bundles+i], bundles[m.Bundles+j]
		if a.label != b.label {
			return a.label < b.label
		}
		return a.n < b.n
	})
	pieceOK := make([][]bool, len(m.FileList))
	for i, f := range m.FileList {
		pieceOK[i] = make([]bool, len(f.Extents))
	}
	if workers <= 0 {
		workers = 4
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	var bytesRead = make([]int64, len(bundles))
	for bi, b := range bundles {
		pieces := byBundle[b]
		sort.Slice(pieces, func(i, j int) bool {
			return m.FileList[pieces[i].file].Extents[pieces[i].ext].Offset < m.FileList[pieces[j].file].Extents[pieces[j].ext].Offset
		})
		note := ""
		if b.label != label {
			note = fmt.Sprintf(" (bundle %d of backup %s, which backup %s references)", b.n, b.label, label)
		}
		g.Go(func() error {
			key := BundleKey(r, b.label, b.n)
			rc, err := r.GetData(gctx, key)
			if err != nil {
				return fmt.Errorf("backup %s: %w%s", label, err, note)
			}
			defer rc.Close()
			br := bufio.NewReaderSize(rc, 256<<10)
			var pos int64
			h := newPieceHash()
			for _, p := range pieces {
				e := m.FileList[p.file].Extents[p.ext]
				if e.Offset < pos {
					return fmt.Errorf("backup %s: %s: overlapping pieces in %s%s", label, m.FileList[p.file].Path, r.Location(key), note)
				}
				if _, err := br.Discard(int(e.Offset - pos)); err != nil {
					return fmt.Errorf("read %s%s: %w", r.Location(key), note, err)
				}
				c := crc32.New(castagnoli)
				h.reset(e)
				if _, err := io.CopyN(io.MultiWriter(c, h), br, e.Length); err != nil {
					return fmt.Errorf("read %s%s: %w", r.Location(key), note, err)
				}
				if c.Sum32() != e.CRC || (!e.SHA256.IsZero() && h.sum() != e.SHA256) {
					return fmt.Errorf("backup %s: %s: a piece in %s%s does not match its checksum: the object is damaged", label, m.FileList[p.file].Path, r.Location(key), note)
				}
				pieceOK[p.file][p.ext] = true
				pos = e.Offset + e.Length
			}
			// Read to the end: the object's integrity is checked at its last byte.
			n, err := io.Copy(io.Discard, br)
			if err != nil {
				return fmt.Errorf("read %s%s: %w", r.Location(key), note, err)
			}
			bytesRead[bi] = pos + n
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	res := &VerifyResult{Label: label, Bundles: m.Bundles, References: m.References}
	for _, n := range bytesRead {
		res.Bytes += n
	}
	for i, f := range m.FileList {
		for j, e := range f.Extents {
			if !pieceOK[i][j] {
				return nil, fmt.Errorf("backup %s: %s: piece %d was not found in bundle %d of backup %s", label, f.Path, j, e.Bundle, e.Owner(label))
			}
		}
		if f.Type == "file" {
			res.Files++
		}
	}
	return res, nil
}
