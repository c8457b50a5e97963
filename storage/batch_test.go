package storage_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/fault"
	"github.com/pgharbor/pgharbor/storage/mem"
)

// A backend without a batch call gets parallel single deletes; one failing key fails the
// call with that key named, and deleting again finishes the job.
func TestDeleteManyWithoutBatchCallStopsAtAFailureAndCanBeRepeated(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	var keys []string
	for i := 0; i < 200; i++ {
		k := fmt.Sprintf("k/%03d", i)
		keys = append(keys, k)
		if err := inner.Put(ctx, k, strings.NewReader("x"), storage.PutOptions{Size: 1}); err != nil {
			t.Fatal(err)
		}
	}
	// fault.Backend has DeleteMany; hide it to exercise the fallback.
	var b storage.Backend = struct{ storage.Backend }{fault.New(inner)}
	fb := b.(struct{ storage.Backend }).Backend.(*fault.Backend)
	boom := errors.New("boom")
	fb.Add(fault.Rule{Op: fault.OpDelete, Match: func(k string) bool { return k == "k/100" }, Times: 1, Err: boom})
	err := storage.DeleteMany(ctx, b, keys, 8)
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want the injected error", err)
	}
	if ok, _ := storage.Exists(ctx, inner, "k/100"); !ok {
		t.Fatalf("the failed key is gone")
	}
	if err := storage.DeleteMany(ctx, b, keys, 8); err != nil {
		t.Fatal(err)
	}
	n := 0
	inner.List(ctx, "", func(storage.ObjectInfo) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d keys left after the second call", n)
	}
}
