package backup

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"sort"
	"sync"

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
	// AlreadyVerified counts the bundles of earlier backups that hold pieces of this one
	// and were not read again: the same Verifier had found those pieces intact, reading
	// their bundles whole, earlier in the run.
	AlreadyVerified int `json:"already_verified_bundles,omitempty"`
}

// A Verifier verifies backups of one repository and remembers every bundle piece it found
// intact, so that a run over a chain (a full backup, then the diff and incr backups whose
// pieces point into it) does not read a bundle again for pieces it already checked: an
// incremental's unchanged chunks and files point at exactly those pieces. Parts of pieces
// (the unchanged pages of a changed chunk) are read again. Verify the oldest backup first.
// Not safe for concurrent use.
type Verifier struct {
	r       *repo.Repo
	workers int
	mu      sync.Mutex
	intact  map[bundleAt][]pieceMark // by bundle, sorted by offset
	labels  map[string]uint32        // backup labels numbered, for small keys in intact
	// needed, once Expect is called, holds the backups whose pieces are worth remembering:
	// those a backup still to be verified points into. nil: every backup's.
	needed map[string]bool
}

// Expect tells v the backups still to be verified in this run, the next one first. From
// then on v remembers only the pieces of backups that one of them points into (a full backup
// no incremental of the run references is not remembered at all), and forgets at once those
// no backup to come points into: a run over a whole repository holds the pieces of one chain
// at a time at most, not of every backup. Call it before each Verify of a run.
func (v *Verifier) Expect(todo []Summary) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.needed = map[string]bool{}
	for _, b := range todo {
		for _, l := range b.References {
			v.needed[l] = true
		}
	}
	keep := map[uint32]bool{}
	for l, n := range v.labels {
		keep[n] = v.needed[l]
	}
	kept := make(map[bundleAt][]pieceMark)
	for k, marks := range v.intact {
		if keep[k.label] {
			kept[k] = marks
		}
	}
	v.intact = kept // a new map: deleting from the old one would not give its memory back
}

// bundleAt is a bundle of a backup numbered in Verifier.labels.
type bundleAt struct {
	label  uint32
	bundle uint32
}

// pieceMark is a piece found intact: its offset in the bundle's decoded bytes and what it
// was found to be. A Verifier keeps them in one sorted slice per bundle rather than in a map
// by piece, which held more than twice the memory per piece (BenchmarkVerifierRemembers).
type pieceMark struct {
	offset int64
	sum    pieceSum
}

// pieceSum is what a piece was found to be: its length, CRC-32C and digest (of which kind).
type pieceSum struct {
	length   int64
	crc      uint32
	sha      Digest
	pageTree bool
}

func sumOf(e Extent) pieceSum {
	return pieceSum{length: e.Length, crc: e.CRC, sha: e.SHA256, pageTree: e.PageTree}
}

// NewVerifier returns a Verifier reading workers bundles in parallel (4 when workers <= 0).
func NewVerifier(r *repo.Repo, workers int) *Verifier {
	if workers <= 0 {
		workers = 4
	}
	return &Verifier{r: r, workers: workers, intact: map[bundleAt][]pieceMark{}, labels: map[string]uint32{}}
}

// at returns the key of bundle n of backup label; v.mu must be held.
func (v *Verifier) at(label string, n int) bundleAt {
	id, ok := v.labels[label]
	if !ok {
		id = uint32(len(v.labels))
		v.labels[label] = id
	}
	return bundleAt{id, uint32(n)}
}

// known says whether the piece e of bundle n of backup label was found intact, with the
// same offset, length, CRC-32C and digest, earlier in the run.
func (v *Verifier) known(label string, n int, e Extent) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	marks := v.intact[v.at(label, n)]
	i, found := slices.BinarySearchFunc(marks, e.Offset, func(m pieceMark, off int64) int { return cmp.Compare(m.offset, off) })
	return found && marks[i].sum == sumOf(e)
}

// remember records pieces of bundle n of backup label as intact; call it only after the
// whole object was read (its authentication or checksum is checked at its last byte). A
// piece at an offset already recorded replaces what was recorded there.
func (v *Verifier) remember(label string, n int, es []Extent) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.needed != nil && !v.needed[label] || len(es) == 0 {
		return
	}
	k := v.at(label, n)
	old := v.intact[k]
	marks := make([]pieceMark, 0, len(old)+len(es))
	marks = append(marks, old...)
	for _, e := range es {
		marks = append(marks, pieceMark{offset: e.Offset, sum: sumOf(e)})
	}
	// stable: of two marks at one offset, the one remembered last comes last and stays
	slices.SortStableFunc(marks, func(a, b pieceMark) int { return cmp.Compare(a.offset, b.offset) })
	kept := marks[:0]
	for i, m := range marks {
		if i+1 < len(marks) && marks[i+1].offset == m.offset {
			continue
		}
		kept = append(kept, m)
	}
	v.intact[k] = slices.Clip(kept)
}

