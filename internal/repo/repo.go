// Package repo is a cluster's view of a repository: a storage.Backend, the codec that seals
// every object, and the cluster's prefix. Domain packages (backup, wal, restore) store and
// read sealed objects through it and never see a driver.
//
// Glossary:
//   - cluster: one PostgreSQL cluster's part of a repository (pgBackRest's "stanza"); all
//     its keys start with "<cluster>/".
//   - identity: <cluster>/pgharbor.json, what the repository holds (format, system
//     identifier, PostgreSQL version, WAL segment size, recipients' fingerprints). It is
//     readable without any key and holds no secret.
package repo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
)

// FormatVersion is the repository layout version this code writes and reads.
const FormatVersion = 1

// IdentityKey is the name of the identity object inside a cluster's prefix.
const IdentityKey = "pgharbor.json"

// DataKeyKey is the object, inside a cluster's prefix, holding the data key of a
// passphrase-encrypted repository, sealed with the passphrase.
const DataKeyKey = "keys/data-key"

// ErrNotInitialized means the cluster has no identity object yet.
var ErrNotInitialized = errors.New("repository not initialised for this cluster")

// ErrIdentityMismatch means the repository holds another cluster (or another key set).
var ErrIdentityMismatch = errors.New("repository identity mismatch")

// Identity is the content of pgharbor.json.
type Identity struct {
	Format           int       `json:"format"`
	Cluster          string    `json:"cluster"`
	SystemIdentifier string    `json:"system_identifier,omitempty"` // decimal, as pg_control_system() shows it
	PGVersion        int       `json:"pg_version,omitempty"`        // server_version_num
	WALSegmentSize   int64     `json:"wal_segment_size,omitempty"`
	Encryption       string    `json:"encryption"`           // age, passphrase or none
	Recipients       []string  `json:"recipients,omitempty"` // fingerprints of the age recipients
	Created          time.Time `json:"created"`
}

// Repo is one cluster inside a repository.
type Repo struct {
	backend storage.Backend
	codec   *codec.Codec
	plain   *codec.Codec
	cluster string
}

