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
}

// Verify reads every bundle of a backup, decrypting and decompressing it (which checks its
// authentication or checksum), and checks every file piece's CRC-32C and every whole file's
// CRC-32C against the manifest, and that backup_manifest decodes. workers bundles are read
// in parallel.
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
	byBundle := map[int][]piece{}
	for i, f := range m.FileList {
		var total int64
		for j, e := range f.Extents {
			byBundle[e.Bundle] = append(byBundle[e.Bundle], piece{i, j})
			total += e.Length
		}
		if f.Type == "file" && total != f.Size {
			return nil, fmt.Errorf("backup %s: manifest: %s has %d bytes in its pieces, size %d", label, f.Path, total, f.Size)
		}
	}
	// crcs[i][j] is the verified CRC of piece j of file i; whole-file CRCs are combined
	// after all bundles are read.
	pieceOK := make([][]bool, len(m.FileList))
	for i, f := range m.FileList {
		pieceOK[i] = make([]bool, len(f.Extents))
	}
	if workers <= 0 {
		workers = 4
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(workers)
	var bytesRead = make([]int64, m.Bundles)
	for b := 0; b < m.Bundles; b++ {
		pieces := byBundle[b]
		sort.Slice(pieces, func(i, j int) bool {
			return m.FileList[pieces[i].file].Extents[pieces[i].ext].Offset < m.FileList[pieces[j].file].Extents[pieces[j].ext].Offset
		})
		g.Go(func() error {
			key := BundleKey(r, label, b)
			rc, err := r.GetData(gctx, key)
			if err != nil {
				return fmt.Errorf("backup %s: %w", label, err)
			}
			defer rc.Close()
			br := bufio.NewReaderSize(rc, 256<<10)
			var pos int64
			for _, p := range pieces {
				e := m.FileList[p.file].Extents[p.ext]
				if _, err := br.Discard(int(e.Offset - pos)); err != nil {
					return fmt.Errorf("read %s: %w", r.Location(key), err)
				}
				h := crc32.New(castagnoli)
				if _, err := io.CopyN(h, br, e.Length); err != nil {
					return fmt.Errorf("read %s: %w", r.Location(key), err)
				}
				if h.Sum32() != e.CRC {
					return fmt.Errorf("backup %s: %s: a piece in %s does not match its checksum", label, m.FileList[p.file].Path, r.Location(key))
				}
				pieceOK[p.file][p.ext] = true
				pos = e.Offset + e.Length
			}
			// Read to the end: the object's integrity is checked at its last byte.
			n, err := io.Copy(io.Discard, br)
			if err != nil {
				return fmt.Errorf("read %s: %w", r.Location(key), err)
			}
			bytesRead[b] = pos + n
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	res := &VerifyResult{Label: label, Bundles: m.Bundles}
	for _, n := range bytesRead {
		res.Bytes += n
	}
	for i, f := range m.FileList {
		for j := range f.Extents {
			if !pieceOK[i][j] {
				return nil, fmt.Errorf("backup %s: %s: piece %d was not found in bundle %d", label, f.Path, j, f.Extents[j].Bundle)
			}
		}
		if f.Type == "file" {
			res.Files++
		}
	}
	return res, nil
}
