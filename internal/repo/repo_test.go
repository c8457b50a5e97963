package repo_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/mem"
)

func newCodec(t *testing.T, recipients ...string) *codec.Codec {
	t.Helper()
	cfg := codec.Config{Encryption: "none"}
	if len(recipients) > 0 {
		cfg = codec.Config{Encryption: "age", Recipients: recipients}
	}
	c, err := codec.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestInitTwiceIsHarmlessAndAnotherSetupIsRefused(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	_, rcpt, _ := codec.GenerateIdentity()
	_, other, _ := codec.GenerateIdentity()
	r, _ := repo.New(b, newCodec(t, rcpt), "main")
	first, err := r.Init(ctx, repo.Identity{})
	if err != nil {
		t.Fatal(err)
	}
	again, err := r.Init(ctx, repo.Identity{})
	if err != nil || !again.Created.Equal(first.Created) {
		t.Fatalf("second init: %v (identity %+v)", err, again)
	}
	plain, _ := repo.New(b, newCodec(t), "main")
	if _, err := plain.Init(ctx, repo.Identity{}); !errors.Is(err, repo.ErrIdentityMismatch) || !strings.Contains(err.Error(), "encrypted with") {
		t.Fatalf("init with encryption none over an age repository: %v", err)
	}
	foreign, _ := repo.New(b, newCodec(t, other), "main")
	if _, err := foreign.Init(ctx, repo.Identity{}); !errors.Is(err, repo.ErrIdentityMismatch) {
		t.Fatalf("init with other recipients: %v", err)
	}
	// Rotation: the old recipient plus a new one is accepted.
	rotated, _ := repo.New(b, newCodec(t, rcpt, other), "main")
	if _, err := rotated.Init(ctx, repo.Identity{}); err != nil {
		t.Fatalf("init with old+new recipients: %v", err)
	}
	// ... and recorded, so the old one can be dropped afterwards.
	if _, err := foreign.Init(ctx, repo.Identity{}); err != nil {
		t.Fatalf("init with the new recipient only, after rotation: %v", err)
	}
	// Another cluster name is another prefix: no conflict.
	second, _ := repo.New(b, newCodec(t), "reporting")
	if _, err := second.Init(ctx, repo.Identity{}); err != nil {
		t.Fatalf("second cluster: %v", err)
	}
}

func TestAttachRecordsTheServerAndRefusesAnother(t *testing.T) {
	ctx := context.Background()
	r, _ := repo.New(mem.New(), newCodec(t), "main")
	if _, err := r.Attach(ctx, repo.Identity{SystemIdentifier: "1"}); !errors.Is(err, repo.ErrNotInitialized) {
		t.Fatalf("attach before init: %v", err)
	}
	if _, err := r.Init(ctx, repo.Identity{}); err != nil {
		t.Fatal(err)
	}
	id, err := r.Attach(ctx, repo.Identity{SystemIdentifier: "7710", PGVersion: 150018, WALSegmentSize: 16 << 20})
	if err != nil || id.SystemIdentifier != "7710" {
		t.Fatalf("attach: %+v %v", id, err)
	}
	if got, _ := r.ReadIdentity(ctx); got.SystemIdentifier != "7710" || got.WALSegmentSize != 16<<20 {
		t.Fatalf("identity not recorded: %+v", got)
	}
	if _, err := r.Attach(ctx, repo.Identity{SystemIdentifier: "9999", PGVersion: 150018}); !errors.Is(err, repo.ErrIdentityMismatch) || !strings.Contains(err.Error(), "another PostgreSQL cluster") {
		t.Fatalf("attach of another server: %v", err)
	}
	if _, err := r.Attach(ctx, repo.Identity{SystemIdentifier: "7710", PGVersion: 160001}); !errors.Is(err, repo.ErrIdentityMismatch) {
		t.Fatalf("attach after a major upgrade: %v", err)
	}
}

func TestClusterNamesAreValidated(t *testing.T) {
	for _, name := range []string{"", "../x", "a/b", ".hidden", strings.Repeat("x", 64)} {
		if _, err := repo.New(mem.New(), newCodec(t), name); err == nil {
			t.Errorf("cluster name %q accepted", name)
		}
	}
}

// The data key of a passphrase cluster is made once: processes that open the cluster at the
// same time get the same key, later ones read it back, and a wrong passphrase cannot.
func TestDataKeyIsCreatedOnceAndSealedWithThePassphrase(t *testing.T) {
	b := mem.New()
	open := func(pass string) *repo.Repo {
		c, err := codec.New(codec.Config{Encryption: "passphrase", Passphrase: pass, ScryptWorkFactor: 10})
		if err != nil {
			t.Fatal(err)
		}
		r, err := repo.New(b, c, "main")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if k, err := open("pass").DataKey(t.Context(), false); k != "" || err != nil {
		t.Fatalf("a cluster without a data key, read only: %q, %v; want none and nothing written", k, err)
	}
	if ok, err := storage.Exists(t.Context(), b, "main/"+repo.DataKeyKey); ok || err != nil {
		t.Fatalf("reading made the data key (%v, %v)", ok, err)
	}
	keys := make([]string, 4)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := open("pass").DataKey(t.Context(), true)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		}()
	}
	wg.Wait()
	again, err := open("pass").DataKey(t.Context(), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k != again || !strings.HasPrefix(k, "AGE-SECRET-KEY-1") {
			t.Fatalf("data keys differ or are malformed: %q vs %q", k, again)
		}
	}
	if _, err := open("other").DataKey(t.Context(), false); !errors.Is(err, codec.ErrWrongKey) {
		t.Fatalf("wrong passphrase: %v, want ErrWrongKey", err)
	}

	// Someone who can write to the bucket but has no passphrase replaces the data key with
	// one of their own in a clear envelope: refused, so writers never seal to it.
	id, _, err := codec.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	clear, err := codec.New(codec.Config{Encryption: "none"})
	if err != nil {
		t.Fatal(err)
	}
	forged, err := clear.Seal([]byte(id + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(t.Context(), "main/"+repo.DataKeyKey, bytes.NewReader(forged), storage.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if k, err := open("pass").DataKey(t.Context(), false); err == nil || !strings.Contains(err.Error(), "not with the passphrase") {
		t.Fatalf("a data key in a clear envelope: %q, %v; want it refused", k, err)
	}
}
