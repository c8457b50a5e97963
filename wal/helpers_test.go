package wal

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/fs"
	"github.com/pgharbor/pgharbor/storage/mem"
)

// testKeys is one age key pair.
type testKeys struct{ identity, recipient string }

func newKeys(t testing.TB) testKeys {
	t.Helper()
	id, rec, err := codec.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return testKeys{id, rec}
}

// codecFor returns an age codec; withIdentity false makes a write-only one.
func codecFor(t testing.TB, k testKeys, withIdentity bool) *codec.Codec {
	t.Helper()
	cfg := codec.Config{Encryption: "age", Recipients: []string{k.recipient}, Level: 1}
	if withIdentity {
		cfg.Identities = []string{k.identity}
	}
	c, err := codec.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fsRepo opens (and initialises) cluster "test" in a filesystem repository at dir.
func fsRepo(t testing.TB, dir string, c *codec.Codec) *repo.Repo {
	t.Helper()
	b, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return openRepo(t, b, c)
}

func memRepo(t testing.TB) *repo.Repo {
	t.Helper()
	c, err := codec.New(codec.Config{Encryption: "none", Compression: "none"})
	if err != nil {
		t.Fatal(err)
	}
	return openRepo(t, mem.New(), c)
}

func openRepo(t testing.TB, b storage.Backend, c *codec.Codec) *repo.Repo {
	t.Helper()
	r, err := repo.New(b, c, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Init(context.Background(), repo.Identity{}); err != nil {
		t.Fatal(err)
	}
	return r
}

const testSegSize = 1 << 20 // the smallest size PostgreSQL allows keeps fake segments cheap

// fakeSegment builds the bytes of a segment with a valid long page header.
func fakeSegment(sysid uint64, seg Segment, size int64, seed uint64) []byte {
	b := AppendSegmentHeader(make([]byte, 0, size), SegmentHeader{
		Magic: 0xD110, TLI: seg.TLI, PageAddr: seg.StartLSN(size), SystemIdentifier: sysid, SegmentSize: size, BlockSize: 8192,
	})
	rng := rand.New(rand.NewPCG(seed, seg.No))
	for int64(len(b)) < size {
		// Half compressible, like real WAL.
		if rng.IntN(2) == 0 {
			b = append(b, make([]byte, 64)...)
		} else {
			for range 8 {
				v := rng.Uint64()
				b = append(b, byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56))
			}
		}
	}
	return b[:size]
}

// fakePGData makes a PGDATA-like layout: PG_VERSION, global/pg_control with sysid, and
// pg_wal/archive_status.
func fakePGData(t testing.TB, sysid uint64) string {
	t.Helper()
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "pg_wal", "archive_status"), 0o700))
	must(t, os.MkdirAll(filepath.Join(dir, "global"), 0o700))
	must(t, os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600))
	ctl := make([]byte, 8192)
	for i := range 8 {
		ctl[i] = byte(sysid >> (8 * i))
	}
	must(t, os.WriteFile(filepath.Join(dir, "global", "pg_control"), ctl, 0o600))
	return dir
}

// addSegment writes a fake segment into pgdata/pg_wal, optionally marked .ready.
func addSegment(t testing.TB, pgdata string, sysid uint64, seg Segment, ready bool) (string, []byte) {
	t.Helper()
	name := seg.name(testSegSize)
	data := fakeSegment(sysid, seg, testSegSize, 1)
	must(t, os.WriteFile(filepath.Join(pgdata, "pg_wal", name), data, 0o600))
	if ready {
		must(t, os.WriteFile(filepath.Join(pgdata, "pg_wal", "archive_status", name+".ready"), nil, 0o600))
	}
	return name, data
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
