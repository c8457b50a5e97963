package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/internal/secret"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/fs"
	"github.com/pgharbor/pgharbor/storage/gcs"
	"github.com/pgharbor/pgharbor/storage/retry"
	"github.com/pgharbor/pgharbor/storage/s3"
)

// openBackend builds the storage stack for the configured repository URL: the driver, then
// the retry decorator.
func (a *app) openBackend(ctx context.Context) (storage.Backend, error) {
	if a.clusterErr != nil {
		return nil, a.clusterErr
	}
	raw := a.cfg.Repo.URL
	if raw == "" {
		return nil, fmt.Errorf("no repository: set --repo, repo.url in the config file, or PGHARBOR_REPO_URL (file:///path, s3://bucket/prefix or gs://bucket/prefix)")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("repository URL %q: %w", raw, err)
	}
	prefix := strings.Trim(u.Path, "/")
	var b storage.Backend
	switch u.Scheme {
	case "file", "":
		p := u.Path
		if u.Scheme == "" {
			p = raw
		}
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("repository URL %q: file URLs need three slashes (file:///path)", raw)
		}
		b, err = fs.New(p)
	case "s3":
		s := a.cfg.S3
		b, err = s3.New(ctx, s3.Config{
			Bucket: u.Host, Prefix: prefix, Endpoint: s.Endpoint, Region: s.Region, PathStyle: s.PathStyle,
			AccessKeyID: s.AccessKeyID, SecretAccessKey: s.SecretAccessKey, SessionToken: s.SessionToken,
			PartSize: int64(s.PartSizeMB) << 20, Concurrency: s.Concurrency,
			StorageClass: s.StorageClass, SSE: s.SSE, SSEKMSKeyID: s.SSEKMSKeyID,
		})
	case "gs", "gcs":
		g := a.cfg.GCS
		b, err = gcs.New(ctx, gcs.Config{Bucket: u.Host, Prefix: prefix, Endpoint: g.Endpoint, CredentialsFile: g.CredentialsFile,
			StorageClass: g.StorageClass, KMSKeyName: g.KMSKeyName})
	default:
		return nil, fmt.Errorf("repository URL %q: unknown scheme %q (use file://, s3:// or gs://)", raw, u.Scheme)
	}
	if err != nil {
		return nil, err
	}
	p := retry.Policy{Logger: a.logger}
	if u.Scheme == "s3" || u.Scheme == "gs" || u.Scheme == "gcs" {
		// An object store that restarts or fails over is away for seconds: enough attempts
		// for the backoff to span about ten seconds on average (at most about twenty).
		p.Attempts = 8
	}
	return retry.New(b, p), nil
}

// codecConfig turns the encryption and compression settings into a codec.Config.
func (a *app) codecConfig(needIdentity bool) (codec.Config, error) {
	e := a.cfg.Encryption
	cc := codec.Config{
		Compression: a.cfg.Compression.Type,
		Level:       a.cfg.Compression.Level,
		Encoder:     a.cfg.Compression.Encoder,
		Encryption:  e.Mode,
		Recipients:  e.Recipients,
		Passphrase:  e.Passphrase,
	}
	// The codec checks the levels too; these errors name the keys to change.
	comp := a.cfg.Compression
	for _, l := range []struct {
		key   string
		level int
	}{{"level", cc.Level}, {"dense_level", comp.DenseLevel}} {
		switch {
		case l.level == 0:
		case comp.Type == "none":
			return cc, fmt.Errorf("compression.%s %d is set but compression.type is none", l.key, l.level)
		case l.level < 1 || l.level > 22:
			return cc, fmt.Errorf("compression.%s %d: want a zstd level 1..22", l.key, l.level)
		}
	}
	cc.DenseLevel = comp.DenseLevel
	if cc.DenseLevel == 0 && comp.Type != "none" {
		cc.DenseLevel = defaultDenseLevel
	}
	if e.Mode == "" {
		return cc, fmt.Errorf("encryption is not configured: set encryption.mode to age (with encryption.recipients), passphrase, or none (PGHARBOR_ENCRYPTION_MODE); pgharbor never stores unencrypted data unless told so")
	}
	if e.IdentityFile != "" {
		if err := secret.CheckPrivate(e.IdentityFile, "identity file"); err != nil {
			return cc, err
		}
		ids, err := codec.LoadIdentities(e.IdentityFile)
		if err != nil {
			return cc, err
		}
		cc.Identities = ids
	} else if needIdentity && e.Mode == "age" {
		return cc, fmt.Errorf("reading encrypted objects needs the age identity: pass --identity FILE or set encryption.identity_file (writers need only the public recipients)")
	}
	if f := a.cfg.Repo.SigningKeyFile; f != "" {
		if err := secret.CheckPrivate(f, "signing key file"); err != nil {
			return cc, err
		}
		key, err := codec.LoadSigningKey(f)
		if err != nil {
			return cc, err
		}
		cc.SigningKey = key
	}
	for _, k := range a.cfg.Repo.VerifyKeys {
		if k = strings.TrimSpace(k); k != "" {
			cc.VerifyKeys = append(cc.VerifyKeys, k)
		}
	}
	return cc, nil
}

