package wal

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
)

// pushSealed stores name from an object already sealed with sum, the SHA-256 of its plain
// content, in its header: pushData for a caller that sealed the content as it arrived and
// no longer holds it. An existing object is accepted only when its content has the same
// SHA-256 (write-once, as for pushData).
func pushSealed(ctx context.Context, r *repo.Repo, name string, sealed []byte, sum [32]byte) error {
	p, err := ObjectPath(name)
	if err != nil {
		return err
	}
	key := r.Key(p)
	err = r.PutWithDigest(ctx, key, sealed, sum)
	if errors.Is(err, storage.ErrExists) {
		return compareArchived(ctx, r, name, key, sum)
	}
	if err != nil {
		return fmt.Errorf("push %s to %s: %w", name, r.Location(key), err)
	}
	return nil
}

// compareArchived decides whether the existing archived copy at key holds the same content
// as the file whose SHA-256 is sum: by the digest recorded in its header or, without one,
// by hashing its content.
func compareArchived(ctx context.Context, r *repo.Repo, name, key string, sum [32]byte) error {
	stored, ok, err := r.StoredDigest(ctx, key)
	if err != nil {
		return fmt.Errorf("push %s: %s exists; reading its digest: %w", name, r.Location(key), err)
	}
	if !ok {
		// No recorded digest (written by another tool or version): hash the content, which
		// needs the identity.
		rc, err := r.GetStream(ctx, key)
		if err == nil {
			h := sha256.New()
			_, err = io.Copy(h, rc)
			if cerr := rc.Close(); err == nil {
				err = cerr
			}
			h.Sum(stored[:0])
		}
		if err != nil {
			return fmt.Errorf("push %s: %s exists without a recorded digest and cannot be compared (%w); check it with `pgharbor repo get` on a host with the identity", name, r.Location(key), err)
		}
	}
	if stored == sum {
		return nil
	}
	return fmt.Errorf("push %s: %w: %s holds content with SHA-256 %x, the file to archive has %x; the archived copy is kept. "+
		"Two servers may be archiving into one cluster name, or this server was restored without a new timeline: check repo.cluster", name, ErrConflict, r.Location(key), stored[:8], sum[:8])
}
