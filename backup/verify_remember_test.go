package backup

import (
	"math/rand/v2"
	"runtime"
	"testing"
)

// TestVerifierRemembersEachPieceExactly: a piece is known only at its own bundle and offset
// with its own length, CRC-32C and digest; a piece remembered again at an offset replaces the
// one before; Expect forgets the backups nothing to come points into.
func TestVerifierRemembersEachPieceExactly(t *testing.T) {
	piece := func(off int64, crc uint32) Extent {
		e := Extent{Offset: off, Length: ChunkSize, CRC: crc}
		e.SHA256[0], e.SHA256[31] = byte(crc), byte(off>>17)
		return e
	}
	v := NewVerifier(nil, 1)
	e0, e1, e2 := piece(0, 10), piece(ChunkSize, 11), piece(2*ChunkSize, 12)
	e1b := piece(ChunkSize, 21)
	v.remember("A", 0, []Extent{e0, e1})
	v.remember("A", 0, []Extent{e2, e1b}) // later, and out of order
	v.remember("A", 3, []Extent{e2})
	for _, c := range []struct {
		label string
		n     int
		e     Extent
		want  bool
	}{
		{"A", 0, e0, true},
		{"A", 0, e1, false}, // replaced by e1b
		{"A", 0, e1b, true},
		{"A", 0, e2, true},
		{"A", 3, e2, true},
		{"A", 3, e0, false},                     // not in that bundle
		{"A", 1, e0, false},                     // nor in this one
		{"B", 0, e0, false},                     // nor in another backup
		{"A", 0, piece(3*ChunkSize, 12), false}, // an offset never remembered
		{"A", 0, piece(ChunkSize/2, 10), false}, // between two pieces
		{"A", 0, func() Extent { e := e0; e.Length--; return e }(), false},
		{"A", 0, func() Extent { e := e0; e.SHA256[5] ^= 1; return e }(), false},
		{"A", 0, func() Extent { e := e0; e.PageTree = true; return e }(), false},
	} {
		if got := v.known(c.label, c.n, c.e); got != c.want {
			t.Errorf("known(%s, %d, offset %d crc %d): %v, want %v", c.label, c.n, c.e.Offset, c.e.CRC, got, c.want)
		}
	}
	if marks := v.intact[v.at("A", 0)]; len(marks) != 3 {
		t.Errorf("bundle 0 of A holds %d marks, want 3 (one per offset)", len(marks))
	}
	v.Expect([]Summary{{Label: "C", References: []string{"B"}}})
	if len(v.intact) != 0 {
		t.Errorf("after Expect of a backup that points only into B, %d bundles of A remembered", len(v.intact))
	}
	v.remember("A", 0, []Extent{e0})
	v.remember("B", 0, []Extent{e0})
	if v.known("A", 0, e0) || !v.known("B", 0, e0) {
		t.Error("after Expect, remember kept A's piece or dropped B's")
	}
}

// rememberedChain has a Verifier remember every piece of a full backup of gb GB of relation
// files (ChunkSize pieces, bundlePieces to a bundle), as a run over a chain does for the full
// backup its incrementals point into, and returns the Verifier.
func rememberedChain(gb, bundlePieces int) *Verifier {
	v := NewVerifier(nil, 1)
	rng := rand.New(rand.NewPCG(uint64(gb), 7))
	pieces := gb << 30 / ChunkSize
	es := make([]Extent, 0, bundlePieces)
	for n := 0; n*bundlePieces < pieces; n++ {
		es = es[:0]
		for i := 0; i < bundlePieces && n*bundlePieces+i < pieces; i++ {
			e := Extent{Offset: int64(i) * ChunkSize, Length: ChunkSize, CRC: rng.Uint32(), PageTree: i%3 == 0}
			for j := range e.SHA256 {
				e.SHA256[j] = byte(rng.Uint32())
			}
			es = append(es, e)
		}
		v.remember("A", n, es)
	}
	return v
}

// BenchmarkVerifierRemembers measures the live heap a Verifier holds for the pieces it
// found intact in a full backup that later backups of the run point into, per GB of
// relation files (8 GB, bundles of 64 MiB).
func BenchmarkVerifierRemembers(b *testing.B) {
	const gb = 8
	var held uint64
	for b.Loop() {
		base := liveHeap()
		v := rememberedChain(gb, 512)
		if live := liveHeap(); live > base {
			held = max(held, live-base)
		}
		runtime.KeepAlive(v)
	}
	b.ReportMetric(float64(held)/gb, "held-B/GB")
	b.ReportMetric(float64(held)/float64(gb<<30/ChunkSize), "B/piece")
}
