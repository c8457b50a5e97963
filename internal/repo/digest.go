package repo

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
)

// PutWithDigest stores sealed under key if the key does not exist yet. sealed must come from
// Codec.SealDigest, so that its clear header carries the payload's SHA-256 (digest): a
// writer holding only public recipients can then tell an identical re-put from a
// conflicting one with StoredDigest. It returns an error wrapping storage.ErrExists when
// key exists; it never replaces it. The object is signed for key when the codec holds the
// write key (the digest stays readable in the clear header).
func (r *Repo) PutWithDigest(ctx context.Context, key string, sealed []byte, digest [32]byte) error {
	h, err := codec.ParseHeader(sealed[:min(len(sealed), codec.MaxHeaderSize)])
	if err != nil || !h.HasDigest || h.Digest != digest {
		return fmt.Errorf("put %s: the sealed object does not carry the given digest (seal it with SealDigest)", r.Location(key))
	}
	if sealed, err = r.sign(sealed, key); err != nil {
		return err
	}
	if err := r.PutSealed(ctx, key, sealed, true); err != nil {
		return fmt.Errorf("put %s: %w", r.Location(key), err)
	}
	return nil
}

// StoredDigest returns the payload SHA-256 in the clear header of the object at key, reading
// only the header; ok is false when the object carries none.
func (r *Repo) StoredDigest(ctx context.Context, key string) (digest [32]byte, ok bool, err error) {
	rc, err := r.backend.Get(ctx, key, 0, codec.MaxHeaderSize)
	if err != nil {
		return digest, false, err
	}
	defer rc.Close()
	h, err := codec.ReadHeader(io.LimitReader(rc, codec.MaxHeaderSize))
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return digest, false, err
		}
		return digest, false, fmt.Errorf("read header of %s: %w", r.Location(key), err)
	}
	return h.Digest, h.HasDigest, nil
}
