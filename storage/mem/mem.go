// Package mem is an in-memory storage.Backend for unit tests of logic above storage.
// It is never the only test of anything that talks to a real store.
package mem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pgharbor/pgharbor/storage"
)

// Backend keeps objects in a map.
type Backend struct {
	mu      sync.RWMutex
	objects map[string]object
}

type object struct {
	data    []byte
	modTime time.Time
}

var _ storage.Backend = (*Backend)(nil)

// New returns an empty in-memory backend.
func New() *Backend { return &Backend{objects: map[string]object{}} }

// Location implements storage.Backend.
func (b *Backend) Location() string { return "mem://" }

// Close implements storage.Backend.
func (b *Backend) Close() error { return nil }

// Put implements storage.Backend.
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, opts storage.PutOptions) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("put %s: read body: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.objects[key]; ok && opts.IfNotExists {
		return fmt.Errorf("put %s: %w", key, storage.ErrExists)
	}
	b.objects[key] = object{data: data, modTime: time.Now()}
	return nil
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, err
	}
	b.mu.RLock()
	o, ok := b.objects[key]
	b.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("get %s: %w", key, storage.ErrNotFound)
	}
	if offset < 0 {
		return nil, storage.Permanent(fmt.Errorf("get %s: negative offset %d", key, offset))
	}
	size := int64(len(o.data))
	if offset > size {
		offset = size
	}
	end := size
	if length >= 0 && offset+length < size {
		end = offset + length
	}
	return io.NopCloser(bytes.NewReader(o.data[offset:end])), nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := storage.ValidateKey(key); err != nil {
		return storage.ObjectInfo{}, err
	}
	b.mu.RLock()
	o, ok := b.objects[key]
	b.mu.RUnlock()
	if !ok {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", key, storage.ErrNotFound)
	}
	return storage.ObjectInfo{Key: key, Size: int64(len(o.data)), ModTime: o.modTime}, nil
}

// List implements storage.Backend.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	b.mu.RLock()
	var infos []storage.ObjectInfo
	for k, o := range b.objects {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, storage.ObjectInfo{Key: k, Size: int64(len(o.data)), ModTime: o.modTime})
		}
	}
	b.mu.RUnlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements storage.Backend.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	b.mu.Lock()
	delete(b.objects, key)
	b.mu.Unlock()
	return nil
}
