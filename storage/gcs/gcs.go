// Package gcs is the Google Cloud Storage driver for storage.Backend.
//
// Glossary:
//   - bucket: the GCS bucket holding the repository; it must exist before New.
//   - prefix: an optional folder inside the bucket; every key is stored as prefix + "/" + key.
//   - object name: the full GCS name of a key (prefix included).
//   - chunk: the unit of a resumable upload; the Writer buffers one chunk in memory.
//
// The driver never retries: the Go client is told RetryNever, because retry is the job of
// pgharbor's retry decorator, which knows which operations are safe to repeat. A retried
// conditional write whose first attempt landed would otherwise report ErrExists for the
// caller's own object.
//
// A missing bucket is reported by New (and by Put and List) as a permanent error. Reads
// cannot tell it apart: GCS answers a read in a missing bucket with the same 404 as a missing
// object, and the Go client reports both as ErrObjectNotExist, so Get and Stat return
// ErrNotFound if the bucket disappears after New.
//
// Emulators: set Config.Endpoint (e.g. "http://127.0.0.1:4443/storage/v1/") or the
// STORAGE_EMULATOR_HOST environment variable, which the Go client honours itself; both turn
// authentication off.
package gcs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	gcs "cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"

	"github.com/pgharbor/pgharbor/storage"
)

// DefaultChunkSize is the resumable-upload chunk used when Config.ChunkSize is zero. Each
// Put in flight holds at most one chunk in memory.
const DefaultChunkSize = 16 << 20

// minChunk is the granularity GCS requires for resumable-upload chunks.
const minChunk = 256 << 10

// Config says where the repository lives and how to reach it.
type Config struct {
	// Bucket is the name of an existing bucket.
	Bucket string
	// Prefix is an optional folder inside the bucket, without leading or trailing "/".
	Prefix string
	// Endpoint overrides the JSON API endpoint, for emulators
	// ("http://127.0.0.1:4443/storage/v1/"); setting it disables authentication.
	Endpoint string
	// CredentialsFile is a JSON credentials file (service account, authorized user,
	// impersonated service account or external account); empty means Application
	// Default Credentials.
	CredentialsFile string
	// ChunkSize is the upload chunk size in bytes; 0 means DefaultChunkSize.
	ChunkSize int
	// StorageClass of new objects (STANDARD, NEARLINE, COLDLINE, ARCHIVE); empty means the
	// bucket's default. Every class reads at once; the colder ones charge per read and
	// for early deletion, which expire may cause.
	StorageClass string
	// KMSKeyName encrypts new objects with this Cloud KMS key (customer-managed keys,
	// projects/…/locations/…/keyRings/…/cryptoKeys/…); empty means the bucket's default.
	KMSKeyName string
}

// Backend stores objects in one GCS bucket under an optional prefix.
type Backend struct {
	client    *gcs.Client
	bucket    *gcs.BucketHandle
	name      string // bucket name
	prefix    string // "" or "folder/" (with the slash)
	chunkSize int
	class     string
	kmsKey    string
}

var _ storage.Backend = (*Backend)(nil)

