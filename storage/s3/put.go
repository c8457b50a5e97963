package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"

	"github.com/pgharbor/pgharbor/storage"
)

// cleanupTimeout bounds the requests that run even when the Put's ctx is cancelled: creating
// a multipart upload and aborting it.
const cleanupTimeout = 30 * time.Second

// Put implements storage.Backend. A body that fits in one part (known from opts.Size, or
// found by reading one part's worth) takes a single PutObject; a larger one is streamed as a
// multipart upload with Concurrency parts in flight. opts.Size is only a hint: the object is
// exactly what r yields.
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, opts storage.PutOptions) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put %s: %w", b.url(key), err)
	}
	if opts.Size >= 0 && opts.Size <= b.partSize {
		return b.putSized(ctx, key, r, opts)
	}
	return b.putStream(ctx, key, r, opts)
}

// putSized reads a body announced as fitting in one part; if r has more than announced,
// it falls back to streaming.
func (b *Backend) putSized(ctx context.Context, key string, r io.Reader, opts storage.PutOptions) error {
	var buf []byte
	if opts.Size > b.partSize/2 {
		bp := b.bufs.get()
		defer b.bufs.put(bp)
		buf = (*bp)[:opts.Size]
	} else {
		buf = make([]byte, opts.Size)
	}
	n, err := io.ReadFull(r, buf)
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return b.putObject(ctx, key, buf[:n], opts)
	case err != nil:
		return fmt.Errorf("put %s: read body: %w", b.url(key), err)
	}
	var one [1]byte
	m, err := io.ReadFull(r, one[:])
	switch {
	case errors.Is(err, io.EOF):
		return b.putObject(ctx, key, buf, opts)
	case err != nil:
		return fmt.Errorf("put %s: read body: %w", b.url(key), err)
	}
	return b.putStream(ctx, key, io.MultiReader(bytes.NewReader(buf), bytes.NewReader(one[:m]), r), opts)
}

// putStream uploads a body of unknown size.
func (b *Backend) putStream(ctx context.Context, key string, r io.Reader, opts storage.PutOptions) error {
	first := b.bufs.get()
	n, err := io.ReadFull(r, *first)
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		defer b.bufs.put(first)
		return b.putObject(ctx, key, (*first)[:n], opts)
	case err != nil:
		b.bufs.put(first)
		return fmt.Errorf("put %s: read body: %w", b.url(key), err)
	}
	return b.multipart(ctx, key, first, r, opts)
}

func (b *Backend) putObject(ctx context.Context, key string, data []byte, opts storage.PutOptions) error {
	in := &s3.PutObjectInput{
		Bucket:        &b.bucket,
		Key:           aws.String(b.objectKey(key)),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
		StorageClass:  b.class, ServerSideEncryption: b.sse, SSEKMSKeyId: b.kmsKey,
	}
	if opts.IfNotExists {
		in.IfNoneMatch = aws.String("*")
	}
	if _, err := b.client.PutObject(ctx, in); err != nil {
		return b.putErr(ctx, key, opts, err)
	}
	return nil
}

// multipart streams r after the full first part; it owns first. Any failure aborts the
// upload, so nothing is stored.
func (b *Backend) multipart(ctx context.Context, key string, first *[]byte, r io.Reader, opts storage.PutOptions) (err error) {
	okey := b.objectKey(key)
	// Not cancellable: a Create the server applied but whose answer we dropped would leave an
	// upload we cannot abort.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	created, err := b.client.CreateMultipartUpload(cctx, &s3.CreateMultipartUploadInput{
		Bucket: &b.bucket, Key: &okey, ChecksumAlgorithm: b.checksum,
		StorageClass: b.class, ServerSideEncryption: b.sse, SSEKMSKeyId: b.kmsKey,
	})
	cancel()
	if err != nil {
		b.bufs.put(first)
		return b.mapErr(ctx, "put", key, err)
	}
	uploadID := created.UploadId
	defer func() {
		if err != nil {
			b.abort(ctx, okey, uploadID)
		}
	}()

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.concurrency) // plus the part being read: Concurrency+1 buffers at most
	var (
		mu    sync.Mutex
		parts []types.CompletedPart
	)
	upload := func(num int32, bp *[]byte, data []byte) {
		g.Go(func() error {
			defer b.bufs.put(bp)
			out, err := b.client.UploadPart(gctx, &s3.UploadPartInput{
				Bucket: &b.bucket, Key: &okey, UploadId: uploadID, PartNumber: aws.Int32(num),
				Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
				ChecksumAlgorithm: b.checksum,
			})
			if err != nil {
				return fmt.Errorf("part %d: %w", num, err)
			}
			mu.Lock()
			parts = append(parts, types.CompletedPart{
				PartNumber: aws.Int32(num), ETag: out.ETag,
				ChecksumCRC32: out.ChecksumCRC32, ChecksumCRC32C: out.ChecksumCRC32C,
				ChecksumCRC64NVME: out.ChecksumCRC64NVME, ChecksumSHA1: out.ChecksumSHA1, ChecksumSHA256: out.ChecksumSHA256,
			})
			mu.Unlock()
			return nil
		})
	}

	var readErr error
	bp, size, last := first, len(*first), false
	for num := int32(1); ; num++ {
		upload(num, bp, (*bp)[:size])
		if last || gctx.Err() != nil {
			break
		}
		bp = b.bufs.get()
		size, err = io.ReadFull(r, *bp)
		last = errors.Is(err, io.ErrUnexpectedEOF)
		switch {
		case errors.Is(err, io.EOF):
		case err != nil && !last:
			readErr = fmt.Errorf("put %s: read body: %w", b.url(key), err)
		case num == maxParts:
			readErr = storage.Permanent(fmt.Errorf("put %s: object is larger than %d parts of %d bytes: raise the part size", b.url(key), maxParts, b.partSize))
		default:
			continue
		}
		// End of body or failure. Parts in flight finish: an abort racing a part the server
		// is still receiving may not stick.
		b.bufs.put(bp)
		break
	}
	if werr := g.Wait(); readErr == nil && werr != nil {
		return b.mapErr(ctx, "put", key, werr)
	}
	if readErr != nil {
		return readErr
	}

	slices.SortFunc(parts, func(x, y types.CompletedPart) int { return int(*x.PartNumber - *y.PartNumber) })
	in := &s3.CompleteMultipartUploadInput{
		Bucket: &b.bucket, Key: &okey, UploadId: uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	}
	if opts.IfNotExists {
		in.IfNoneMatch = aws.String("*")
	}
	if _, err := b.client.CompleteMultipartUpload(ctx, in); err != nil {
		return b.putErr(ctx, key, opts, err)
	}
	return nil
}

