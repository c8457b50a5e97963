package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/pgharbor/pgharbor/storage"
)

const (
	// DefaultPartSize is the multipart part size when Config.PartSize is 0.
	DefaultPartSize = 16 << 20
	// MinPartSize is the smallest part S3 accepts (except for the last part).
	MinPartSize = 5 << 20
	// MaxPartSize is the largest part S3 accepts.
	MaxPartSize = 5 << 30
	// DefaultConcurrency is the number of parts uploaded at once when Config.Concurrency is 0.
	DefaultConcurrency = 4
	// maxParts is S3's limit on parts per multipart upload.
	maxParts = 10000
	// dialTimeout bounds TCP connects so that an unreachable endpoint fails fast.
	dialTimeout = 10 * time.Second
)

// Config says where the repository lives and how to reach it.
type Config struct {
	Bucket string
	// Prefix is the root inside the bucket ("" for the whole bucket); slashes at either end
	// are ignored.
	Prefix string
	// Endpoint is the base URL of an S3-compatible server, e.g. "http://127.0.0.1:7070";
	// empty means AWS.
	Endpoint string
	// Region defaults to the SDK's (AWS_REGION, shared config), then "us-east-1".
	Region string
	// PathStyle addresses buckets as endpoint/bucket rather than bucket.endpoint; most
	// S3-compatible servers need it.
	PathStyle bool
	// AccessKeyID and SecretAccessKey (and SessionToken) are used when set; otherwise the
	// SDK's default chain (environment, shared config and credentials files, SSO, instance
	// role) provides credentials.
	AccessKeyID, SecretAccessKey, SessionToken string
	// PartSize is the multipart part size, DefaultPartSize if 0, at least MinPartSize.
	// Objects up to PartSize take one PutObject; objects up to 10,000 parts are supported.
	PartSize int64
	// Concurrency is the number of parts in flight per Put, DefaultConcurrency if 0.
	Concurrency int
	// StorageClass of new objects (STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR, …); empty
	// means the bucket's default. Classes whose objects need a restore before they can be
	// read (GLACIER, DEEP_ARCHIVE) are refused: WAL fetch and restore must read at once.
	StorageClass string
	// SSE is the server-side encryption of new objects: "AES256" (S3-managed keys),
	// "aws:kms" or "aws:kms:dsse" (KMS, with SSEKMSKeyID or the account's default key);
	// empty leaves it to the bucket's default encryption. pgharbor's own encryption
	// applies either way.
	SSE         string
	SSEKMSKeyID string
}

// checkObjectSettings validates the storage class and server-side encryption settings.
func checkObjectSettings(cfg Config) error {
	if c := cfg.StorageClass; c != "" {
		switch types.StorageClass(c) {
		case types.StorageClassGlacier, types.StorageClassDeepArchive:
			return fmt.Errorf("s3: storage class %s needs a restore before an object can be read, so WAL fetch and restore would fail; use GLACIER_IR, STANDARD_IA or a lifecycle rule for old backups", c)
		}
		if !slices.Contains(types.StorageClass("").Values(), types.StorageClass(c)) {
			return fmt.Errorf("s3: unknown storage class %q (one of %v)", c, types.StorageClass("").Values())
		}
	}
	switch cfg.SSE {
	case "", string(types.ServerSideEncryptionAes256):
		if cfg.SSEKMSKeyID != "" {
			return errors.New("s3: sse_kms_key_id needs sse: aws:kms (or aws:kms:dsse)")
		}
	case string(types.ServerSideEncryptionAwsKms), string(types.ServerSideEncryptionAwsKmsDsse):
	default:
		return fmt.Errorf("s3: sse %q: want AES256, aws:kms or aws:kms:dsse", cfg.SSE)
	}
	return nil
}

// Backend is an S3 bucket (or a prefix in one) as a storage.Backend.
type Backend struct {
	client      *s3.Client
	httpClient  aws.HTTPClient
	bucket      string
	prefix      string // "" or "dir/sub"; keys are prefix + "/" + key
	endpoint    string // for messages
	partSize    int64
	concurrency int
	bufs        bufferPool
	checksum    types.ChecksumAlgorithm // for multipart uploads; "" when checksums are off
	bucketOK    atomic.Bool             // a listing has seen the bucket
	class       types.StorageClass      // "" for the bucket's default
	sse         types.ServerSideEncryption
	kmsKey      *string
}

