// Package retry is a storage.Backend decorator that retries transient failures with
// exponential backoff and full jitter. It never retries permanent errors or the sentinels
// (storage.IsPermanent), and it resumes interrupted reads from where they stopped.
package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/pgharbor/pgharbor/storage"
)

// Policy says how often and how long to retry.
type Policy struct {
	Attempts int           // total attempts including the first; default 5
	Base     time.Duration // first backoff; default 200ms
	Max      time.Duration // cap per backoff; default 10s
	Logger   *slog.Logger  // retries are logged at warn level when set
}

// Backend wraps another Backend.
type Backend struct {
	inner  storage.Backend
	policy Policy
}

var _ storage.Backend = (*Backend)(nil)

// New wraps inner with the policy (zero fields take defaults).
func New(inner storage.Backend, p Policy) *Backend {
	if p.Attempts <= 0 {
		p.Attempts = 5
	}
	if p.Base <= 0 {
		p.Base = 200 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 10 * time.Second
	}
	return &Backend{inner: inner, policy: p}
}

// Unwrap returns the wrapped backend.
func (b *Backend) Unwrap() storage.Backend { return b.inner }

// Location implements storage.Backend.
func (b *Backend) Location() string { return b.inner.Location() }

// Close implements storage.Backend.
func (b *Backend) Close() error { return b.inner.Close() }

// do runs op until it succeeds, fails permanently, or attempts run out.
func (b *Backend) do(ctx context.Context, what string, op func() error) error {
	var err error
	for attempt := 1; ; attempt++ {
		err = op()
		if err == nil || storage.IsPermanent(err) || attempt >= b.policy.Attempts {
			return err
		}
		backoff := b.policy.Base << (attempt - 1)
		if backoff > b.policy.Max || backoff <= 0 {
			backoff = b.policy.Max
		}
		sleep := time.Duration(rand.Int64N(int64(backoff)) + 1)
		if b.policy.Logger != nil {
			b.policy.Logger.Warn("storage operation failed, retrying", "op", what, "attempt", attempt, "backoff", sleep, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last error: %v)", what, ctx.Err(), err)
		case <-time.After(sleep):
		}
	}
}

// StreamsPuts implements storage.Streamer: the inner backend's answer. A streamed body is
// not seekable, so it gets the one attempt a local filesystem needs.
func (b *Backend) StreamsPuts() bool { return storage.StreamsPuts(b.inner) }

// RemoveTemp implements storage.TempRemover: the inner backend's.
func (b *Backend) RemoveTemp(ctx context.Context, cutoff time.Time) (storage.TempRemoved, error) {
	return storage.RemoveTemp(ctx, b.inner, cutoff)
}

// Put implements storage.Backend. Only a body that implements io.Seeker can be sent again;
// other bodies get one attempt.
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, opts storage.PutOptions) error {
	seeker, ok := r.(io.Seeker)
	if !ok {
		return b.inner.Put(ctx, key, r, opts)
	}
	start, err := seeker.Seek(0, io.SeekCurrent)
	if err != nil {
		return b.inner.Put(ctx, key, r, opts)
	}
	first := true
	return b.do(ctx, "put "+key, func() error {
		if !first {
			if _, err := seeker.Seek(start, io.SeekStart); err != nil {
				return storage.Permanent(fmt.Errorf("put %s: rewind body: %w", key, err))
			}
		}
		first = false
		// With IfNotExists, an attempt whose answer was lost may have stored the object: the
		// retry then reports ErrExists, and callers that care compare contents (wal push does).
		return b.inner.Put(ctx, key, r, opts)
	})
}

// Get implements storage.Backend. A read that fails mid-stream is resumed with a ranged Get
// from the byte where it stopped.
func (b *Backend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := b.do(ctx, "get "+key, func() error {
		var err error
		rc, err = b.inner.Get(ctx, key, offset, length)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &resumingReader{b: b, ctx: ctx, key: key, rc: rc, offset: offset, length: length}, nil
}

type resumingReader struct {
	b       *Backend
	ctx     context.Context
	key     string
	rc      io.ReadCloser
	offset  int64 // next byte to read
	length  int64 // remaining, or -1
	retries int
}

func (r *resumingReader) Read(p []byte) (int, error) {
	if r.length == 0 {
		return 0, io.EOF
	}
	if r.length > 0 && int64(len(p)) > r.length {
		p = p[:r.length]
	}
	n, err := r.rc.Read(p)
	r.offset += int64(n)
	if r.length > 0 {
		r.length -= int64(n)
	}
	if err == nil || errors.Is(err, io.EOF) || storage.IsPermanent(err) || r.retries+1 >= r.b.policy.Attempts {
		return n, err
	}
	r.retries++
	r.rc.Close()
	rerr := r.b.do(r.ctx, "resume get "+r.key, func() error {
		var e error
		r.rc, e = r.b.inner.Get(r.ctx, r.key, r.offset, r.length)
		return e
	})
	if rerr != nil {
		r.rc = io.NopCloser(eofReader{})
		return n, fmt.Errorf("read %s at byte %d: %w (resume failed: %v)", r.key, r.offset, err, rerr)
	}
	return n, nil
}

func (r *resumingReader) Close() error { return r.rc.Close() }

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	var info storage.ObjectInfo
	err := b.do(ctx, "stat "+key, func() error {
		var err error
		info, err = b.inner.Stat(ctx, key)
		return err
	})
	return info, err
}

// List implements storage.Backend. A listing that fails part-way is restarted and the keys
// already passed to fn are skipped.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	last := ""
	seen := false
	var fnErr error
	err := b.do(ctx, "list "+prefix, func() error {
		return b.inner.List(ctx, prefix, func(info storage.ObjectInfo) error {
			if seen && info.Key <= last {
				return nil
			}
			if err := fn(info); err != nil {
				fnErr = err
				return storage.Permanent(err)
			}
			last, seen = info.Key, true
			return nil
		})
	})
	if fnErr != nil {
		return fnErr
	}
	return err
}

// Delete implements storage.Backend.
func (b *Backend) Delete(ctx context.Context, key string) error {
	return b.do(ctx, "delete "+key, func() error { return b.inner.Delete(ctx, key) })
}

var _ storage.BatchDeleter = (*Backend)(nil)

// DeleteMany implements storage.BatchDeleter. A batch call of the inner backend is retried
// whole (deleting a key twice is harmless); without one, each single delete is retried.
func (b *Backend) DeleteMany(ctx context.Context, keys []string) error {
	if bd, ok := b.inner.(storage.BatchDeleter); ok {
		return b.do(ctx, fmt.Sprintf("delete %d objects", len(keys)), func() error { return bd.DeleteMany(ctx, keys) })
	}
	return storage.DeleteEach(ctx, b, keys, 0)
}
