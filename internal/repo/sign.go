package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
)

// SignOutcome says what SignStored found or did.
type SignOutcome string

// SignStored outcomes.
const (
	// SignedNow: the object was unsigned and is now signed (and replaced in the repository).
	SignedNow SignOutcome = "signed"
	// AlreadySigned: the object carries a valid signature of a known key; left as it is.
	AlreadySigned SignOutcome = "already-signed"
	// Refused: the object was left alone; the error says why (a signature that does not
	// verify, or an object that does not decode with the configured keys).
	Refused SignOutcome = "refused"
)

// SignStored signs the stored object at key with the codec's write key, for repositories
// that turn signing on after objects were written. The stored bytes are kept as they are
// apart from the header's signed flag and the appended trailer, so no identity is needed
// and recipients are not changed. When the codec can decode the object it is decoded first
// and refused if damaged; an object with a signature that does not verify is refused too,
// never re-signed: an operator decides what to do with it.
func (r *Repo) SignStored(ctx context.Context, key string, dryRun bool) (SignOutcome, error) {
	if !r.codec.Signs() {
		return Refused, fmt.Errorf("sign %s: no signing key configured (repo.signing_key_file, --signing-key)", key)
	}
	rc, err := r.backend.Get(ctx, key, 0, -1)
	if err != nil {
		return Refused, fmt.Errorf("read %s: %w", r.Location(key), err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return Refused, fmt.Errorf("read %s: %w", r.Location(key), err)
	}
	h, err := codec.ParseHeader(data[:min(len(data), codec.MaxHeaderSize)])
	if err != nil {
		return Refused, fmt.Errorf("%s: %w", r.Location(key), err)
	}
	if h.Signed {
		if err := r.codec.CheckSignature(data, key); err != nil {
			return Refused, fmt.Errorf("%s: %w", r.Location(key), err)
		}
		return AlreadySigned, nil
	}
	dec, err := r.codec.NewReader(bytes.NewReader(data))
	if err == nil {
		_, err = io.Copy(io.Discard, dec)
		dec.Close()
	}
	if err != nil && !errors.Is(err, codec.ErrNoIdentity) {
		return Refused, fmt.Errorf("%s does not decode, not signed: %w", r.Location(key), err)
	}
	if dryRun {
		return SignedNow, nil
	}
	signed, err := r.sign(data, key)
	if err != nil {
		return Refused, err
	}
	if err := r.backend.Put(ctx, key, bytes.NewReader(signed), storage.PutOptions{Size: int64(len(signed))}); err != nil {
		return Refused, fmt.Errorf("replace %s: %w", r.Location(key), err)
	}
	return SignedNow, nil
}
