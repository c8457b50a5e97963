package storage

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// BatchDeleter is implemented by backends (and decorators) that can delete many keys in
// fewer requests than one per key, such as S3's DeleteObjects.
//
// Contract: DeleteMany deletes every key in keys; keys that do not exist are not an error
// (as with Delete). It may delete some keys and then fail: the error names at least one key
// that was not deleted, and calling it again with the same keys is safe. Keys are validated
// like Delete's. Safe for concurrent use.
type BatchDeleter interface {
	DeleteMany(ctx context.Context, keys []string) error
}

// DefaultDeleteParallel is how many single deletes DeleteMany runs at once for a backend
// without batch deletes when the caller passes parallel <= 0.
const DefaultDeleteParallel = 16

// DeleteMany deletes keys from b: through b's batch call when b is a BatchDeleter,
// otherwise with up to parallel single Deletes at a time. The contract is BatchDeleter's.
func DeleteMany(ctx context.Context, b Backend, keys []string, parallel int) error {
	if len(keys) == 0 {
		return nil
	}
	if bd, ok := b.(BatchDeleter); ok {
		return bd.DeleteMany(ctx, keys)
	}
	return DeleteEach(ctx, b, keys, parallel)
}

// DeleteEach deletes keys with single Deletes, up to parallel at a time (DefaultDeleteParallel
// when parallel <= 0). It stops starting new deletes after the first failure and returns
// the failures joined. Decorators use it for inner backends that have no batch call.
func DeleteEach(ctx context.Context, b Backend, keys []string, parallel int) error {
	if parallel <= 0 {
		parallel = DefaultDeleteParallel
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	sem := make(chan struct{}, parallel)
	for _, k := range keys {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(k string) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := b.Delete(ctx, k); err != nil {
				mu.Lock()
				if len(errs) == 0 || !errors.Is(err, context.Canceled) {
					errs = append(errs, err)
				}
				mu.Unlock()
				cancel()
			}
		}(k)
	}
	wg.Wait()
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %d objects: %w", len(keys), err)
	}
	return nil
}