// New connects to cfg.Bucket and checks, with one small listing, that the bucket exists and
// is readable, so that a wrong name, missing permission or unreachable endpoint fails here
// with a clear message rather than at the first backup.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.Bucket == "" {
		return nil, storage.Permanent(errors.New("gcs: no bucket configured"))
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if err := storage.ValidateKey(prefix); err != nil {
			return nil, fmt.Errorf("gcs: prefix: %w", err)
		}
		prefix += "/"
	}
	switch cfg.StorageClass {
	case "", "STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE":
	default:
		return nil, storage.Permanent(fmt.Errorf("gcs: storage class %q: want STANDARD, NEARLINE, COLDLINE or ARCHIVE", cfg.StorageClass))
	}
	chunk := cfg.ChunkSize
	if chunk <= 0 {
		chunk = DefaultChunkSize
	}
	var opts []option.ClientOption
	switch {
	case cfg.Endpoint != "":
		opts = append(opts, option.WithEndpoint(cfg.Endpoint), option.WithoutAuthentication())
	case cfg.CredentialsFile != "":
		o, err := credentialsOption(cfg.CredentialsFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	client, err := gcs.NewClient(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("gcs: create client for gs://%s: %w", cfg.Bucket, err)
	}
	client.SetRetry(gcs.WithPolicy(gcs.RetryNever))
	b := &Backend{client: client, bucket: client.Bucket(cfg.Bucket), name: cfg.Bucket, prefix: prefix, chunkSize: chunk,
		class: cfg.StorageClass, kmsKey: cfg.KMSKeyName}

	it := b.bucket.Objects(ctx, &gcs.Query{Prefix: prefix})
	it.PageInfo().MaxSize = 1
	if _, err := it.Next(); err != nil && !errors.Is(err, iterator.Done) {
		client.Close()
		return nil, b.fail("open", "", err)
	}
	return b, nil
}

// credentialsOption loads a credentials file with the type it declares, the loading the
// auth library recommends over the deprecated untyped WithCredentialsFile.
func credentialsOption(path string) (option.ClientOption, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, storage.Permanent(fmt.Errorf("gcs: read credentials file: %w", err))
	}
	var f struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, storage.Permanent(fmt.Errorf("gcs: credentials file %s is not JSON: %w", path, err))
	}
	types := map[string]option.CredentialsType{
		"service_account":              option.ServiceAccount,
		"authorized_user":              option.AuthorizedUser,
		"impersonated_service_account": option.ImpersonatedServiceAccount,
		"external_account":             option.ExternalAccount,
	}
	t, ok := types[f.Type]
	if !ok {
		return nil, storage.Permanent(fmt.Errorf("gcs: credentials file %s has unsupported type %q", path, f.Type))
	}
	return option.WithAuthCredentialsFile(t, path), nil
}

// Location implements storage.Backend.
func (b *Backend) Location() string {
	return strings.TrimSuffix("gs://"+b.name+"/"+b.prefix, "/")
}

// Close implements storage.Backend.
func (b *Backend) Close() error { return b.client.Close() }

// url names key for messages.
func (b *Backend) url(key string) string { return "gs://" + b.name + "/" + b.prefix + key }

// Put implements storage.Backend. The body is streamed through the client's resumable
// Writer; the object appears only when the final chunk is committed, so a failed reader or
// a cancelled ctx abandons the upload session and stores nothing.
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, opts storage.PutOptions) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	obj := b.bucket.Object(b.prefix + key)
	if opts.IfNotExists {
		obj = obj.If(gcs.Conditions{DoesNotExist: true})
	}
	// Cancelling wctx is how an upload is abandoned (CloseWithError is deprecated).
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := obj.NewWriter(wctx)
	w.ContentType = "application/octet-stream"
	w.StorageClass, w.KMSKeyName = b.class, b.kmsKey
	w.ChunkSize = b.chunkSize
	if opts.Size >= 0 && opts.Size < int64(b.chunkSize) {
		// A body known to fit one chunk goes up in a single request; a smaller buffer keeps
		// many concurrent small Puts cheap. Size+1 lets the Writer see EOF in the first chunk.
		w.ChunkSize = int((opts.Size + minChunk) / minChunk * minChunk)
	}
	src := &errReader{r: r}
	if _, err := io.Copy(w, src); err != nil {
		// Abandon the upload without Close: Close would end the body with EOF, and a racing
		// upload goroutine could commit the truncated object. Cancelling makes the Writer
		// close its pipe with an error and aborts any request in flight.
		cancel()
		if src.err != nil {
			return fmt.Errorf("put %s: read body: %w", b.url(key), src.err)
		}
		return b.putFailed(ctx, key, opts, err)
	}
	if err := w.Close(); err != nil {
		return b.putFailed(ctx, key, opts, err)
	}
	return nil
}