var _ storage.Backend = (*Backend)(nil)

// New returns a Backend for cfg. It checks the configuration and resolves credentials
// settings but does not contact the server; the first operation reports an unreachable
// endpoint, a missing bucket or rejected credentials.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.Bucket == "" {
		return nil, storage.Permanent(errors.New("s3: no bucket configured"))
	}
	if (cfg.AccessKeyID == "") != (cfg.SecretAccessKey == "") {
		return nil, storage.Permanent(errors.New("s3: set both the access key id and the secret access key, or neither to use the AWS default credential chain"))
	}
	endpoint := "AWS S3"
	if cfg.Endpoint != "" {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, storage.Permanent(fmt.Errorf("s3: endpoint %q must be an http:// or https:// URL", cfg.Endpoint))
		}
		endpoint = cfg.Endpoint
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultPartSize
	}
	if cfg.PartSize < MinPartSize || cfg.PartSize > MaxPartSize {
		return nil, storage.Permanent(fmt.Errorf("s3: part size %d is outside the S3 limits of %d to %d bytes", cfg.PartSize, MinPartSize, MaxPartSize))
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if err := checkObjectSettings(cfg); err != nil {
		return nil, storage.Permanent(err)
	}

	// A buildable client, so that the SDK can still add AWS_CA_BUNDLE or ca_bundle roots.
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = dialTimeout }).
		WithTransportOptions(func(tr *http.Transport) {
			tr.TLSHandshakeTimeout = dialTimeout
			tr.MaxIdleConnsPerHost = 4 * cfg.Concurrency
		})
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
		// Uploads still carry a CRC32 the server verifies. Whole-object response checksums
		// never cover ranged or multipart reads, and the codec above authenticates every byte.
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: load AWS configuration: %w", err)
	}
	if bc, ok := awsCfg.HTTPClient.(*awshttp.BuildableClient); ok {
		awsCfg.HTTPClient = bc.Freeze() // a plain *http.Client whose idle connections Close can drop
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
	})
	checksum := types.ChecksumAlgorithmCrc32 // what the SDK computes for PutObject too
	if awsCfg.RequestChecksumCalculation == aws.RequestChecksumCalculationWhenRequired {
		checksum = ""
	}
	return &Backend{
		client:      client,
		httpClient:  awsCfg.HTTPClient,
		bucket:      cfg.Bucket,
		prefix:      strings.Trim(cfg.Prefix, "/"),
		endpoint:    endpoint,
		partSize:    cfg.PartSize,
		concurrency: cfg.Concurrency,
		bufs:        newBufferPool(int(cfg.PartSize)),
		checksum:    checksum,
		class:       types.StorageClass(cfg.StorageClass),
		sse:         types.ServerSideEncryption(cfg.SSE),
		kmsKey:      optString(cfg.SSEKMSKeyID),
	}, nil
}

func optString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Location implements storage.Backend: "s3://bucket/prefix".
func (b *Backend) Location() string {
	if b.prefix == "" {
		return "s3://" + b.bucket
	}
	return "s3://" + b.bucket + "/" + b.prefix
}

// Close implements storage.Backend; it drops idle connections.
func (b *Backend) Close() error {
	if c, ok := b.httpClient.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
	return nil
}

// objectKey maps a storage key to the S3 object key.
func (b *Backend) objectKey(key string) string {
	if b.prefix == "" {
		return key
	}
	return b.prefix + "/" + key
}

func (b *Backend) url(key string) string { return b.Location() + "/" + key }