var clusterName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// ValidateCluster checks a cluster name (it becomes a key prefix).
func ValidateCluster(name string) error {
	if !clusterName.MatchString(name) {
		return fmt.Errorf("invalid cluster name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// New returns the repository view of cluster. c seals new objects and opens existing ones.
func New(b storage.Backend, c *codec.Codec, cluster string) (*Repo, error) {
	if err := ValidateCluster(cluster); err != nil {
		return nil, err
	}
	plain, err := codec.New(codec.Config{Compression: "none", Encryption: "none"})
	if err != nil {
		return nil, err
	}
	return &Repo{backend: b, codec: c, plain: plain, cluster: cluster}, nil
}

// Backend returns the storage backend.
func (r *Repo) Backend() storage.Backend { return r.backend }

// Codec returns the codec.
func (r *Repo) Codec() *codec.Codec { return r.codec }

// Cluster returns the cluster name.
func (r *Repo) Cluster() string { return r.cluster }

// Key joins parts below the cluster prefix.
func (r *Repo) Key(parts ...string) string {
	return path.Join(append([]string{r.cluster}, parts...)...)
}

// Location names a key for messages: "s3://bucket/prefix/cluster/wal/…".
func (r *Repo) Location(key string) string {
	loc := r.backend.Location()
	if loc == "" || loc[len(loc)-1] != '/' {
		loc += "/"
	}
	return loc + key
}

// PutBytes seals plain, signs it for key when the codec holds the write key, and stores it
// under key. The sealed body is retryable.
func (r *Repo) PutBytes(ctx context.Context, key string, plain []byte, ifNotExists bool) error {
	sealed, err := r.codec.Seal(plain)
	if err != nil {
		return fmt.Errorf("seal %s: %w", key, err)
	}
	if sealed, err = r.sign(sealed, key); err != nil {
		return err
	}
	return r.PutSealed(ctx, key, sealed, ifNotExists)
}

// sign signs sealed for key when the codec holds the write key.
func (r *Repo) sign(sealed []byte, key string) ([]byte, error) {
	if !r.codec.Signs() {
		return sealed, nil
	}
	signed, err := r.codec.Sign(sealed, key)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", key, err)
	}
	return signed, nil
}

// PutSigned stores an already sealed body, signed for key when the codec holds the write key.
func (r *Repo) PutSigned(ctx context.Context, key string, sealed []byte, ifNotExists bool) error {
	sealed, err := r.sign(sealed, key)
	if err != nil {
		return err
	}
	return r.PutSealed(ctx, key, sealed, ifNotExists)
}

// PutSealed stores an already sealed body as it is, unsigned: for backup data bundles,
// which the signed manifest authenticates by their pieces' SHA-256.
func (r *Repo) PutSealed(ctx context.Context, key string, sealed []byte, ifNotExists bool) error {
	return r.backend.Put(ctx, key, bytes.NewReader(sealed), storage.PutOptions{IfNotExists: ifNotExists, Size: int64(len(sealed))})
}

// GetStream opens key and returns its decoded payload. Errors reading it name the object.
// When the codec holds verify keys the object must be signed for key by the repository's
// write key: an unsigned object is refused before its first byte, and the last Read
// returns io.EOF only after the signature was checked (errors wrap
// codec.ErrUnauthenticated). Consumers must not act on the payload before io.EOF.
func (r *Repo) GetStream(ctx context.Context, key string) (io.ReadCloser, error) {
	return r.getStream(ctx, key, true)
}

// GetData is GetStream without the signature check, for backup data bundles only: their
// pieces are authenticated by the SHA-256 the signed manifest records for each.
func (r *Repo) GetData(ctx context.Context, key string) (io.ReadCloser, error) {
	return r.getStream(ctx, key, false)
}

func (r *Repo) getStream(ctx context.Context, key string, auth bool) (io.ReadCloser, error) {
	rc, err := r.backend.Get(ctx, key, 0, -1)
	if err != nil {
		return nil, err
	}
	var dec io.ReadCloser
	if auth {
		dec, err = r.codec.NewReaderFor(rc, key)
	} else {
		dec, err = r.codec.NewReader(rc)
	}
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("open %s: %w", r.Location(key), err)
	}
	return &namedReader{dec: dec, raw: rc, loc: r.Location(key)}, nil
}

type namedReader struct {
	dec io.ReadCloser
	raw io.Closer
	loc string
}

func (n *namedReader) Read(p []byte) (int, error) {
	k, err := n.dec.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("read %s: %w", n.loc, err)
	}
	return k, err
}

func (n *namedReader) Close() error {
	err := n.dec.Close()
	if cerr := n.raw.Close(); err == nil {
		err = cerr
	}
	return err
}

// GetBytes reads and decodes a whole (small) object.
func (r *Repo) GetBytes(ctx context.Context, key string) ([]byte, error) {
	rc, err := r.GetStream(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// PutJSON stores v as sealed JSON, without indentation: no one reads a sealed object's text.
func (r *Repo) PutJSON(ctx context.Context, key string, v any, ifNotExists bool) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.PutBytes(ctx, key, data, ifNotExists)
}

// PutStreamed stores, sealed (and signed), what write writes: for objects made in pieces,
// such as a backup manifest, whose bytes then never exist whole in memory. The sealed object
// is signed as it is sealed and held for the upload (which may be retried) in memory up to
// spillLimit, beyond that in a temporary file.
func (r *Repo) PutStreamed(ctx context.Context, key string, ifNotExists bool, write func(io.Writer) error) error {
	return r.putStreamed(ctx, key, ifNotExists, spillLimit, write)
}

func (r *Repo) putStreamed(ctx context.Context, key string, ifNotExists bool, limit int, write func(io.Writer) error) error {
	s, err := r.sealStreamed(key, limit, write)
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Put(ctx, ifNotExists)
}

// Sealed is an object SealStreamed sealed (and signed) for its key, held until Put stores it.
type Sealed struct {
	r    *Repo
	key  string
	held *Spill
}

// SealStreamed is PutStreamed's first half: it seals what write writes and holds it, so
// that the caller can make an object ready while it waits for the moment to store it (a
// backup's manifest while the archiver stores its last WAL). The caller closes it.
func (r *Repo) SealStreamed(key string, write func(io.Writer) error) (*Sealed, error) {
	return r.sealStreamed(key, spillLimit, write)
}

func (r *Repo) sealStreamed(key string, limit int, write func(io.Writer) error) (_ *Sealed, err error) {
	held := NewSpill(limit)
	defer func() {
		if err != nil {
			held.Close()
		}
	}()
	var dst io.Writer = held
	var signer *codec.ObjectSigner
	if r.codec.Signs() {
		if signer, err = r.codec.NewObjectSigner(held, key); err != nil {
			return nil, fmt.Errorf("sign %s: %w", key, err)
		}
		dst = signer
	}
	ow, err := r.codec.NewWriter(dst)
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", key, err)
	}
	bw := bufio.NewWriterSize(ow, 256<<10)
	if err := write(bw); err != nil {
		return nil, err
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("seal %s: %w", key, err)
	}
	if err := ow.Close(); err != nil {
		return nil, fmt.Errorf("seal %s: %w", key, err)
	}
	if signer != nil {
		if err := signer.Finish(); err != nil {
			return nil, fmt.Errorf("sign %s: %w", key, err)
		}
	}
	return &Sealed{r: r, key: key, held: held}, nil
}