// openRepo opens the configured cluster in the repository. needIdentity is true for
// commands that decrypt (restore, verify, repo get, wal fetch).
func (a *app) openRepo(ctx context.Context, needIdentity bool) (*repo.Repo, error) {
	return a.openRepoInit(ctx, needIdentity, false)
}

// openRepoInit is openRepo; forInit lets `repo init` open a passphrase cluster that has no
// identity yet, which every other command refuses (see below).
func (a *app) openRepoInit(ctx context.Context, needIdentity, forInit bool) (*repo.Repo, error) {
	if a.clusterErr != nil {
		return nil, a.clusterErr
	}
	if a.cfg.Repo.Cluster == "" {
		return nil, fmt.Errorf("no cluster name: set --cluster, repo.cluster or PGHARBOR_REPO_CLUSTER")
	}
	cc, err := a.codecConfig(needIdentity)
	if err != nil {
		return nil, err
	}
	c, err := codec.New(cc)
	if err != nil {
		return nil, err
	}
	b, err := a.openBackend(ctx)
	if err != nil {
		return nil, err
	}
	r, err := repo.New(b, c, a.cfg.Repo.Cluster)
	if err != nil || cc.Encryption != "passphrase" {
		return r, err
	}
	// Passphrase mode: unlock the cluster's data key once (`repo init` makes it) and seal
	// new objects to it; a scrypt per object would cost about a second each. A cluster
	// without one (initialised by an older pgharbor) keeps a scrypt per object.
	// `repo init` writes the key before the identity, so the key is looked for only once the
	// identity exists, and a cluster without one is refused here: a `wal push` racing
	// `repo init` could otherwise miss the key, find the identity a moment later and seal
	// its segment with a scrypt of its own.
	idKey := r.Key(repo.IdentityKey)
	if ok, err := storage.Exists(ctx, b, idKey); err != nil || !ok {
		if err == nil && forInit {
			return r, nil
		}
		b.Close()
		if err != nil {
			return nil, fmt.Errorf("check %s: %w", r.Location(idKey), err)
		}
		return nil, fmt.Errorf("%s: %w (run `pgharbor repo init`)", r.Location(r.Cluster()), repo.ErrNotInitialized)
	}
	key, err := r.DataKey(ctx, false)
	if err != nil || key == "" {
		if err != nil {
			b.Close()
		}
		return r, err
	}
	cc.DataKey = key
	if c, err = codec.New(cc); err != nil {
		b.Close()
		return nil, err
	}
	return repo.New(b, c, a.cfg.Repo.Cluster)
}

// openCatalog opens the repository and lists its backups; the caller closes the backend.
func (a *app) openCatalog(ctx context.Context, needIdentity bool) (*repo.Repo, *backup.Catalog, error) {
	r, err := a.openRepo(ctx, needIdentity)
	if err != nil {
		return nil, nil, err
	}
	cat, err := backup.LoadCatalog(ctx, r)
	if err != nil {
		r.Backend().Close()
		return nil, nil, err
	}
	return r, cat, nil
}