// Get implements storage.Backend.
func (b *Backend) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := storage.ValidateKey(key); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, storage.Permanent(fmt.Errorf("get %s: negative offset %d", b.url(key), offset))
	}
	if length == 0 {
		if _, err := b.Stat(ctx, key); err != nil {
			return nil, err
		}
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	in := &s3.GetObjectInput{Bucket: &b.bucket, Key: aws.String(b.objectKey(key))}
	switch {
	case length > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", offset, offset+length-1))
	case offset > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", offset))
	}
	out, err := b.client.GetObject(ctx, in)
	if err != nil {
		if in.Range != nil && (apiCode(err) == "InvalidRange" || httpStatus(err) == http.StatusRequestedRangeNotSatisfiable) {
			// The range starts at or after the end: empty, if the object exists at all.
			if _, serr := b.Stat(ctx, key); serr != nil {
				return nil, serr
			}
			return io.NopCloser(bytes.NewReader(nil)), nil
		}
		return nil, b.mapErr(ctx, "get", key, err)
	}
	return out.Body, nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := storage.ValidateKey(key); err != nil {
		return storage.ObjectInfo{}, err
	}
	out, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &b.bucket, Key: aws.String(b.objectKey(key))})
	if err != nil {
		return storage.ObjectInfo{}, b.mapErr(ctx, "stat", key, err)
	}
	return storage.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// List implements storage.Backend.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	root := ""
	if b.prefix != "" {
		root = b.prefix + "/"
	}
	p := s3.NewListObjectsV2Paginator(b.client, &s3.ListObjectsV2Input{Bucket: &b.bucket, Prefix: aws.String(root + prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return b.mapErr(ctx, "list", prefix+"*", err)
		}
		for _, o := range page.Contents {
			k, ok := strings.CutPrefix(aws.ToString(o.Key), root)
			if !ok || !strings.HasPrefix(k, prefix) {
				continue
			}
			if err := fn(storage.ObjectInfo{Key: k, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete implements storage.Backend.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	_, err := b.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &b.bucket, Key: aws.String(b.objectKey(key))})
	if err != nil {
		if err := b.mapErr(ctx, "delete", key, err); !errors.Is(err, storage.ErrNotFound) {
			return err
		}
	}
	return nil
}

// mapErr translates an SDK error into pgharbor's vocabulary, with op and the object's URL.
func (b *Backend) mapErr(ctx context.Context, op, key string, err error) error {
	where := op + " " + b.url(key)
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	code, status := apiCode(err), httpStatus(err)
	switch {
	case code == "NoSuchBucket":
		return b.noBucket(where, err)
	case code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || code == "InvalidToken" ||
		code == "XAdminUserNotFound": // Versity's 404 for an unknown access key
		return storage.Permanent(fmt.Errorf("%s: credentials rejected by %s (%s): check the access key and secret: %w", where, b.endpoint, code, err))
	case code == "NoSuchKey" || code == "NotFound" || status == http.StatusNotFound:
		// A HEAD response has no body, so a missing bucket (or, on Versity, an unknown access
		// key) looks like a missing key. Ask once with a request whose errors carry a code.
		if op == "stat" && !b.bucketOK.Load() {
			_, lerr := b.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &b.bucket, MaxKeys: aws.Int32(1)})
			if lerr == nil {
				b.bucketOK.Store(true)
			} else if c := apiCode(lerr); c == "NoSuchBucket" || c == "XAdminUserNotFound" || c == "InvalidAccessKeyId" {
				return b.mapErr(ctx, op, key, lerr)
			}
		}
		return fmt.Errorf("%s: %w", where, storage.ErrNotFound)
	case code == "PreconditionFailed" || code == "ConditionalRequestConflict" ||
		status == http.StatusPreconditionFailed:
		return fmt.Errorf("%s: %w", where, storage.ErrExists)
	case code == "AccessDenied" || status == http.StatusForbidden:
		return storage.Permanent(fmt.Errorf("%s: access denied by %s: check the credentials and the bucket policy: %w", where, b.endpoint, err))
	case code == "InvalidBucketName" || code == "InvalidArgument" || code == "EntityTooLarge":
		return storage.Permanent(fmt.Errorf("%s: %w", where, err))
	case isTransport(err):
		return fmt.Errorf("%s: cannot reach S3 endpoint %s: %w", where, b.endpoint, err)
	}
	return fmt.Errorf("%s: %w", where, err)
}

func (b *Backend) noBucket(where string, err error) error {
	return storage.Permanent(fmt.Errorf("%s: bucket %q does not exist at %s: create it or fix the bucket name: %w", where, b.bucket, b.endpoint, err))
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func httpStatus(err error) int {
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// isTransport reports whether err happened below HTTP: no connection, reset, early EOF.
func isTransport(err error) bool {
	if httpStatus(err) != 0 {
		return false
	}
	var se *smithyhttp.RequestSendError
	var ne net.Error
	return errors.As(err, &se) || errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe")
}
