package s3_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/pgharbor/pgharbor/internal/testserver"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/s3"
	"github.com/pgharbor/pgharbor/storage/storagetest"
)

// rawClient talks to the test server directly, for set-up and for checking what the driver
// left behind.
func rawClient(srv testserver.VersityServer) *awss3.Client {
	return awss3.New(awss3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(srv.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
	})
}

func createBucket(t testing.TB, srv testserver.VersityServer, bucket string) {
	t.Helper()
	if _, err := rawClient(srv).CreateBucket(context.Background(), &awss3.CreateBucketInput{Bucket: &bucket}); err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
}

func config(srv testserver.VersityServer, bucket, prefix string) s3.Config {
	return s3.Config{
		Bucket: bucket, Prefix: prefix, Endpoint: srv.Endpoint, PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey,
	}
}

func newBackend(t testing.TB, cfg s3.Config) *s3.Backend {
	t.Helper()
	b, err := s3.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("new backend: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// pendingUploads counts incomplete multipart uploads in bucket: a failed Put must leave none.
func pendingUploads(t testing.TB, srv testserver.VersityServer, bucket string) int {
	t.Helper()
	out, err := rawClient(srv).ListMultipartUploads(context.Background(), &awss3.ListMultipartUploadsInput{Bucket: &bucket})
	if err != nil {
		t.Fatalf("list multipart uploads: %v", err)
	}
	return len(out.Uploads)
}

func TestConformance(t *testing.T) {
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "conformance")
	n := 0
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		n++
		return newBackend(t, config(srv, "conformance", fmt.Sprintf("run/%02d-%s", n, filepath.Base(t.Name()))))
	})
	if n := pendingUploads(t, srv, "conformance"); n != 0 {
		t.Errorf("%d multipart uploads left behind", n)
	}
}

// With the minimum part size the suite's 6 and 12 MiB objects go through multipart uploads,
// including conditional CompleteMultipartUpload onto an existing key.
func TestConformanceSmallParts(t *testing.T) {
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "smallparts")
	n := 0
	storagetest.RunWith(t, func(t *testing.T) storage.Backend {
		n++
		cfg := config(srv, "smallparts", fmt.Sprintf("run-%02d", n))
		cfg.PartSize, cfg.Concurrency = s3.MinPartSize, 2
		return newBackend(t, cfg)
	}, storagetest.Options{LargeSize: 23 << 20})
	if n := pendingUploads(t, srv, "smallparts"); n != 0 {
		t.Errorf("%d multipart uploads left behind", n)
	}
}