// Put stores the sealed object under its key.
func (s *Sealed) Put(ctx context.Context, ifNotExists bool) error {
	return s.r.backend.Put(ctx, s.key, s.held.Reader(), storage.PutOptions{IfNotExists: ifNotExists, Size: s.held.n})
}

// Close lets the sealed object go (its temporary file, if it has one).
func (s *Sealed) Close() { s.held.Close() }

// GetStreamed passes the decoded payload of key to read, then reads what read left to the
// end, where the object's tag or signature is checked: an error there is returned instead
// of read's result, and the caller must not use what read produced.
func (r *Repo) GetStreamed(ctx context.Context, key string, read func(io.Reader) error) error {
	rc, err := r.GetStream(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 256<<10)
	rerr := read(br)
	if _, err := io.Copy(io.Discard, br); err != nil {
		return err
	}
	return rerr
}

// GetAdvisoryJSON reads sealed JSON into v without checking a signature: for locks, whose
// content is coordination between hosts (some of which may hold no write key), never a
// fact that restore or retention acts on.
func (r *Repo) GetAdvisoryJSON(ctx context.Context, key string, v any) error {
	rc, err := r.GetData(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", r.Location(key), err)
	}
	return nil
}

// GetJSON reads sealed JSON into v.
func (r *Repo) GetJSON(ctx context.Context, key string, v any) error {
	data, err := r.GetBytes(ctx, key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", r.Location(key), err)
	}
	return nil
}

// ReadIdentity returns the cluster's identity, or an error wrapping ErrNotInitialized.
func (r *Repo) ReadIdentity(ctx context.Context) (Identity, error) {
	key := r.Key(IdentityKey)
	rc, err := r.backend.Get(ctx, key, 0, -1)
	if errors.Is(err, storage.ErrNotFound) {
		return Identity{}, fmt.Errorf("%s: %w (run `pgharbor repo init`)", r.Location(r.cluster), ErrNotInitialized)
	}
	if err != nil {
		return Identity{}, err
	}
	defer rc.Close()
	dec, err := r.plain.NewReader(rc)
	if err != nil {
		return Identity{}, fmt.Errorf("open %s: %w", r.Location(key), err)
	}
	defer dec.Close()
	var id Identity
	if err := json.NewDecoder(dec).Decode(&id); err != nil {
		return Identity{}, fmt.Errorf("decode %s: %w", r.Location(key), err)
	}
	if id.Format != FormatVersion {
		return Identity{}, fmt.Errorf("%s: repository format %d, this pgharbor reads format %d", r.Location(key), id.Format, FormatVersion)
	}
	return id, nil
}

func (r *Repo) writeIdentity(ctx context.Context, id Identity, ifNotExists bool) error {
	data, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	sealed, err := r.plain.Seal(append(data, '\n'))
	if err != nil {
		return err
	}
	return r.PutSealed(ctx, r.Key(IdentityKey), sealed, ifNotExists)
}

