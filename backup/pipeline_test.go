package backup

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/pgharbor/pgharbor/storage"
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

// failingPuts fails the Put of one key: at once, without reading the body (as a Put that
// cannot create its file does), or after reading part of it (a full disk).
type failingPuts struct {
	storage.Backend
	key       string
	readFirst int64
	err       error
}

func (b *failingPuts) StreamsPuts() bool { return storage.StreamsPuts(b.Backend) }

func (b *failingPuts) Put(ctx context.Context, key string, r io.Reader, opts storage.PutOptions) error {
	if key != b.key {
		return b.Backend.Put(ctx, key, r, opts)
	}
	if b.readFirst > 0 {
		if _, err := io.CopyN(io.Discard, r, b.readFirst); err != nil {
			return err
		}
	}
	return b.err
}

// An upload that fails while a sealer streams a bundle into it fails the backup with the
// upload's error, at once: the sealer, blocked writing into the pipe, is let go, and nothing
// is stored under the bundle's key.
func TestStreamedBundleWhoseUploadFailsFailsThePipeline(t *testing.T) {
	for _, readFirst := range []int64{0, 10 << 10} {
		injected := errors.New("injected: no space left on device")
		be := &failingPuts{Backend: fsBackend(t), readFirst: readFirst, err: injected}
		r := repoOn(t, be)
		be.key = BundleKey(r, "L", 3)
		const bundle = 256 << 10
		p := newPipeline(context.Background(), r, "L", bundle, 2, 1)
		if !p.stream {
			t.Fatal("the pipeline does not stream to a backend that streams")
		}
		rng := rand.New(rand.NewPCG(5, 6))
		random := func(b []byte) {
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
		}
		if err := feedPipeline(t, p, make([]byte, bundle), 20, random); !errors.Is(err, injected) {
			t.Fatalf("upload failing after %d bytes: the pipeline returned %v, want the upload's error", readFirst, err)
		}
		if _, err := be.Stat(context.Background(), be.key); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("the failed bundle's key: Stat says %v, want not found", err)
		}
	}
}

// A sealed bundle handed over in blocks reads back as written, in writes and reads of any
// size or through WriteTo, with the writer running ahead of the reader; the writer's error
// ends the reading.
func TestBlockPipeCarriesWhatWasWritten(t *testing.T) {
	free := make(chan []byte, 64)
	rng := rand.New(rand.NewPCG(9, 10))
	for _, size := range []int{0, 1, sealBlockSize, blockPipeDepth*sealBlockSize + 1, 9*sealBlockSize + 4321} {
		for i, failed := range []bool{false, true, false, true} {
			viaWriteTo := i >= 2
			want := make([]byte, size)
			for i := range want {
				want[i] = byte(rng.Uint32())
			}
			p := newBlockPipe(free)
			werr := errors.New("injected seal failure")
			go func() {
				for b := want; len(b) > 0; {
					n := min(len(b), 1+rng.IntN(70000))
					if m, err := p.Write(b[:n]); m != n || err != nil {
						panic(err)
					}
					b = b[n:]
				}
				var err error
				if failed {
					err = werr
				}
				p.closeWrite(err)
			}()
			var got []byte
			var err error
			if viaWriteTo {
				var w bytes.Buffer
				_, err = p.WriteTo(&w)
				got = w.Bytes()
			} else {
				got, err = io.ReadAll(struct{ io.Reader }{p})
			}
			switch {
			case failed && !errors.Is(err, werr):
				t.Fatalf("size %d: the reader got %v after a failed write, want the writer's error", size, err)
			case !failed && (err != nil || !bytes.Equal(got, want)):
				t.Fatalf("size %d: read %d bytes, %v", size, len(got), err)
			case !failed && p.n != int64(size):
				t.Fatalf("size %d: counted %d bytes read", size, p.n)
			}
			p.closeRead(nil)
		}
	}
}
