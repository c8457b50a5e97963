package s3

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"golang.org/x/sync/errgroup"

	"github.com/pgharbor/pgharbor/storage"
)

// maxDeleteKeys is S3's limit on keys per DeleteObjects request.
const maxDeleteKeys = 1000

var _ storage.BatchDeleter = (*Backend)(nil)

// DeleteMany implements storage.BatchDeleter with DeleteObjects, up to 1,000 keys per
// request and Concurrency requests at a time. DeleteObjects answers 200 even when single
// keys fail, so every per-key error in the response is checked; NoSuchKey counts as deleted.
func (b *Backend) DeleteMany(ctx context.Context, keys []string) error {
	for _, k := range keys {
		if err := storage.ValidateKey(k); err != nil {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.concurrency)
	for start := 0; start < len(keys); start += maxDeleteKeys {
		chunk := keys[start:min(start+maxDeleteKeys, len(keys))]
		g.Go(func() error { return b.deleteChunk(gctx, chunk) })
	}
	return g.Wait()
}

func (b *Backend) deleteChunk(ctx context.Context, keys []string) error {
	objs := make([]types.ObjectIdentifier, len(keys))
	for i, k := range keys {
		objs[i] = types.ObjectIdentifier{Key: aws.String(b.objectKey(k))}
	}
	out, err := b.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
		Bucket: &b.bucket,
		Delete: &types.Delete{Objects: objs, Quiet: aws.Bool(true)},
	})
	if err != nil {
		what := keys[0]
		if len(keys) > 1 {
			what += fmt.Sprintf(" (and %d more keys)", len(keys)-1)
		}
		return b.mapErr(ctx, "delete", what, err)
	}
	var errs []error
	for _, e := range out.Errors {
		code := aws.ToString(e.Code)
		if code == "NoSuchKey" {
			continue
		}
		key := aws.ToString(e.Key)
		if b.prefix != "" {
			key = strings.TrimPrefix(key, b.prefix+"/")
		}
		err := fmt.Errorf("delete %s: %s: %s", b.url(key), code, aws.ToString(e.Message))
		if code == "AccessDenied" {
			err = storage.Permanent(err)
		}
		errs = append(errs, err)
		if len(errs) == 10 {
			errs = append(errs, fmt.Errorf("… and %d more keys not deleted", len(out.Errors)-10))
			break
		}
	}
	return errors.Join(errs...)
}