// EncryptionMode names the codec's mode for the identity file.
func EncryptionMode(c *codec.Codec) string { return c.Header().Encryption.String() }

// Init creates the identity, or checks that an existing one matches. Running it again
// with the same settings is harmless. It returns the identity in force.
func (r *Repo) Init(ctx context.Context, want Identity) (Identity, error) {
	want.Format = FormatVersion
	want.Cluster = r.cluster
	if want.Encryption == "" {
		want.Encryption = EncryptionMode(r.codec)
	}
	if want.Recipients == nil {
		want.Recipients = r.codec.Fingerprints()
	}
	if want.Created.IsZero() {
		want.Created = time.Now().UTC()
	}
	err := r.writeIdentity(ctx, want, true)
	if err == nil {
		return want, nil
	}
	if !errors.Is(err, storage.ErrExists) {
		return Identity{}, fmt.Errorf("write %s: %w", r.Location(r.Key(IdentityKey)), err)
	}
	have, err := r.ReadIdentity(ctx)
	if err != nil {
		return Identity{}, err
	}
	if err := have.Check(want); err != nil {
		return have, err
	}
	// Key rotation: recipients configured next to a known one are recorded, so that the old
	// one can later be dropped from the configuration.
	added := false
	for _, fp := range want.Recipients {
		if !slices.Contains(have.Recipients, fp) {
			have.Recipients = append(have.Recipients, fp)
			added = true
		}
	}
	if added {
		if err := r.writeIdentity(ctx, have, false); err != nil {
			return have, fmt.Errorf("record new recipients in %s: %w", r.Location(r.Key(IdentityKey)), err)
		}
	}
	return have, nil
}

// Check reports whether a server or a key set described by other may use the repository
// whose identity is id. Empty fields in other are not compared.
func (id Identity) Check(other Identity) error {
	if other.SystemIdentifier != "" && id.SystemIdentifier != "" && other.SystemIdentifier != id.SystemIdentifier {
		return fmt.Errorf("%w: cluster %q in this repository has system identifier %s, but the server has %s: it is another PostgreSQL cluster; use another --cluster name",
			ErrIdentityMismatch, id.Cluster, id.SystemIdentifier, other.SystemIdentifier)
	}
	if other.PGVersion != 0 && id.PGVersion != 0 && other.PGVersion/10000 != id.PGVersion/10000 {
		return fmt.Errorf("%w: cluster %q holds PostgreSQL %d backups, the server runs %d; use a new --cluster name after a major upgrade",
			ErrIdentityMismatch, id.Cluster, id.PGVersion/10000, other.PGVersion/10000)
	}
	if other.Encryption != "" && other.Encryption != id.Encryption {
		return fmt.Errorf("%w: cluster %q is encrypted with %q, the configuration says %q",
			ErrIdentityMismatch, id.Cluster, id.Encryption, other.Encryption)
	}
	if other.Encryption == "age" && len(other.Recipients) > 0 && !slices.ContainsFunc(other.Recipients, func(fp string) bool { return slices.Contains(id.Recipients, fp) }) {
		return fmt.Errorf("%w: none of the configured recipients (%v) is among the repository's (%v); to rotate keys, configure the new recipient next to an old one and run `pgharbor repo init` once",
			ErrIdentityMismatch, other.Recipients, id.Recipients)
	}
	return nil
}

// Attach records the server's facts in the identity the first time a server uses the
// repository, and refuses another server. Callers: backup and wal push.
func (r *Repo) Attach(ctx context.Context, server Identity) (Identity, error) {
	id, err := r.ReadIdentity(ctx)
	if err != nil {
		return Identity{}, err
	}
	if err := id.Check(server); err != nil {
		return id, err
	}
	if id.SystemIdentifier != "" && id.PGVersion != 0 && id.WALSegmentSize != 0 {
		return id, nil
	}
	if id.SystemIdentifier == "" {
		id.SystemIdentifier = server.SystemIdentifier
	}
	if id.PGVersion == 0 {
		id.PGVersion = server.PGVersion
	}
	if id.WALSegmentSize == 0 {
		id.WALSegmentSize = server.WALSegmentSize
	}
	if err := r.writeIdentity(ctx, id, false); err != nil {
		return id, fmt.Errorf("update %s: %w", r.Location(r.Key(IdentityKey)), err)
	}
	return id, nil
}

