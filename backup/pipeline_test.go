package backup

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

// A sealed bundle written into blocks in writes of any size reads back the same, and again
// after a rewind (a retried upload); released blocks serve the next bundle.
func TestBlockBufReadsBackWhatWasWritten(t *testing.T) {
	free := make(chan []byte, 64)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, sealBlockSize - 1, sealBlockSize, sealBlockSize + 1, 3*sealBlockSize + 12345} {
		want := make([]byte, size)
		for i := range want {
			want[i] = byte(rng.Uint32())
		}
		b := &blockBuf{free: free}
		for p := want; len(p) > 0; {
			n := min(len(p), 1+rng.IntN(70000))
			if m, err := b.Write(p[:n]); m != n || err != nil {
				t.Fatalf("Write: %d, %v", m, err)
			}
			p = p[n:]
		}
		if b.n != int64(size) {
			t.Fatalf("size %d: buffer holds %d", size, b.n)
		}
		r := &blockReader{b: b}
		var got bytes.Buffer
		if _, err := io.Copy(&got, r); err != nil || !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("size %d: WriteTo gave %d bytes, %v", size, got.Len(), err)
		}
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		small, err := io.ReadAll(io.LimitReader(struct{ io.Reader }{r}, int64(size)))
		if err != nil || !bytes.Equal(small, want) {
			t.Fatalf("size %d: Read after a rewind gave %d bytes, %v", size, len(small), err)
		}
		if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
			t.Fatalf("size %d: Read at the end: %d, %v", size, n, err)
		}
		b.release()
	}
	if len(free) == 0 {
		t.Fatal("released blocks did not go back to the free list")
	}
}