func TestLocationAndPrefixIsolation(t *testing.T) {
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "iso")
	ctx := context.Background()
	p := newBackend(t, config(srv, "iso", "/p/"))
	p2 := newBackend(t, config(srv, "iso", "p2"))
	whole := newBackend(t, config(srv, "iso", ""))
	if got := p.Location(); got != "s3://iso/p" {
		t.Errorf("location %q, want s3://iso/p", got)
	}
	if got := whole.Location(); got != "s3://iso" {
		t.Errorf("location %q, want s3://iso", got)
	}
	for _, b := range []*s3.Backend{p, p2} {
		if err := b.Put(ctx, "k", strings.NewReader(b.Location()), storage.PutOptions{Size: -1}); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	if err := p.List(ctx, "", func(o storage.ObjectInfo) error { keys = append(keys, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(keys) != "[k]" {
		t.Errorf("prefix p lists %v, want [k] (nothing from p2)", keys)
	}
	keys = nil
	if err := whole.List(ctx, "p", func(o storage.ObjectInfo) error { keys = append(keys, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(keys) != "[p/k p2/k]" {
		t.Errorf("whole bucket lists %v", keys)
	}
	if got, err := storage.ReadAll(ctx, whole, "p2/k"); err != nil || string(got) != "s3://iso/p2" {
		t.Errorf("p2/k holds %q, %v", got, err)
	}
}

func TestUnreachableEndpointFailsFast(t *testing.T) {
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", testserver.FreePort(t)) // closed again: nobody listens
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	b := newBackend(t, s3.Config{Bucket: "b", Endpoint: endpoint, PathStyle: true, AccessKeyID: "a", SecretAccessKey: "s"})
	_, err := b.Stat(ctx, "some/key")
	if err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat on a closed port: got %v, want a connection error", err)
	}
	if !strings.Contains(err.Error(), endpoint) {
		t.Errorf("error does not name the endpoint %s: %v", endpoint, err)
	}
	err = b.Put(ctx, "some/key", strings.NewReader("x"), storage.PutOptions{Size: 1})
	if err == nil || !strings.Contains(err.Error(), endpoint) {
		t.Errorf("put on a closed port: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s to notice the endpoint is unreachable", d)
	}
	t.Logf("error: %v", err)
}

func TestMissingBucketIsPermanent(t *testing.T) {
	srv := testserver.StartVersity(t)
	ctx := context.Background()
	b := newBackend(t, config(srv, "no-such-bucket", "x"))
	check := func(op string, err error) {
		t.Helper()
		if err == nil || !storage.IsPermanent(err) || errors.Is(err, storage.ErrNotFound) ||
			!strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist`) {
			t.Errorf("%s: got %v, want a permanent bucket-does-not-exist error", op, err)
		}
	}
	check("put", b.Put(ctx, "k", strings.NewReader("x"), storage.PutOptions{Size: 1}))
	_, err := b.Stat(ctx, "k")
	check("stat", err)
	_, err = b.Get(ctx, "k", 0, -1)
	check("get", err)
	check("list", b.List(ctx, "", func(storage.ObjectInfo) error { return nil }))
	t.Logf("error: %v", err)
}

func TestWrongCredentialsIsPermanent(t *testing.T) {
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "creds")
	ctx := context.Background()
	cfg := config(srv, "creds", "")
	cfg.SecretAccessKey = "wrong"
	b := newBackend(t, cfg)
	err := b.Put(ctx, "k", strings.NewReader("x"), storage.PutOptions{Size: 1})
	if !storage.IsPermanent(err) || !strings.Contains(err.Error(), "credentials rejected") {
		t.Errorf("put: got %v, want a permanent credentials-rejected error", err)
	}
	_, err = b.Stat(ctx, "k") // a HEAD: 403 without an error code
	if !storage.IsPermanent(err) || errors.Is(err, storage.ErrNotFound) {
		t.Errorf("stat: got %v, want a permanent error", err)
	}
	cfg.AccessKeyID = "nobody"
	b = newBackend(t, cfg)
	err = b.Put(ctx, "k", strings.NewReader("x"), storage.PutOptions{Size: 1})
	if !storage.IsPermanent(err) || !strings.Contains(err.Error(), "credentials rejected") {
		t.Errorf("put with an unknown access key: got %v, want a permanent credentials-rejected error", err)
	}
	_, err = b.Stat(ctx, "k")
	if !storage.IsPermanent(err) || !strings.Contains(err.Error(), "credentials rejected") {
		t.Errorf("stat with an unknown access key: got %v, want a permanent credentials-rejected error", err)
	}
	t.Logf("error: %v", err)
}

func TestDefaultCredentialChainFromEnvironment(t *testing.T) {
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "envcreds")
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	cfg := config(srv, "envcreds", "")
	cfg.AccessKeyID, cfg.SecretAccessKey = "", ""
	b := newBackend(t, cfg)
	ctx := context.Background()
	if err := b.Put(ctx, "k", strings.NewReader("hello"), storage.PutOptions{Size: 5}); err != nil {
		t.Fatalf("put with credentials from the environment: %v", err)
	}
}

func TestSizeHintIsNotTrusted(t *testing.T) {
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "hint")
	cfg := config(srv, "hint", "")
	cfg.PartSize = s3.MinPartSize
	b := newBackend(t, cfg)
	ctx := context.Background()
	for _, c := range []struct {
		name       string
		hint, real int
	}{{"shorter", 10, 20}, {"longer", 20, 10}, {"shorter across parts", 100, 11 << 20}} {
		data := make([]byte, c.real)
		_, _ = rand.Read(data)
		if err := b.Put(ctx, "k", bytes.NewReader(data), storage.PutOptions{Size: int64(c.hint)}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got, err := storage.ReadAll(ctx, b, "k"); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: stored %d bytes (%v), reader gave %d", c.name, len(got), err, c.real)
		}
	}
}

func TestConcurrentStreamedIfNotExistsExactlyOneWins(t *testing.T) {
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "race")
	cfg := config(srv, "race", "")
	cfg.PartSize, cfg.Concurrency = s3.MinPartSize, 2
	b := newBackend(t, cfg)
	ctx := context.Background()
	const writers = 4
	bodies := make([][]byte, writers)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range bodies {
		bodies[i] = bytes.Repeat([]byte{byte('a' + i)}, 11<<20)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = b.Put(ctx, "obj", bytes.NewReader(bodies[i]), storage.PutOptions{IfNotExists: true, Size: -1})
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("writers %d and %d both won", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, storage.ErrExists):
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no writer won")
	}
	if got, err := storage.ReadAll(ctx, b, "obj"); err != nil || !bytes.Equal(got, bodies[winner]) {
		t.Fatalf("stored object is not the winner's (%v)", err)
	}
	if n := pendingUploads(t, srv, "race"); n != 0 {
		t.Errorf("%d multipart uploads left behind by the losers", n)
	}
}

type failAfter struct {
	r    io.Reader
	left int64
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.left <= 0 {
		return 0, errors.New("source failed on purpose")
	}
	if int64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.Read(p)
	f.left -= int64(n)
	return n, err
}

func TestFailedStreamAbortsMultipartUpload(t *testing.T) {
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "abort")
	cfg := config(srv, "abort", "")
	cfg.PartSize = s3.MinPartSize
	b := newBackend(t, cfg)
	ctx := context.Background()
	src := &failAfter{r: rand.Reader, left: 17 << 20}
	if err := b.Put(ctx, "obj", src, storage.PutOptions{Size: -1}); err == nil || !strings.Contains(err.Error(), "failed on purpose") {
		t.Fatalf("put: got %v, want the reader's error", err)
	}
	if n := pendingUploads(t, srv, "abort"); n != 0 {
		t.Fatalf("%d multipart uploads left behind by a failing reader", n)
	}
	cctx, cancel := context.WithCancel(ctx)
	src = &failAfter{r: rand.Reader, left: 1 << 40}
	go func() { time.Sleep(200 * time.Millisecond); cancel() }()
	if err := b.Put(cctx, "obj", io.LimitReader(src, 1<<30), storage.PutOptions{Size: -1}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled put: got %v, want context.Canceled", err)
	}
	if ok, err := storage.Exists(ctx, b, "obj"); ok || err != nil {
		t.Fatalf("failed puts left an object (%v, %v)", ok, err)
	}
	if n := pendingUploads(t, srv, "abort"); n != 0 {
		out, _ := rawClient(srv).ListMultipartUploads(ctx, &awss3.ListMultipartUploadsInput{Bucket: aws.String("abort")})
		for _, u := range out.Uploads {
			t.Logf("upload %s %s", *u.Key, *u.UploadId)
			_, err := rawClient(srv).AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{Bucket: aws.String("abort"), Key: u.Key, UploadId: u.UploadId})
			t.Logf("abort again: %v", err)
		}
		t.Fatalf("%d multipart uploads left behind", n)
	}
}

// A multipart upload left by a writer killed mid-Put is aborted by RemoveTemp once it was
// started before the cutoff; uploads outside the backend's prefix are not its to remove.
func TestRemoveTempAbortsLeftoverUploads(t *testing.T) {
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "leftover")
	b := newBackend(t, config(srv, "leftover", "repo"))
	ctx := context.Background()
	raw := rawClient(srv)
	start := func(key string, size int) {
		t.Helper()
		up, err := raw.CreateMultipartUpload(ctx, &awss3.CreateMultipartUploadInput{Bucket: aws.String("leftover"), Key: aws.String(key)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := raw.UploadPart(ctx, &awss3.UploadPartInput{Bucket: aws.String("leftover"), Key: aws.String(key),
			UploadId: up.UploadId, PartNumber: aws.Int32(1), Body: bytes.NewReader(make([]byte, size))}); err != nil {
			t.Fatal(err)
		}
	}
	start("repo/main/backups/x/data/00000001", 5<<20)
	start("other/main/backups/x/data/00000001", 1<<20)
	if got, err := b.RemoveTemp(ctx, time.Now().Add(-time.Hour)); err != nil || got.Count != 0 {
		t.Fatalf("RemoveTemp of uploads older than an hour: %+v, %v", got, err)
	}
	got, err := storage.RemoveTemp(ctx, b, time.Now().Add(time.Minute))
	if err != nil || got != (storage.TempRemoved{Count: 1, Bytes: 5 << 20}) {
		t.Fatalf("RemoveTemp: %+v, %v; want 1 upload of 5 MiB", got, err)
	}
	out, err := raw.ListMultipartUploads(ctx, &awss3.ListMultipartUploadsInput{Bucket: aws.String("leftover")})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Uploads) != 1 || aws.ToString(out.Uploads[0].Key) != "other/main/backups/x/data/00000001" {
		var keys []string
		for _, u := range out.Uploads {
			keys = append(keys, aws.ToString(u.Key))
		}
		t.Fatalf("uploads left: %v, want only the one outside the prefix", keys)
	}
}

// zeroReader yields n zero bytes without holding them.
type zeroReader struct{ left int64 }

func (z *zeroReader) Read(p []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > z.left {
		p = p[:z.left]
	}
	clear(p)
	z.left -= int64(len(p))
	return len(p), nil
}

func TestStreamingPutKeepsMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("100 MiB upload")
	}
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "mem")
	cfg := config(srv, "mem", "")
	cfg.PartSize, cfg.Concurrency = s3.MinPartSize, 2
	b := newBackend(t, cfg)
	const size = 100 << 20
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	err := b.Put(context.Background(), "big", &zeroReader{left: size}, storage.PutOptions{Size: -1})
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	grew := int64(peak.Load()) - int64(base)
	// (Concurrency+1) parts of 5 MiB = 15 MiB, plus the SDK's own buffers.
	t.Logf("heap in use grew by %d MiB at most while streaming %d MiB", grew>>20, size>>20)
	if grew > 60<<20 {
		t.Errorf("heap grew by %d MiB streaming a %d MiB object: not bounded by the part buffers", grew>>20, size>>20)
	}
	if info, err := b.Stat(context.Background(), "big"); err != nil || info.Size != size {
		t.Errorf("stat: %+v %v", info, err)
	}
}

// headerRecorder is a reverse proxy in front of the S3 server that records the storage
// class and server-side encryption headers of every request that creates an object.
type headerRecorder struct {
	mu   sync.Mutex
	seen []string // "METHOD query: class sse kms"
}

func (h *headerRecorder) start(t *testing.T, target string) string {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		creates := (r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == "") ||
			(r.Method == http.MethodPost && r.URL.Query().Has("uploads"))
		if creates {
			h.mu.Lock()
			h.seen = append(h.seen, fmt.Sprintf("%s %s: %s %s %s", r.Method, r.URL.Path, r.Header.Get("X-Amz-Storage-Class"),
				r.Header.Get("X-Amz-Server-Side-Encryption"), r.Header.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id")))
			h.mu.Unlock()
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestStorageClassAndServerSideEncryption: every request that creates an object (a
// single-part put and a multipart upload) carries the configured storage class and
// server-side encryption, on its way to a real S3 server that stores the object; classes
// that need a restore before reading and inconsistent SSE settings are refused before any
// request.
func TestStorageClassAndServerSideEncryption(t *testing.T) {
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "sclass")
	rec := &headerRecorder{}
	cfg := config(srv, "sclass", "p")
	cfg.Endpoint = rec.start(t, srv.Endpoint)
	cfg.StorageClass, cfg.SSE = "STANDARD_IA", "AES256"
	cfg.PartSize = s3.MinPartSize
	b := newBackend(t, cfg)
	ctx := context.Background()
	small := []byte("small object")
	big := bytes.Repeat([]byte("0123456789abcdef"), (s3.MinPartSize+100)/16)
	for _, o := range []struct {
		key  string
		body []byte
	}{{"small", small}, {"big", big}} {
		if err := b.Put(ctx, o.key, bytes.NewReader(o.body), storage.PutOptions{}); err != nil {
			t.Fatalf("put %s: %v", o.key, err)
		}
		rc, err := b.Get(ctx, o.key, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, o.body) {
			t.Fatalf("%s read back %d bytes, want %d", o.key, len(got), len(o.body))
		}
	}
	want := []string{"PUT /sclass/p/small: STANDARD_IA AES256 ", "POST /sclass/p/big: STANDARD_IA AES256 "}
	if !slices.Equal(rec.seen, want) {
		t.Fatalf("object-creating requests carried %q, want %q", rec.seen, want)
	}
	for _, bad := range []s3.Config{
		{StorageClass: "GLACIER"}, {StorageClass: "DEEP_ARCHIVE"}, {StorageClass: "CHEAP"},
		{SSE: "des"}, {SSE: "AES256", SSEKMSKeyID: "k"}, {SSEKMSKeyID: "k"},
	} {
		c := config(srv, "sclass", "p")
		c.StorageClass, c.SSE, c.SSEKMSKeyID = bad.StorageClass, bad.SSE, bad.SSEKMSKeyID
		if _, err := s3.New(ctx, c); err == nil || !storage.IsPermanent(err) {
			t.Errorf("%+v: %v, want a permanent configuration error", bad, err)
		}
	}
	c := config(srv, "sclass", "p")
	c.SSE, c.SSEKMSKeyID = "aws:kms", "arn:aws:kms:us-east-1:111122223333:key/test"
	if _, err := s3.New(ctx, c); err != nil {
		t.Fatalf("aws:kms with a key id: %v", err)
	}
}