// Verify reads every bundle of a backup, decrypting and decompressing it (which checks its
// authentication or checksum), and checks every file piece's CRC-32C and SHA-256 and every
// whole file's size against the manifest, and that backup_manifest decodes. For a diff or
// incr backup it checks the chain too: every bundle of an earlier backup that its pieces
// point into exists, decrypts and holds those pieces intact; an error names the object and
// the backup it belongs to. workers bundles are read in parallel.
func Verify(ctx context.Context, r *repo.Repo, label string, workers int) (*VerifyResult, error) {
	return NewVerifier(r, workers).Verify(ctx, label)
}

// Verify verifies one backup as the function Verify does, except that pieces of earlier
// backups that v found intact earlier in the run are not read again (a bundle none of whose
// needed pieces is left is not read at all).
func (v *Verifier) Verify(ctx context.Context, label string) (*VerifyResult, error) {
	r := v.r
	// Every piece is held for the whole verify, in Pieces' form (see Piece).
	m, ps, err := ReadManifestPieces(ctx, r, label, func(*File) bool { return true })
	if err != nil {
		return nil, err
	}
	if _, err := ReadPGManifest(ctx, r, label); err != nil {
		return nil, fmt.Errorf("backup %s: backup_manifest: %w", label, err)
	}
	type piece struct {
		file, ext int32
	}
	type bundle struct {
		label string
		n     int
	}
	byBundle := map[bundle][]piece{}
	for i, f := range m.FileList {
		var total int64
		for j, p := range ps.File(i) {
			k := bundle{ps.Owner(p), int(p.Bundle)}
			byBundle[k] = append(byBundle[k], piece{int32(i), int32(j)})
			total += p.Length
		}
		if f.Type == "file" && total != f.Size {
			return nil, fmt.Errorf("backup %s: manifest: %s has %d bytes in its pieces, size %d", label, f.Path, total, f.Size)
		}
	}
	pieceOK := make([][]bool, len(m.FileList))
	for i := range m.FileList {
		pieceOK[i] = make([]bool, len(ps.File(i)))
	}
	// Every bundle of the backup is read, even one no piece points into; of the referenced
	// backups, the bundles that hold pieces of this one that were not found intact before.
	bundles := make([]bundle, 0, m.Bundles+len(byBundle))
	for n := 0; n < m.Bundles; n++ {
		bundles = append(bundles, bundle{label, n})
	}
	alreadyVerified := 0
	for k, pieces := range byBundle {
		if k.label == label {
			continue
		}
		left := pieces[:0]
		for _, p := range pieces {
			if v.known(k.label, k.n, ps.Extent(int(p.file), int(p.ext))) {
				pieceOK[p.file][p.ext] = true
			} else {
				left = append(left, p)
			}
		}
		byBundle[k] = left
		if len(left) == 0 {
			alreadyVerified++
			continue
		}
		bundles = append(bundles, k)
	}
	sort.Slice(bundles[m.Bundles:], func(i, j int) bool {
		a, b := bundles[m.Bundles+i], bundles[m.Bundles+j]
		if a.label != b.label {
			return a.label < b.label
		}
		return a.n < b.n
	})
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.workers)
	var bytesRead = make([]int64, len(bundles))
	for bi, b := range bundles {
		pieces := byBundle[b]
		sort.Slice(pieces, func(i, j int) bool {
			return ps.File(int(pieces[i].file))[pieces[i].ext].Offset < ps.File(int(pieces[j].file))[pieces[j].ext].Offset
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
			checked := make([]Extent, 0, len(pieces))
			for _, p := range pieces {
				e := ps.Extent(int(p.file), int(p.ext))
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
				checked = append(checked, e)
				pos = e.Offset + e.Length
			}
			// Read to the end: the object's integrity is checked at its last byte.
			n, err := io.Copy(io.Discard, br)
			if err != nil {
				return fmt.Errorf("read %s%s: %w", r.Location(key), note, err)
			}
			bytesRead[bi] = pos + n
			v.remember(b.label, b.n, checked)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	res := &VerifyResult{Label: label, Bundles: m.Bundles, References: m.References, AlreadyVerified: alreadyVerified}
	for _, n := range bytesRead {
		res.Bytes += n
	}
	for i, f := range m.FileList {
		for j, p := range ps.File(i) {
			if !pieceOK[i][j] {
				return nil, fmt.Errorf("backup %s: %s: piece %d was not found in bundle %d of backup %s", label, f.Path, j, p.Bundle, ps.Owner(p))
			}
		}
		if f.Type == "file" {
			res.Files++
		}
	}
	return res, nil
}
