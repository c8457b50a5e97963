package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"time"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
)

// Marker objects inside a backup's prefix (next to the manifest).
const (
	// pinName exempts the backup from expiry while it exists.
	pinName = "pinned"
	// expiringName is written by expire before it deletes the manifest: a prefix holding it
	// is a backup being (or left half-) deleted, never a running backup.
	expiringName = "expiring"
)

// LockName is the repository lock that backup and expire both take, so that they exclude
// each other: an expire never deletes WAL or backups a running backup is about to need,
// and never mistakes a running backup's objects for leftovers.
const LockName = "backup"

// ErrNoBackup means no complete backup has the label.
var ErrNoBackup = errors.New("no complete backup with this label")

// ErrExpiring means the backup is being deleted by expire.
var ErrExpiring = errors.New("backup is being expired")

// ManifestKey is the key of a backup's manifest, its completion marker.
func ManifestKey(r *repo.Repo, label string) string {
	return path.Join(BackupPrefix(r, label), manifestName)
}

// PinKey is the key of a backup's pin marker.
func PinKey(r *repo.Repo, label string) string { return path.Join(BackupPrefix(r, label), pinName) }

// ExpiringKey is the key of a backup's expiring marker.
func ExpiringKey(r *repo.Repo, label string) string {
	return path.Join(BackupPrefix(r, label), expiringName)
}

// Marker is the content of a pin or expiring marker: who wrote it, when.
type Marker struct {
	Time time.Time `json:"time"`
	Host string    `json:"host"`
	PID  int       `json:"pid"`
	Note string    `json:"note,omitempty"`
}

// NewMarker describes this process now.
func NewMarker(note string) Marker {
	host, _ := os.Hostname()
	return Marker{Time: time.Now().UTC(), Host: host, PID: os.Getpid(), Note: note}
}

// Pin exempts a complete backup from expiry. Pinning a pinned backup is harmless.
// It writes the pin first and then looks for an expiring marker (expire writes its marker
// first and then looks for a pin), so that of a pin and an expire racing, at least one sees
// the other: the pin fails with ErrExpiring, or expire keeps the backup.
func Pin(ctx context.Context, r *repo.Repo, label, note string) error {
	if err := needComplete(ctx, r, label); err != nil {
		return err
	}
	if err := r.PutJSON(ctx, PinKey(r, label), NewMarker(note), false); err != nil {
		return fmt.Errorf("pin backup %s: %w", label, err)
	}
	expiring, err := storage.Exists(ctx, r.Backend(), ExpiringKey(r, label))
	if err != nil {
		return fmt.Errorf("pin backup %s: %w", label, err)
	}
	if expiring {
		if err := r.Backend().Delete(ctx, PinKey(r, label)); err != nil {
			return fmt.Errorf("pin backup %s: %w; remove the pin object %s", label, err, r.Location(PinKey(r, label)))
		}
		return fmt.Errorf("pin backup %s: %w", label, ErrExpiring)
	}
	return nil
}

// Unpin removes a backup's pin; the next expire may then delete it. Unpinning a backup that
// is not pinned is harmless.
func Unpin(ctx context.Context, r *repo.Repo, label string) error {
	if err := needComplete(ctx, r, label); err != nil {
		return err
	}
	if err := r.Backend().Delete(ctx, PinKey(r, label)); err != nil {
		return fmt.Errorf("unpin backup %s: %w", label, err)
	}
	return nil
}

func needComplete(ctx context.Context, r *repo.Repo, label string) error {
	if err := repo.ValidateCluster(label); err != nil {
		return fmt.Errorf("%w %q (see `pgharbor info`)", ErrNoBackup, label)
	}
	ok, err := storage.Exists(ctx, r.Backend(), ManifestKey(r, label))
	if err != nil {
		return fmt.Errorf("backup %s: %w", label, err)
	}
	if !ok {
		return fmt.Errorf("%w %q (see `pgharbor info`)", ErrNoBackup, label)
	}
	return nil
}
