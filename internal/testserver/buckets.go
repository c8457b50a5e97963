package testserver

import (
	"context"
	"testing"

	"cloud.google.com/go/storage"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"google.golang.org/api/option"
)

// CreateBucket makes a bucket on the S3 server.
func (v VersityServer) CreateBucket(t testing.TB, bucket string) {
	t.Helper()
	c := awss3.New(awss3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(v.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(v.AccessKey, v.SecretKey, ""),
	})
	if _, err := c.CreateBucket(context.Background(), &awss3.CreateBucketInput{Bucket: &bucket}); err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
}

// CreateBucket makes a bucket on fake-gcs-server.
func (f FakeGCS) CreateBucket(t testing.TB, bucket string) {
	t.Helper()
	c, err := storage.NewClient(context.Background(), option.WithEndpoint(f.Endpoint), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bucket(bucket).Create(context.Background(), "pgharbor-test", nil); err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
}