// abort removes a failed multipart upload and its parts. A part the server was still
// receiving can outlive an abort (S3 documents this too, Versity answers 500 meanwhile), so it
// aborts until ListParts says the upload is gone. An upload left behind is invisible to
// readers; a lifecycle rule for incomplete multipart uploads removes it.
func (b *Backend) abort(ctx context.Context, okey string, uploadID *string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	for i := 0; ; i++ {
		_, err := b.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &b.bucket, Key: &okey, UploadId: uploadID})
		if err == nil || apiCode(err) == "NoSuchUpload" {
			_, err = b.client.ListParts(ctx, &s3.ListPartsInput{Bucket: &b.bucket, Key: &okey, UploadId: uploadID, MaxParts: aws.Int32(1)})
			if apiCode(err) == "NoSuchUpload" {
				return
			}
		}
		if i == 5 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(50<<i) * time.Millisecond):
		}
	}
}

// putErr maps a failed upload's error. A server may drop the connection instead of answering
// 412 to a conditional PUT (seen with large bodies); if the key exists after such a transport
// error, report ErrExists. Our own attempt cannot be the one that created it unless the server
// applied the write and the response was lost; pgharbor's callers compare contents on ErrExists.
func (b *Backend) putErr(ctx context.Context, key string, opts storage.PutOptions, err error) error {
	if opts.IfNotExists && ctx.Err() == nil && isTransport(err) {
		if _, serr := b.Stat(ctx, key); serr == nil {
			return fmt.Errorf("put %s: %w (the server dropped the connection instead of answering 412: %v)", b.url(key), storage.ErrExists, err)
		}
	}
	return b.mapErr(ctx, "put", key, err)
}

// bufferPool recycles part buffers so that a stream of Puts does not churn the heap.
type bufferPool struct {
	pool *sync.Pool
}

func newBufferPool(size int) bufferPool {
	return bufferPool{pool: &sync.Pool{New: func() any {
		b := make([]byte, size)
		return &b
	}}}
}

func (p bufferPool) get() *[]byte  { return p.pool.Get().(*[]byte) }
func (p bufferPool) put(b *[]byte) { p.pool.Put(b) }

// RemoveTemp implements storage.TempRemover: it aborts the multipart uploads under the
// backend's prefix that were started before cutoff. Put aborts its own when it fails, but a
// process killed in the middle of one leaves it behind: invisible to readers, its parts
// stored (and billed) until aborted or a lifecycle rule for incomplete uploads removes them.
func (b *Backend) RemoveTemp(ctx context.Context, cutoff time.Time) (storage.TempRemoved, error) {
	var n storage.TempRemoved
	root := ""
	if b.prefix != "" {
		root = b.prefix + "/"
	}
	in := &s3.ListMultipartUploadsInput{Bucket: &b.bucket, Prefix: aws.String(root)}
	for {
		out, err := b.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return n, b.mapErr(ctx, "list multipart uploads", "*", err)
		}
		for _, u := range out.Uploads {
			if u.Initiated == nil || !u.Initiated.Before(cutoff) || !strings.HasPrefix(aws.ToString(u.Key), root) {
				continue
			}
			size, err := b.uploadedBytes(ctx, u.Key, u.UploadId)
			if err != nil {
				return n, err
			}
			b.abort(ctx, aws.ToString(u.Key), u.UploadId)
			n.Count++
			n.Bytes += size
		}
		if !aws.ToBool(out.IsTruncated) {
			return n, nil
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
}

// uploadedBytes is the size of the parts an unfinished multipart upload holds.
func (b *Backend) uploadedBytes(ctx context.Context, okey, uploadID *string) (int64, error) {
	var size int64
	in := &s3.ListPartsInput{Bucket: &b.bucket, Key: okey, UploadId: uploadID}
	for {
		out, err := b.client.ListParts(ctx, in)
		if err != nil {
			if apiCode(err) == "NoSuchUpload" {
				return size, nil // finished or aborted meanwhile
			}
			return size, b.mapErr(ctx, "list parts", aws.ToString(okey), err)
		}
		for _, p := range out.Parts {
			size += aws.ToInt64(p.Size)
		}
		if !aws.ToBool(out.IsTruncated) {
			return size, nil
		}
		in.PartNumberMarker = out.NextPartNumberMarker
	}
}
