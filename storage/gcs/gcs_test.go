package gcs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gstorage "cloud.google.com/go/storage"
	"google.golang.org/api/option"

	"github.com/pgharbor/pgharbor/internal/testserver"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/gcs"
	"github.com/pgharbor/pgharbor/storage/storagetest"
)

// startWithBucket starts fake-gcs-server and creates bucket in it through the real client.
func startWithBucket(t *testing.T, bucket string) testserver.FakeGCS {
	t.Helper()
	f := testserver.StartFakeGCS(t)
	createBucket(t, f, bucket)
	return f
}

func adminClient(t *testing.T, f testserver.FakeGCS) *gstorage.Client {
	t.Helper()
	c, err := gstorage.NewClient(context.Background(), option.WithEndpoint(f.Endpoint), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func createBucket(t *testing.T, f testserver.FakeGCS, bucket string) {
	t.Helper()
	if err := adminClient(t, f).Bucket(bucket).Create(context.Background(), "pgharbor-test", nil); err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
}

func open(t *testing.T, cfg gcs.Config) *gcs.Backend {
	t.Helper()
	b, err := gcs.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("gcs.New(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func conformance(t *testing.T, chunkSize int, o storagetest.Options) {
	f := startWithBucket(t, "conformance")
	var n atomic.Int64
	storagetest.RunWith(t, func(t *testing.T) storage.Backend {
		return open(t, gcs.Config{
			Bucket:    "conformance",
			Prefix:    fmt.Sprintf("run/%03d", n.Add(1)),
			Endpoint:  f.Endpoint,
			ChunkSize: chunkSize,
		})
	}, o)
}

// TestConformance runs the shared suite against fake-gcs-server v1.56.1. Its DoesNotExist
// precondition is meaningful under concurrency: both of its backends check ifGenerationMatch=0
// and store the object under one lock when the upload is finalized, as GCS does.
func TestConformance(t *testing.T) { conformance(t, 0, storagetest.Options{}) }

// TestConformanceSmallChunks forces multi-chunk resumable uploads, so failed and conditional
// Puts are checked after chunks have already reached the server.
func TestConformanceSmallChunks(t *testing.T) {
	conformance(t, 256<<10, storagetest.Options{LargeSize: 8 << 20, ManyKeys: 50})
}

func TestLocationAndListStayInsidePrefix(t *testing.T) {
	f := startWithBucket(t, "prefixes")
	ctx := context.Background()
	p := open(t, gcs.Config{Bucket: "prefixes", Prefix: "/p/", Endpoint: f.Endpoint})
	p2 := open(t, gcs.Config{Bucket: "prefixes", Prefix: "p2", Endpoint: f.Endpoint})
	root := open(t, gcs.Config{Bucket: "prefixes", Endpoint: f.Endpoint})
	if got := p.Location(); got != "gs://prefixes/p" {
		t.Errorf("Location() = %q, want gs://prefixes/p", got)
	}
	if got := root.Location(); got != "gs://prefixes" {
		t.Errorf("Location() = %q, want gs://prefixes", got)
	}
	for _, b := range []storage.Backend{p, p2} {
		if err := b.Put(ctx, "k", strings.NewReader(b.Location()), storage.PutOptions{Size: -1}); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	if err := p.List(ctx, "", func(i storage.ObjectInfo) error { keys = append(keys, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(keys) != "[k]" {
		t.Errorf("list of prefix p = %v, want [k] (nothing from p2)", keys)
	}
	got, err := storage.ReadAll(ctx, root, "p2/k")
	if err != nil || string(got) != "gs://prefixes/p2" {
		t.Errorf("p2's key stored as %q (%v), want it under p2/k", got, err)
	}
	if _, err := p.Stat(ctx, "missing"); err == nil || !strings.Contains(err.Error(), "gs://prefixes/p/missing") {
		t.Errorf("error %v does not name gs://prefixes/p/missing", err)
	}
}

func TestMissingBucketIsPermanent(t *testing.T) {
	f := startWithBucket(t, "present")
	_, err := gcs.New(context.Background(), gcs.Config{Bucket: "absent", Prefix: "x", Endpoint: f.Endpoint})
	if err == nil || !storage.IsPermanent(err) || !strings.Contains(err.Error(), "gs://absent/x") {
		t.Fatalf("New on a missing bucket: got %v, want a permanent error naming gs://absent/x", err)
	}
	if errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a missing bucket must not look like a missing key: %v", err)
	}

	// A bucket deleted after New: writes and listings fail permanently.
	ctx := context.Background()
	createBucket(t, f, "doomed")
	b := open(t, gcs.Config{Bucket: "doomed", Endpoint: f.Endpoint})
	if err := adminClient(t, f).Bucket("doomed").Delete(ctx); err != nil {
		t.Fatal(err)
	}
	err = b.Put(ctx, "k", strings.NewReader("v"), storage.PutOptions{Size: 1})
	if !storage.IsPermanent(err) || errors.Is(err, storage.ErrExists) {
		t.Errorf("put into deleted bucket: got %v, want a permanent error", err)
	}
	err = b.List(ctx, "", func(storage.ObjectInfo) error { return nil })
	if !storage.IsPermanent(err) || !strings.Contains(err.Error(), `bucket "doomed" does not exist`) {
		t.Errorf("list of deleted bucket: got %v, want a permanent missing-bucket error", err)
	}
}

func TestUnreachableEndpointFailsFast(t *testing.T) {
	port := testserver.FreePort(t) // nothing listens there
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	_, err := gcs.New(ctx, gcs.Config{Bucket: "b", Endpoint: fmt.Sprintf("http://127.0.0.1:%d/storage/v1/", port)})
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("New against a closed port succeeded")
	}
	if elapsed > 5*time.Second {
		t.Fatalf("New took %s to fail against a closed port: %v", elapsed, err)
	}
	if storage.IsPermanent(err) || !strings.Contains(err.Error(), "gs://b/") {
		t.Fatalf("want a transient error naming gs://b/, got %v", err)
	}
	t.Logf("failed after %s: %v", elapsed.Round(time.Millisecond), err)
}

func TestEmulatorHostEnvironmentVariable(t *testing.T) {
	f := startWithBucket(t, "envbucket")
	t.Setenv("STORAGE_EMULATOR_HOST", f.Host)
	ctx := context.Background()
	b := open(t, gcs.Config{Bucket: "envbucket", Prefix: "viaenv"})
	body := bytes.Repeat([]byte("pgharbor"), 1000)
	if err := b.Put(ctx, "a/b", bytes.NewReader(body), storage.PutOptions{Size: int64(len(body)), IfNotExists: true}); err != nil {
		t.Fatalf("put: %v", err)
	}
	if err := b.Put(ctx, "a/b", bytes.NewReader(body), storage.PutOptions{Size: -1, IfNotExists: true}); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second put: got %v, want ErrExists", err)
	}
	got, err := storage.ReadAll(ctx, b, "a/b")
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("read back %d bytes, err %v", len(got), err)
	}
	info, err := b.Stat(ctx, "a/b")
	if err != nil || info.Size != int64(len(body)) || info.ModTime.IsZero() {
		t.Fatalf("stat: %+v %v", info, err)
	}
	if err := b.Delete(ctx, "a/b"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(ctx, "a/b"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat after delete: %v", err)
	}
}

// TestStorageClassOfNewObjects: objects put in one request and in several chunks get the
// configured storage class (fake-gcs-server records it as GCS does); an unknown class is
// refused before any request.
func TestStorageClassOfNewObjects(t *testing.T) {
	f := startWithBucket(t, "sclass")
	b := open(t, gcs.Config{Bucket: "sclass", Prefix: "p", Endpoint: f.Endpoint, StorageClass: "NEARLINE", ChunkSize: 256 << 10})
	ctx := context.Background()
	for key, body := range map[string][]byte{"small": []byte("x"), "big": bytes.Repeat([]byte("y"), 600<<10)} {
		if err := b.Put(ctx, key, bytes.NewReader(body), storage.PutOptions{Size: -1}); err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		attrs, err := adminClient(t, f).Bucket("sclass").Object("p/" + key).Attrs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if attrs.StorageClass != "NEARLINE" || attrs.Size != int64(len(body)) {
			t.Errorf("%s: class %q size %d, want NEARLINE and %d", key, attrs.StorageClass, attrs.Size, len(body))
		}
	}
	if _, err := gcs.New(ctx, gcs.Config{Bucket: "sclass", Endpoint: f.Endpoint, StorageClass: "GLACIER"}); err == nil || !storage.IsPermanent(err) {
		t.Fatalf("an unknown class: %v", err)
	}
}
