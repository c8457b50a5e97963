// Package fault is a storage.Backend decorator that injects failures, for tests of retry,
// crash and error paths. It is safe for concurrent use.
package fault

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/pgharbor/pgharbor/storage"
)

// Op names a Backend method.
type Op string

// The operations a Rule can match.
const (
	OpPut    Op = "put"
	OpGet    Op = "get"
	OpRead   Op = "read" // a Read on a reader returned by Get
	OpStat   Op = "stat"
	OpList   Op = "list"
	OpDelete Op = "delete"
)

// ErrInjected is the default injected error (transient: not storage.IsPermanent).
var ErrInjected = errors.New("injected fault")

// Rule makes matching calls fail.
type Rule struct {
	Op    Op
	Match func(key string) bool // nil matches every key
	Times int                   // how many calls fail; <=0 means every call
	Err   error                 // ErrInjected when nil
	// AfterBytes: for OpPut, consume this many bytes of the body before failing (a
	// connection dropped mid-upload); for OpRead, fail after this many bytes were read.
	AfterBytes int64
}

// Backend wraps another Backend and applies rules.
type Backend struct {
	inner storage.Backend
	mu    sync.Mutex
	rules []*Rule
	calls map[Op]int
}

var _ storage.Backend = (*Backend)(nil)

// New wraps inner.
func New(inner storage.Backend) *Backend {
	return &Backend{inner: inner, calls: map[Op]int{}}
}

// Add adds a rule.
func (b *Backend) Add(r Rule) {
	b.mu.Lock()
	defer b.mu.Unlock()
	rr := r
	b.rules = append(b.rules, &rr)
}

// Reset removes all rules.
func (b *Backend) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rules = nil
}

// Calls reports how many times op was called.
func (b *Backend) Calls(op Op) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[op]
}

// match returns the rule that fires for this call, consuming one of its Times.
func (b *Backend) match(op Op, key string) *Rule {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls[op]++
	for _, r := range b.rules {
		if r.Op != op || (r.Match != nil && !r.Match(key)) {
			continue
		}
		if r.Times > 0 {
			r.Times--
			if r.Times == 0 {
				r.Times = -1 // spent
			}
		} else if r.Times < 0 {
			continue
		}
		return r
	}
	return nil
}

func (r *Rule) err() error {
	if r.Err != nil {
		return r.Err
	}
	return ErrInjected
}

// Location implements storage.Backend.
func (b *Backend) Location() string { return b.inner.Location() }

// Close implements storage.Backend.
func (b *Backend) Close() error { return b.inner.Close() }

// Put implements storage.Backend.
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, opts storage.PutOptions) error {
	if rule := b.match(OpPut, key); rule != nil {
		if rule.AfterBytes > 0 {
			// Hand the inner backend a body that breaks part-way, as a dropped connection does.
			return b.inner.Put(ctx, key, &breakingReader{r: r, left: rule.AfterBytes, err: rule.err()}, opts)
		}
		return rule.err()
	}
	return b.inner.Put(ctx, key, r, opts)
}

type breakingReader struct {
	r    io.Reader
	left int64
	err  error
}

func (br *breakingReader) Read(p []byte) (int, error) {
	if br.left <= 0 {
		return 0, br.err
	}
	if int64(len(p)) > br.left {
		p = p[:br.left]
	}
	n, err := br.r.Read(p)
	br.left -= int64(n)
	return n, err
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if rule := b.match(OpGet, key); rule != nil {
		return nil, rule.err()
	}
	rc, err := b.inner.Get(ctx, key, offset, length)
	if err != nil {
		return nil, err
	}
	if rule := b.match(OpRead, key); rule != nil {
		return struct {
			io.Reader
			io.Closer
		}{&breakingReader{r: rc, left: rule.AfterBytes, err: rule.err()}, rc}, nil
	}
	return rc, nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if rule := b.match(OpStat, key); rule != nil {
		return storage.ObjectInfo{}, rule.err()
	}
	return b.inner.Stat(ctx, key)
}

// List implements storage.Backend.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if rule := b.match(OpList, prefix); rule != nil {
		return rule.err()
	}
	return b.inner.List(ctx, prefix, fn)
}

// Delete implements storage.Backend.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if rule := b.match(OpDelete, key); rule != nil {
		return rule.err()
	}
	return b.inner.Delete(ctx, key)
}

var _ storage.BatchDeleter = (*Backend)(nil)

// DeleteMany implements storage.BatchDeleter. Rules for OpDelete apply to every key: a key
// whose rule fires is not deleted and the call fails after the other keys are passed on. The
// inner backend's batch call is used when it has one.
func (b *Backend) DeleteMany(ctx context.Context, keys []string) error {
	pass := make([]string, 0, len(keys))
	var failed error
	for _, k := range keys {
		if rule := b.match(OpDelete, k); rule != nil {
			if failed == nil {
				failed = fmt.Errorf("delete %s: %w", k, rule.err())
			}
			continue
		}
		pass = append(pass, k)
	}
	if err := storage.DeleteMany(ctx, b.inner, pass, 0); err != nil {
		return err
	}
	return failed
}
