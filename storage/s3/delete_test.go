package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pgharbor/pgharbor/internal/testserver"
	"github.com/pgharbor/pgharbor/storage"
)

// TestDeleteManyBatchesAndChecksPerKeyErrors runs DeleteMany against the gateway through a
// proxy that counts DeleteObjects requests and their keys and, for one request, rewrites
// the gateway's (successful) answer the way S3 reports keys it could not delete: with 200
// and an <Error> per key. The driver must batch by 1,000, report the failed key as an error
// (permanent for AccessDenied), and ignore NoSuchKey.
func TestDeleteManyBatchesAndChecksPerKeyErrors(t *testing.T) {
	srv := testserver.StartVersity(t)
	createBucket(t, srv, "batch")
	target, _ := url.Parse(srv.Endpoint)
	var requests, keys atomic.Int64
	var inject atomic.Bool
	keyRE := regexp.MustCompile(`<Key>([^<]*)</Key>`)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method != http.MethodPost || !resp.Request.URL.Query().Has("delete") || !inject.Load() {
			return nil
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		body := `<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">` +
			`<Error><Key>p/denied/1</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>` +
			`<Error><Key>p/denied/2</Key><Code>NoSuchKey</Code><Message>gone</Message></Error></DeleteResult>`
		resp.Body = io.NopCloser(strings.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
		resp.Header.Del("x-amz-checksum-crc32")
		return nil
	}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Query().Has("delete") {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			requests.Add(1)
			keys.Add(int64(len(keyRE.FindAll(body, -1))))
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	cfg := config(srv, "batch", "p")
	cfg.Endpoint = front.URL
	b := newBackend(t, cfg)
	ctx := context.Background()

	var all []string
	for i := 0; i < 2500; i++ {
		all = append(all, fmt.Sprintf("many/%05d", i))
	}
	for _, k := range all[:30] {
		if err := b.Put(ctx, k, strings.NewReader("x"), storage.PutOptions{Size: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := storage.DeleteMany(ctx, b, all, 0); err != nil {
		t.Fatal(err)
	}
	if requests.Load() != 3 || keys.Load() != 2500 {
		t.Fatalf("2,500 keys took %d DeleteObjects requests carrying %d keys, want 3 and 2500", requests.Load(), keys.Load())
	}
	var left int
	b.List(ctx, "many/", func(storage.ObjectInfo) error { left++; return nil })
	if left != 0 {
		t.Fatalf("%d objects left", left)
	}

	inject.Store(true)
	err := storage.DeleteMany(ctx, b, []string{"denied/1", "denied/2"}, 0)
	if err == nil || !strings.Contains(err.Error(), "denied/1") || !strings.Contains(err.Error(), "AccessDenied") || strings.Contains(err.Error(), "denied/2") {
		t.Fatalf("per-key errors: %v", err)
	}
	if !storage.IsPermanent(err) {
		t.Errorf("AccessDenied for a key is not permanent: %v", err)
	}
	var pe *storage.PermanentError
	if !errors.As(err, &pe) {
		t.Errorf("no PermanentError in %v", err)
	}
}
