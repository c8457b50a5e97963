package repo_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/mem"
)

// keyedRepos returns views of one backend: a writer (recipient + write key, no identity), a
// reader (identity + verify key) and a forger (recipient only).
func keyedRepos(t *testing.T) (writer, reader, forger *repo.Repo) {
	t.Helper()
	id, rcpt, err := codec.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	sk, vk, err := codec.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	b := mem.New()
	mk := func(cfg codec.Config) *repo.Repo {
		c, err := codec.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		r, err := repo.New(b, c, "main")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	return mk(codec.Config{Encryption: "age", Recipients: []string{rcpt}, SigningKey: sk}),
		mk(codec.Config{Encryption: "age", Recipients: []string{rcpt}, Identities: []string{id}, VerifyKeys: []string{vk}}),
		mk(codec.Config{Encryption: "age", Recipients: []string{rcpt}})
}

func TestSignedPutsVerifyAndUnsignedOnesAreRefusedByName(t *testing.T) {
	ctx := context.Background()
	w, r, f := keyedRepos(t)
	manifest := w.Key("backups", "L", "manifest")
	if err := w.PutJSON(ctx, manifest, map[string]int{"format": 1}, true); err != nil {
		t.Fatal(err)
	}
	seg := w.Key("wal", "0000000100000000", "000000010000000000000001")
	sealed, sum, err := w.Codec().SealDigest([]byte("segment"))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.PutWithDigest(ctx, seg, sealed, sum); err != nil {
		t.Fatal(err)
	}
	// The digest stays readable in the clear header of the signed object.
	if got, ok, err := w.StoredDigest(ctx, seg); err != nil || !ok || got != sum {
		t.Fatalf("StoredDigest of a signed object: %x %v %v", got, ok, err)
	}
	var m map[string]int
	if err := r.GetJSON(ctx, manifest, &m); err != nil || m["format"] != 1 {
		t.Fatalf("reader: %v %v", m, err)
	}
	if got, err := r.GetBytes(ctx, seg); err != nil || string(got) != "segment" {
		t.Fatalf("reader, segment: %q %v", got, err)
	}

	// A forger's manifest: refused, named.
	if err := f.PutJSON(ctx, manifest, map[string]int{"format": 2}, false); err != nil {
		t.Fatal(err)
	}
	err = r.GetJSON(ctx, manifest, &m)
	if !errors.Is(err, codec.ErrUnauthenticated) || !strings.Contains(err.Error(), "main/backups/L/manifest") {
		t.Fatalf("forged manifest: %v", err)
	}
	// A signed object under another name: refused at its end.
	other := w.Key("wal", "0000000100000000", "000000010000000000000009")
	raw, err := storage.ReadAll(ctx, w.Backend(), seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.PutSealed(ctx, other, raw, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GetBytes(ctx, other); !errors.Is(err, codec.ErrUnauthenticated) || !strings.Contains(err.Error(), "another name") {
		t.Fatalf("replayed segment: %v", err)
	}
	// Data bundles are read without a signature (the manifest vouches for their pieces).
	bundle := w.Key("backups", "L", "data", "00000000")
	var buf bytes.Buffer
	if _, err := w.Codec().SealAll(&buf, []byte("pages"), false, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.PutSealed(ctx, bundle, buf.Bytes(), true); err != nil {
		t.Fatal(err)
	}
	rc, err := r.GetData(ctx, bundle)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(got) != "pages" {
		t.Fatalf("GetData: %q %v", got, err)
	}
	if _, err := r.GetBytes(ctx, bundle); !errors.Is(err, codec.ErrUnauthenticated) {
		t.Fatalf("bundle read as an authenticated object: %v", err)
	}
}

func TestSignStoredSignsOnceAndRefusesForeignSignatures(t *testing.T) {
	ctx := context.Background()
	w, r, f := keyedRepos(t)
	key := f.Key("backups", "L", "summary")
	if err := f.PutJSON(ctx, key, map[string]string{"label": "L"}, true); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GetBytes(ctx, key); !errors.Is(err, codec.ErrUnauthenticated) {
		t.Fatalf("before signing: %v", err)
	}
	if out, err := f.SignStored(ctx, key, false); out != repo.Refused || err == nil {
		t.Fatalf("SignStored without a write key: %s %v", out, err)
	}
	if out, err := w.SignStored(ctx, key, true); out != repo.SignedNow || err != nil {
		t.Fatalf("dry run: %s %v", out, err)
	}
	if _, err := r.GetBytes(ctx, key); !errors.Is(err, codec.ErrUnauthenticated) {
		t.Fatalf("the dry run changed the object: %v", err)
	}
	if out, err := w.SignStored(ctx, key, false); out != repo.SignedNow || err != nil {
		t.Fatalf("SignStored: %s %v", out, err)
	}
	if got, err := r.GetBytes(ctx, key); err != nil || !strings.Contains(string(got), `"label":"L"`) {
		t.Fatalf("after signing: %q %v", got, err)
	}
	if out, err := w.SignStored(ctx, key, false); out != repo.AlreadySigned || err != nil {
		t.Fatalf("again: %s %v", out, err)
	}
	// Signed by someone else's key: reported, never re-signed.
	otherKey, _, _ := codec.GenerateSigningKey()
	oc, err := codec.New(codec.Config{Encryption: "none", SigningKey: otherKey})
	if err != nil {
		t.Fatal(err)
	}
	o, _ := repo.New(w.Backend(), oc, "main")
	forged := o.Key("backups", "M", "summary")
	if err := o.PutJSON(ctx, forged, map[string]string{"label": "M"}, true); err != nil {
		t.Fatal(err)
	}
	if out, err := w.SignStored(ctx, forged, false); out != repo.Refused || !errors.Is(err, codec.ErrUnauthenticated) {
		t.Fatalf("foreign signature: %s %v", out, err)
	}
	if _, err := r.GetBytes(ctx, forged); !errors.Is(err, codec.ErrUnauthenticated) {
		t.Fatalf("foreign signature accepted after SignStored: %v", err)
	}
}

// With the identity at hand, sign-existing decodes each object first and never signs a
// damaged one.
func TestSignStoredRefusesDamagedObjectsItCanDecode(t *testing.T) {
	ctx := context.Background()
	id, rcpt, err := codec.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	sk, _, err := codec.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	c, err := codec.New(codec.Config{Encryption: "age", Recipients: []string{rcpt}, Identities: []string{id}, SigningKey: sk})
	if err != nil {
		t.Fatal(err)
	}
	b := mem.New()
	r, _ := repo.New(b, c, "main")
	key := r.Key("backups", "L", "manifest")
	sealed, err := c.Seal([]byte(`{"format": 1}`))
	if err != nil {
		t.Fatal(err)
	}
	sealed[len(sealed)-3] ^= 1
	if err := r.PutSealed(ctx, key, sealed, true); err != nil {
		t.Fatal(err)
	}
	out, err := r.SignStored(ctx, key, false)
	if out != repo.Refused || !errors.Is(err, codec.ErrCorrupt) || !strings.Contains(err.Error(), "main/backups/L/manifest") {
		t.Fatalf("damaged object: %s, %v", out, err)
	}
	stored, err := storage.ReadAll(ctx, b, key)
	if err != nil || !bytes.Equal(stored, sealed) {
		t.Fatalf("the damaged object was changed: %v", err)
	}
}