// FormatSystemIdentifier renders a system identifier as PostgreSQL shows it.
func FormatSystemIdentifier(v uint64) string { return strconv.FormatUint(v, 10) }

// DataKey returns the data key of a passphrase-encrypted cluster: an age X25519 secret key
// stored at DataKeyKey, sealed with the passphrase (r's codec must be in passphrase mode).
// New objects are sealed to this key, so that the passphrase's scrypt runs once per process,
// not once per object. Without the key it returns "" and no error, unless create is set
// (`repo init`): then it stores a new one. Two processes creating it at once agree: the
// write is create-only and the loser reads the winner's key back.
func (r *Repo) DataKey(ctx context.Context, create bool) (string, error) {
	key := r.Key(DataKeyKey)
	for attempt := 0; ; attempt++ {
		data, err := r.readDataKey(ctx, key)
		if err == nil {
			s := strings.TrimSpace(string(data))
			if !strings.HasPrefix(s, "AGE-SECRET-KEY-1") {
				return "", fmt.Errorf("%s does not hold an age secret key: the object is damaged", r.Location(key))
			}
			return s, nil
		}
		if errors.Is(err, storage.ErrNotFound) && !create {
			return "", nil
		}
		if !errors.Is(err, storage.ErrNotFound) || attempt > 0 {
			return "", fmt.Errorf("read the data key: %w", err)
		}
		id, _, err := codec.GenerateIdentity()
		if err != nil {
			return "", err
		}
		err = r.PutBytes(ctx, key, []byte(id+"\n"), true)
		if err == nil {
			return id, nil
		}
		if !errors.Is(err, storage.ErrExists) {
			return "", fmt.Errorf("store the data key at %s: %w", r.Location(key), err)
		}
	}
}

// readDataKey reads the data key object, which must be sealed with the passphrase: only a
// passphrase holder can make such an object, whereas anyone who can write to the bucket
// could store an unencrypted one holding a key of their own, and every writer would then
// seal new objects to it.
func (r *Repo) readDataKey(ctx context.Context, key string) ([]byte, error) {
	raw, err := storage.ReadAll(ctx, r.backend, key)
	if err != nil {
		return nil, err
	}
	h, err := codec.ParseHeader(raw[:min(len(raw), codec.MaxHeaderSize)])
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", r.Location(key), err)
	}
	if h.Encryption != codec.EncryptionPassphrase {
		return nil, fmt.Errorf("open %s: %w: the data key is sealed with %s, not with the passphrase: it was not written by pgharbor (remove it only if no object is sealed to it)",
			r.Location(key), codec.ErrCorrupt, h.Encryption)
	}
	rc, err := r.codec.NewReaderFor(bytes.NewReader(raw), key)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", r.Location(key), err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", r.Location(key), err)
	}
	return data, nil
}

// PutClearJSON stores v under key in a clear (unencrypted, uncompressed) envelope, replacing
// what was there. Only for facts that are no secret and that readers without the identity
// need, such as a WAL receiver's progress.
func (r *Repo) PutClearJSON(ctx context.Context, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	sealed, err := r.plain.Seal(append(data, '\n'))
	if err != nil {
		return err
	}
	return r.PutSealed(ctx, key, sealed, false)
}

// GetClearJSON reads what PutClearJSON stored.
func (r *Repo) GetClearJSON(ctx context.Context, key string, v any) error {
	rc, err := r.backend.Get(ctx, key, 0, -1)
	if err != nil {
		return err
	}
	defer rc.Close()
	dec, err := r.plain.NewReader(rc)
	if err != nil {
		return fmt.Errorf("open %s: %w", r.Location(key), err)
	}
	defer dec.Close()
	if err := json.NewDecoder(dec).Decode(v); err != nil {
		return fmt.Errorf("decode %s: %w", r.Location(key), err)
	}
	return nil
}
