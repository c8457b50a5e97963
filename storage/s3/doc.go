// Package s3 is the storage.Backend driver for Amazon S3 and S3-compatible servers
// (tested against the Versity S3 gateway), built on aws-sdk-go-v2.
//
// Glossary:
//   - bucket: the S3 bucket that holds the repository; the driver never creates it.
//   - prefix: the folder inside the bucket that is the backend's root; keys are stored as
//     prefix + "/" + key, and List never sees objects outside it.
//   - part: one PartSize chunk of a streamed multipart upload. A Put keeps at most
//     Concurrency+1 parts in memory, so memory is bounded whatever the object size.
//
// Conditional writes (PutOptions.IfNotExists) use the real If-None-Match: * header, on
// PutObject for single-request uploads and on CompleteMultipartUpload for streamed ones, so
// among concurrent writers the server picks exactly one winner (the Versity gateway honours
// both and answers 412). There is no HEAD-then-PUT fallback for servers that ignore the
// header: it would be racy. A server that drops the connection instead of answering 412 is
// handled: after a transport error on a conditional Put, an existing key means ErrExists.
//
// The SDK's own retries are off: pgharbor's retry decorator owns retrying, and an SDK retry
// of a conditional PUT whose first attempt was applied would turn a success into ErrExists.
package s3
