// Package storage is the seam between pgharbor and the place its repository lives.
//
// A Backend stores immutable objects under slash-separated keys. It knows nothing of
// PostgreSQL, backups or encryption: the codec (package storage/codec) seals bytes before
// they reach a Backend, and the domain packages (backup, wal, restore) decide the keys.
//
// Glossary:
//   - key: a slash-separated object name relative to the backend's root, never starting
//     with "/" and never containing "." or ".." elements.
//   - object: an immutable sequence of bytes; it is replaced only by a Put without
//     IfNotExists, and it is never visible half-written.
//   - sentinel: ErrNotFound, ErrExists; drivers translate vendor errors into them.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"
)

// ErrNotFound is returned (wrapped) when a key does not exist.
var ErrNotFound = errors.New("object not found")

// ErrExists is returned (wrapped) by Put with IfNotExists when the key already exists.
var ErrExists = errors.New("object already exists")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key     string    `json:"key"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mod_time"`
}

// PutOptions modify a Put.
type PutOptions struct {
	// IfNotExists makes the Put fail with ErrExists when the key already exists. Among
	// concurrent writers of the same key (from any process) exactly one succeeds.
	IfNotExists bool
	// Size is the length of the body when known in advance, or -1. Drivers may use it to
	// pick a single-request upload; they must not trust it for correctness.
	Size int64
}

// Backend is an object store. All methods are safe for concurrent use.
//
// Contract every driver keeps (the storagetest suite checks it):
//   - Put is atomic: readers see either the old object, or nothing, or the complete new one,
//     never a partial body. A Put whose reader fails or whose ctx is cancelled stores nothing.
//   - Put with IfNotExists returns an error wrapping ErrExists if the key exists; it never
//     replaces an existing object.
//   - Get returns an error wrapping ErrNotFound for a missing key. length < 0 reads to the
//     end; a range past the end is cut to the object's size. The caller closes the reader.
//   - Stat returns an error wrapping ErrNotFound for a missing key.
//   - List calls fn for every key starting with prefix, in lexical order, stopping at the
//     first error fn returns (which List returns). Keys written during a List may or may
//     not be seen.
//   - Delete of a missing key succeeds (idempotent).
//   - Errors other than the sentinels may be transient; IsPermanent tells which are not.
type Backend interface {
	Put(ctx context.Context, key string, r io.Reader, opts PutOptions) error
	Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	Delete(ctx context.Context, key string) error
	// Location names the backend for messages, e.g. "s3://bucket/prefix".
	Location() string
	Close() error
}

// Streamer is implemented by a Backend whose Put writes its body out as it reads it: it
// holds none of it in memory, needs no size in advance and never reads a body twice (a local
// filesystem). A writer that produces a body piece by piece can then hand it over as it
// goes, through a pipe, instead of holding it whole until a Put can take it. Object stores
// do not stream: they need a body's size, or hold parts of it for a multipart upload, and
// send a seekable body again when a request fails, so a body for them is best held whole.
type Streamer interface {
	StreamsPuts() bool
}

// StreamsPuts reports whether b's Put streams its body (Streamer).
func StreamsPuts(b Backend) bool {
	s, ok := b.(Streamer)
	return ok && s.StreamsPuts()
}

// TempRemover is implemented by a Backend on which a writer killed in the middle of a Put
// can leave something behind that no key shows but that takes space: a temporary file on
// a filesystem without unnamed files, an unfinished multipart upload in a bucket.
// RemoveTemp removes what was last written to before cutoff (a live writer's is newer; one
// removed all the same only fails that Put, which is then retried) and says how much.
type TempRemover interface {
	RemoveTemp(ctx context.Context, cutoff time.Time) (TempRemoved, error)
}

// TempRemoved counts what RemoveTemp removed.
type TempRemoved struct {
	Count int   `json:"count"`
	Bytes int64 `json:"bytes"`
}

// RemoveTemp calls b's RemoveTemp when it has one (TempRemover); else there is nothing to remove.
func RemoveTemp(ctx context.Context, b Backend, cutoff time.Time) (TempRemoved, error) {
	if t, ok := b.(TempRemover); ok {
		return t.RemoveTemp(ctx, cutoff)
	}
	return TempRemoved{}, nil
}

// PermanentError marks an error that retrying cannot fix (bad credentials, missing bucket,
// invalid argument). Drivers wrap such errors with Permanent.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that IsPermanent reports true for it. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether retrying err is pointless: sentinels, permanent errors,
// context cancellation, and a file system's permission denied (a repository written by
// another OS user stays unreadable however often one asks).
func IsPermanent(err error) bool {
	var pe *PermanentError
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrExists) || errors.As(err, &pe) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, fs.ErrPermission)
}

// ValidateKey rejects keys that could escape a root or alias another key.
func ValidateKey(key string) error {
	if key == "" {
		return Permanent(fmt.Errorf("empty object key"))
	}
	if strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") {
		return Permanent(fmt.Errorf("invalid object key %q: must not start or end with /", key))
	}
	for _, el := range strings.Split(key, "/") {
		if el == "" || el == "." || el == ".." {
			return Permanent(fmt.Errorf("invalid object key %q: empty, . or .. element", key))
		}
	}
	if strings.ContainsAny(key, "\x00\\") {
		return Permanent(fmt.Errorf("invalid object key %q: NUL or backslash", key))
	}
	return nil
}

// ReadAll reads a whole object. Use only for small objects (manifests, identity files).
func ReadAll(ctx context.Context, b Backend, key string) ([]byte, error) {
	rc, err := b.Get(ctx, key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return data, nil
}

// Exists reports whether key exists.
func Exists(ctx context.Context, b Backend, key string) (bool, error) {
	_, err := b.Stat(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}