// putFailed translates an upload error. A server that refuses a conditional upload early
// may close the connection while the body is still being sent, so the client sees a reset
// instead of 412; when the key now exists the refusal is reported as ErrExists.
func (b *Backend) putFailed(ctx context.Context, key string, opts storage.PutOptions, err error) error {
	if opts.IfNotExists && ctx.Err() == nil && !isStatus(err, http.StatusPreconditionFailed) {
		if _, serr := b.bucket.Object(b.prefix + key).Attrs(ctx); serr == nil {
			return fmt.Errorf("put %s: %w (upload failed: %w)", b.url(key), storage.ErrExists, err)
		}
	}
	return b.fail("put", key, err)
}

// errReader remembers the body's error, so Put can tell a failing source from a failing upload.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, storage.Permanent(fmt.Errorf("get %s: negative offset %d", b.url(key), offset))
	}
	obj := b.bucket.Object(b.prefix + key)
	rc, err := obj.NewRangeReader(ctx, offset, length)
	if isStatus(err, http.StatusRequestedRangeNotSatisfiable) {
		// GCS refuses a range starting at or past the end; the contract cuts it to empty.
		if _, serr := obj.Attrs(ctx); serr != nil {
			return nil, b.fail("get", key, serr)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	if err != nil {
		return nil, b.fail("get", key, err)
	}
	return rc, nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := storage.ValidateKey(key); err != nil {
		return storage.ObjectInfo{}, err
	}
	attrs, err := b.bucket.Object(b.prefix + key).Attrs(ctx)
	if err != nil {
		return storage.ObjectInfo{}, b.fail("stat", key, err)
	}
	return storage.ObjectInfo{Key: key, Size: attrs.Size, ModTime: attrs.Updated}, nil
}

// List implements storage.Backend. GCS lists object names in lexical order.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	q := &gcs.Query{Prefix: b.prefix + prefix}
	if err := q.SetAttrSelection([]string{"Name", "Size", "Updated"}); err != nil {
		return fmt.Errorf("list %s: %w", b.url(prefix), err)
	}
	it := b.bucket.Objects(ctx, q)
	for {
		attrs, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return nil
		}
		if err != nil {
			return b.fail("list", prefix, err)
		}
		key, ok := strings.CutPrefix(attrs.Name, b.prefix)
		// Names that are not valid keys (console "folder/" placeholders) cannot be
		// addressed through the Backend, so they are not listed.
		if !ok || storage.ValidateKey(key) != nil {
			continue
		}
		if err := fn(storage.ObjectInfo{Key: key, Size: attrs.Size, ModTime: attrs.Updated}); err != nil {
			return err
		}
	}
}

// Delete implements storage.Backend.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	err := b.bucket.Object(b.prefix + key).Delete(ctx)
	if err != nil && !errors.Is(err, gcs.ErrObjectNotExist) {
		return b.fail("delete", key, err)
	}
	return nil
}

// fail translates a client error into pgharbor's sentinels and permanent errors.
func (b *Backend) fail(op, key string, err error) error {
	loc := b.url(key)
	var ge *googleapi.Error
	apiErr := errors.As(err, &ge)
	switch {
	case errors.Is(err, gcs.ErrBucketNotExist) || (op == "put" && isStatus(err, http.StatusNotFound)):
		return storage.Permanent(fmt.Errorf("%s %s: bucket %q does not exist; create it or fix the bucket name: %w", op, loc, b.name, err))
	case errors.Is(err, gcs.ErrObjectNotExist):
		return fmt.Errorf("%s %s: %w", op, loc, storage.ErrNotFound)
	case apiErr && ge.Code == http.StatusPreconditionFailed:
		return fmt.Errorf("%s %s: %w", op, loc, storage.ErrExists)
	case apiErr && (ge.Code == http.StatusUnauthorized || ge.Code == http.StatusForbidden):
		return storage.Permanent(fmt.Errorf("%s %s: access denied; check the credentials and their IAM roles on bucket %q: %w", op, loc, b.name, err))
	case apiErr && ge.Code == http.StatusBadRequest:
		return storage.Permanent(fmt.Errorf("%s %s: request rejected: %w", op, loc, err))
	}
	return fmt.Errorf("%s %s: %w", op, loc, err)
}

// isStatus reports whether err is a googleapi error with the given HTTP status.
func isStatus(err error, code int) bool {
	var ge *googleapi.Error
	return errors.As(err, &ge) && ge.Code == code
}
