package repo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/testserver"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/gcs"
	"github.com/pgharbor/pgharbor/storage/mem"
	"github.com/pgharbor/pgharbor/storage/retry"
	"github.com/pgharbor/pgharbor/storage/s3"
)

// failingFile is a temporary file whose disk fills after room bytes.
type failingFile struct {
	*os.File
	room int
}

func (f *failingFile) Write(p []byte) (int, error) {
	if len(p) > f.room {
		n, _ := f.File.Write(p[:f.room])
		f.room = 0
		return n, syscall.ENOSPC
	}
	f.room -= len(p)
	return f.File.Write(p)
}

// A spill keeps small objects in memory and moves larger ones to a temporary file; with
// nowhere to put one, or when the file's disk fills, it keeps the object in memory. Either
// way it reads back whole, from its start, as often as asked.
func TestSpillHoldsWhatWasWritten(t *testing.T) {
	data := make([]byte, 100<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	fullAfter := func(room int) func() (spillFile, error) {
		return func() (spillFile, error) {
			f, err := tempSpillFile()
			if err != nil {
				return nil, err
			}
			return &failingFile{File: f.(*os.File), room: room}, nil
		}
	}
	for _, tc := range []struct {
		name, tmp string
		limit     int
		create    func() (spillFile, error)
		disk      bool
	}{
		{"memory", t.TempDir(), 1 << 20, tempSpillFile, false},
		{"file", t.TempDir(), 10 << 10, tempSpillFile, true},
		{"no temporary directory", filepath.Join(t.TempDir(), "missing"), 10 << 10, tempSpillFile, false},
		{"disk full on the first write", t.TempDir(), 10 << 10, fullAfter(100), false},
		{"disk full later", t.TempDir(), 10 << 10, fullAfter(50 << 10), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("TMPDIR", tc.tmp)
			s := &Spill{limit: tc.limit, create: tc.create}
			defer s.Close()
			for rest := data; len(rest) > 0; {
				n := min(len(rest), 7000)
				if k, err := s.Write(rest[:n]); err != nil || k != n {
					t.Fatalf("write %d bytes: %d, %v", n, k, err)
				}
				rest = rest[n:]
			}
			if s.OnDisk() != tc.disk {
				t.Fatalf("on disk %v, want %v", s.OnDisk(), tc.disk)
			}
			for range 2 {
				got, err := io.ReadAll(s.Reader())
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("read back %d of %d bytes: %v", len(got), len(data), err)
				}
			}
		})
	}
}

// flaky fails its first Put after reading part of the body, as a connection cut mid-upload.
type flaky struct {
	storage.Backend
	puts atomic.Int32
}

func (f *flaky) Put(ctx context.Context, key string, r io.Reader, opts storage.PutOptions) error {
	if f.puts.Add(1) == 1 {
		io.CopyN(io.Discard, r, 1000)
		return errors.New("connection reset")
	}
	return f.Backend.Put(ctx, key, r, opts)
}

// An object larger than the spill limit is sealed and signed as it is written, lands whole
// (after a retried upload), and reads back under its name through a verifying reader; in
// memory or on disk, the stored bytes are what Sign makes of the sealed object.
func TestPutStreamedSignsSpilledObjects(t *testing.T) {
	for _, limit := range []int{spillLimit, 4 << 10} {
		checkPutStreamed(t, mem.New(), limit)
	}
}

// The same through the real S3 gateway and fake-gcs-server: the upload that fails half-way
// is replayed from the temporary file.
func TestPutStreamedSpilledToObjectStores(t *testing.T) {
	ctx := context.Background()
	v := testserver.StartVersity(t)
	v.CreateBucket(t, "spill")
	sb, err := s3.New(ctx, s3.Config{Bucket: "spill", Endpoint: v.Endpoint, PathStyle: true, AccessKeyID: v.AccessKey, SecretAccessKey: v.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	checkPutStreamed(t, sb, 4<<10)

	f := testserver.StartFakeGCS(t)
	f.CreateBucket(t, "spill")
	gb, err := gcs.New(ctx, gcs.Config{Bucket: "spill", Endpoint: f.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer gb.Close()
	checkPutStreamed(t, gb, 4<<10)
}

// checkPutStreamed stores a 300 KiB signed object on backend with putStreamed at limit, the
// first upload failing after 1,000 bytes, and checks what was stored and what reads back.
func checkPutStreamed(t *testing.T, backend storage.Backend, limit int) {
	t.Helper()
	ctx := context.Background()
	sk, vk, err := codec.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	wc, err := codec.New(codec.Config{Encryption: "none", SigningKey: sk})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := codec.New(codec.Config{Encryption: "none", VerifyKeys: []string{vk}})
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 300<<10)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range payload {
		payload[i] = "abcdefgh"[rng.IntN(8)]
	}
	write := func(w io.Writer) error {
		for rest := payload; len(rest) > 0; {
			n := min(len(rest), 5000)
			if _, err := w.Write(rest[:n]); err != nil {
				return err
			}
			rest = rest[n:]
		}
		return nil
	}
	t.Setenv("TMPDIR", t.TempDir())
	b := &flaky{Backend: backend}
	rb := retry.New(b, retry.Policy{Attempts: 3, Base: time.Millisecond})
	w, err := New(rb, wc, "main")
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(rb, rc, "main")
	if err != nil {
		t.Fatal(err)
	}
	key := w.Key("backups", "L", "manifest")
	if err := w.putStreamed(ctx, key, true, limit, write); err != nil {
		t.Fatalf("%s, limit %d: %v", backend.Location(), limit, err)
	}
	if b.puts.Load() != 2 {
		t.Fatalf("%s, limit %d: %d uploads, want a failed one and its retry", backend.Location(), limit, b.puts.Load())
	}
	var got []byte
	if err := r.GetStreamed(ctx, key, func(rd io.Reader) error {
		got, err = io.ReadAll(rd)
		return err
	}); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("%s, limit %d: read back %d bytes: %v", backend.Location(), limit, len(got), err)
	}
	stored, err := storage.ReadAll(ctx, rb, key)
	if err != nil {
		t.Fatal(err)
	}
	var sealed bytes.Buffer
	ow, _ := wc.NewWriter(&sealed)
	write(ow)
	ow.Close()
	if want, _ := wc.Sign(sealed.Bytes(), key); !bytes.Equal(stored, want) {
		t.Fatalf("%s, limit %d: stored %d bytes, not what Sign makes of the sealed object (%d)", backend.Location(), limit, len(stored), len(want))
	}
}
