package codec

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
)

// Sentinel errors; errors returned by this package wrap them (test with errors.Is).
var (
	// ErrUnknownFormat: the bytes are not a pgharbor object, or use a version, compression
	// or encryption this pgharbor does not know.
	ErrUnknownFormat = errors.New("unknown object format")
	// ErrNoIdentity: the object is encrypted and no identity (or passphrase) is configured.
	ErrNoIdentity = errors.New("object is encrypted; configure an identity (--identity FILE)")
	// ErrWrongKey: none of the configured identities can decrypt the object.
	ErrWrongKey = errors.New("no identity matches the object's recipients")
	// ErrCorrupt: the object's bytes are damaged (checksum or authentication failure,
	// trailing data, or truncation). Re-reading it will not help unless the transport
	// damaged it.
	ErrCorrupt = errors.New("object is corrupt")
	// ErrTruncated: the object ends early. Errors wrapping it also wrap ErrCorrupt.
	ErrTruncated = errors.New("object is truncated")
	// ErrConfig: the Config passed to New is invalid.
	ErrConfig = errors.New("invalid codec configuration")
)

// damagedError reports a damaged object; it matches ErrCorrupt, and ErrTruncated when the
// damage is known to be a truncation.
type damagedError struct {
	truncated bool
	detail    string
	cause     error
}

func (e *damagedError) Error() string {
	s := ErrCorrupt.Error()
	if e.truncated {
		s = ErrTruncated.Error()
	}
	if e.detail != "" {
		s += ": " + e.detail
	}
	if e.cause != nil {
		s += ": " + e.cause.Error()
	}
	return s
}

func (e *damagedError) Is(target error) bool {
	return target == ErrCorrupt || (e.truncated && target == ErrTruncated)
}

func (e *damagedError) Unwrap() error { return e.cause }

func damaged(truncated bool, detail string, cause error) error {
	return &damagedError{truncated: truncated, detail: detail, cause: cause}
}

// Config selects how new objects are written and which keys can read objects.
type Config struct {
	// Compression of new objects: "zstd" (default when empty) or "none".
	Compression string
	// Level is the zstd level, 1..22 as in the zstd CLI; 0 means 3. The C encoder (Encoder)
	// takes it as it is; the Go encoders map it onto klauspost's four encoder speeds (<3
	// fastest, 3..5 default, 6..9 better, ≥10 best).
	Level int
	// DenseLevel is the zstd level of the DataSealer payloads their caller marks dense
	// (SealDense): data that compresses to more than half its size, such as pages of
	// incompressible values beside their tuple headers, where higher levels find little
	// more to remove at much more CPU. 0 means Level.
	DenseLevel int
	// Encoder is the zstd encoder of payloads held whole in memory (DataSealer: backup
	// bundles; Seal: summaries, PostgreSQL's backup_manifest; SealAll and SealDigest:
	// `wal push`): EncoderAuto (default when
	// empty), EncoderGo or EncoderC. Streamed objects (NewWriter, NewFrameEncoder) always use
	// the Go encoder.
	Encoder string
	// Encryption of new objects: "age" (to Recipients), "passphrase" or "none". Required:
	// never defaulted, so that "no encryption" is always an explicit choice.
	Encryption string
	// Recipients are age public keys ("age1…", or "age1pq1…" for post-quantum hybrid keys;
	// the two kinds cannot be mixed). Required for Encryption "age"; writing needs nothing else.
	Recipients []string
	// Identities are age secret keys ("AGE-SECRET-KEY-1…" or "AGE-SECRET-KEY-PQ-1…") used to
	// read encrypted objects, whatever Encryption says. May be empty on a write-only host.
	Identities []string
	// Passphrase seals new objects in Encryption "passphrase" mode and, when set, also
	// reads passphrase objects in any mode.
	Passphrase string
	// ScryptWorkFactor is log2 of the scrypt cost for passphrase objects (1..30); readers
	// refuse objects that demand more. 0 means age's default (18). Meant for tests: lowering
	// it in production weakens the passphrase.
	ScryptWorkFactor int
	// DataKey, in Encryption "passphrase" mode, is the repository's data key (an age X25519
	// secret key, kept in the repository sealed with the passphrase): new objects are sealed
	// to it instead of with a scrypt stanza each, which costs about a second per object.
	// Objects sealed either way stay readable.
	DataKey string
	// SigningKey is the repository's write key ("PGHARBOR-SIGN-KEY-1…"), on hosts that write
	// backups and WAL; Sign uses it. It does not let its holder read anything.
	SigningKey string
	// VerifyKeys are public verify keys ("pgharbor-verify1…"). When set, NewReaderFor refuses
	// objects that are not signed by one of them for the name they are read under.
	VerifyKeys []string
	// Concurrency is the number of goroutines one zstd stream may use (default 1: pgharbor
	// runs many streams in parallel instead).
	Concurrency int
}

const (
	defaultLevel    = 3
	defaultScrypt   = 18 // age's default
	maxZstdWindow   = 8 << 20
	lowLevelZstdWin = 4 << 20
	// dataZstdWindow is the window of DataSealer objects at levels below 6. Those encoders'
	// match tables are too small to find matches much farther back in dense data such as
	// database pages, so a larger window costs memory (an encoder keeps two windows of
	// history) without making objects smaller; bench/backup/README.md has the measurement.
	dataZstdWindow    = 256 << 10
	identityFileLimit = 1 << 20
)

// Codec seals and opens objects. It is safe for concurrent use; create one per
// configuration and share it, since it pools zstd encoders and decoders.
type Codec struct {
	header     Header // header of new objects
	recipients []age.Recipient
	recStrings []string
	identities []age.Identity
	idFPs      []string
	hasScrypt  bool
	dataIDs    []age.Identity // the repository data key (passphrase mode)
	signer     ed25519.PrivateKey
	verifiers  map[[KeyIDSize]byte]ed25519.PublicKey

	encOpts    []zstd.EOption
	encoder    string // Config.Encoder
	level      int    // zstd level, 1..22
	denseLevel int    // zstd level of dense DataSealer payloads, 1..22
	// wholeWindow is the zstd window of payloads sealed whole (SealAll, SealDigest): the
	// streaming writer's. wholeC is a free list of C encoders for them.
	wholeWindow int
	wholeC      chan dataEncoder
	encPool     sync.Pool // *zstd.Encoder
	// whole compresses payloads held in memory (SealAll). One encoder, made on first use and
	// kept: EncodeAll may run concurrently (up to GOMAXPROCS calls at once), and unlike the
	// pooled stream encoders, which the garbage collector drops, its history buffers and
	// tables are allocated once (a new encoder zeroed over 4 MiB before every bundle).
	wholeOnce sync.Once
	whole     *zstd.Encoder
	wholeErr  error
	// decoders is a free list of zstd decoders, a channel rather than a sync.Pool: the
	// garbage collector empties a pool, and a new decoder allocates and zeroes its window
	// again for the next object.
	decoders chan *zstd.Decoder
	// sealers is a free list of the DataSealers Seal uses, for the same reason.
	sealers chan *DataSealer
}

// New validates cfg and returns a Codec. Errors wrap ErrConfig and say which setting is
// wrong; they never contain secret key material.
func New(cfg Config) (*Codec, error) {
	c := &Codec{header: Header{Version: FormatVersion}, decoders: make(chan *zstd.Decoder, runtime.GOMAXPROCS(0)+2), sealers: make(chan *DataSealer, 2), wholeC: make(chan dataEncoder, runtime.GOMAXPROCS(0))}

	switch cfg.Compression {
	case "", "zstd":
		c.header.Compression = CompressionZstd
	case "none":
		c.header.Compression = CompressionNone
		if cfg.Level != 0 {
			return nil, fmt.Errorf("%w: compression level %d is set but compression is none", ErrConfig, cfg.Level)
		}
	default:
		return nil, fmt.Errorf("%w: unknown compression %q (use zstd or none)", ErrConfig, cfg.Compression)
	}
	level := cfg.Level
	if level == 0 {
		level = defaultLevel
	}
	if level < 1 || level > 22 {
		return nil, fmt.Errorf("%w: zstd level %d out of range 1..22", ErrConfig, cfg.Level)
	}
	c.level = level
	c.denseLevel = level
	if cfg.DenseLevel != 0 {
		if c.header.Compression != CompressionZstd {
			return nil, fmt.Errorf("%w: dense compression level %d is set but compression is none", ErrConfig, cfg.DenseLevel)
		}
		if cfg.DenseLevel < 1 || cfg.DenseLevel > 22 {
			return nil, fmt.Errorf("%w: dense zstd level %d out of range 1..22", ErrConfig, cfg.DenseLevel)
		}
		c.denseLevel = cfg.DenseLevel
	}
	switch cfg.Encoder {
	case "", EncoderAuto:
		c.encoder = EncoderAuto
	case EncoderGo, EncoderC:
		c.encoder = cfg.Encoder
	default:
		return nil, fmt.Errorf("%w: unknown zstd encoder %q (use %s, %s or %s)", ErrConfig, cfg.Encoder, EncoderAuto, EncoderC, EncoderGo)
	}
	conc := cfg.Concurrency
	if conc == 0 {
		conc = 1
	}
	if conc < 0 || conc > 256 {
		return nil, fmt.Errorf("%w: concurrency %d out of range 1..256", ErrConfig, cfg.Concurrency)
	}
	if cfg.ScryptWorkFactor < 0 || cfg.ScryptWorkFactor > 30 {
		return nil, fmt.Errorf("%w: scrypt work factor %d out of range 1..30", ErrConfig, cfg.ScryptWorkFactor)
	}
	scryptFactor := cfg.ScryptWorkFactor
	if scryptFactor == 0 {
		scryptFactor = defaultScrypt
	}

	recs, err := parseRecipients(cfg.Recipients)
	if err != nil {
		return nil, err
	}
	if cfg.DataKey != "" && cfg.Encryption != "passphrase" {
		return nil, fmt.Errorf("%w: a data key is only used in passphrase mode", ErrConfig)
	}
	switch cfg.Encryption {
	case "age":
		if len(recs) == 0 {
			return nil, fmt.Errorf("%w: encryption is age but no recipients are configured (add an age1… public key; `pgharbor key generate` makes one)", ErrConfig)
		}
		c.header.Encryption = EncryptionAge
		c.recipients = recs
	case "passphrase":
		if cfg.Passphrase == "" {
			return nil, fmt.Errorf("%w: encryption is passphrase but the passphrase is empty", ErrConfig)
		}
		if len(recs) > 0 {
			return nil, fmt.Errorf("%w: encryption is passphrase but recipients are configured; age cannot mix both (use encryption age, or remove the recipients)", ErrConfig)
		}
		r, err := age.NewScryptRecipient(cfg.Passphrase)
		if err != nil {
			return nil, fmt.Errorf("%w: passphrase: %w", ErrConfig, err)
		}
		r.SetWorkFactor(scryptFactor)
		c.header.Encryption = EncryptionPassphrase
		c.recipients = []age.Recipient{r}
		if cfg.DataKey != "" {
			id, err := age.ParseX25519Identity(strings.TrimSpace(cfg.DataKey))
			if err != nil {
				return nil, fmt.Errorf("%w: data key: not an age X25519 secret key", ErrConfig)
			}
			c.header.Encryption = EncryptionPassphraseKey
			c.recipients = []age.Recipient{id.Recipient()}
			c.dataIDs = []age.Identity{id}
		}
	case "none":
		if len(recs) > 0 {
			return nil, fmt.Errorf("%w: encryption is none but recipients are configured; set encryption to age or remove the recipients", ErrConfig)
		}
		c.header.Encryption = EncryptionNone
	case "":
		return nil, fmt.Errorf("%w: encryption must be set explicitly: age, passphrase or none", ErrConfig)
	default:
		return nil, fmt.Errorf("%w: unknown encryption %q (use age, passphrase or none)", ErrConfig, cfg.Encryption)
	}
	if c.header.Encryption == EncryptionAge {
		for _, r := range cfg.Recipients {
			c.recStrings = append(c.recStrings, canonicalRecipient(r))
		}
	}

	for i, s := range cfg.Identities {
		id, rec, err := parseIdentity(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%w: identity #%d %w", ErrConfig, i+1, err)
		}
		c.identities = append(c.identities, id)
		c.idFPs = append(c.idFPs, fingerprint(rec))
	}
	if cfg.Passphrase != "" {
		id, err := age.NewScryptIdentity(cfg.Passphrase)
		if err != nil {
			return nil, fmt.Errorf("%w: passphrase: %w", ErrConfig, err)
		}
		// Cap the work (and memory: 2^logN KiB) a tampered object can demand of a reader
		// at what this configuration writes.
		id.SetMaxWorkFactor(scryptFactor)
		c.identities = append(c.identities, id)
		c.hasScrypt = true
	}

	if cfg.SigningKey != "" {
		priv, err := parseSigningKey(cfg.SigningKey)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		c.signer = priv
	}
	for i, s := range cfg.VerifyKeys {
		pub, err := parseVerifyKey(s)
		if err != nil {
			return nil, fmt.Errorf("%w: verify key #%d %w", ErrConfig, i+1, err)
		}
		if c.verifiers == nil {
			c.verifiers = make(map[[KeyIDSize]byte]ed25519.PublicKey)
		}
		c.verifiers[keyID(pub)] = pub
	}

	window := maxZstdWindow
	if level < 6 {
		window = lowLevelZstdWin
	}
	c.encOpts = []zstd.EOption{
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
		zstd.WithEncoderCRC(true),
		zstd.WithEncoderConcurrency(conc),
		zstd.WithWindowSize(window),
	}
	c.wholeWindow = window
	if c.header.Compression == CompressionZstd {
		// Build one encoder now so option errors surface here, not on the first write.
		enc, err := zstd.NewWriter(nil, c.encOpts...)
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %w", ErrConfig, err)
		}
		c.encPool.Put(enc)
		if c.encoder == EncoderC {
			// Likewise for the C encoder, which a build without cgo does not have.
			enc, err := c.newDataEncoder(c.level)
			if err != nil {
				return nil, err
			}
			enc.close()
		}
	}
	return c, nil
}

func (c *Codec) getEncoder(w io.Writer) (*zstd.Encoder, error) {
	if enc, ok := c.encPool.Get().(*zstd.Encoder); ok {
		enc.Reset(w)
		return enc, nil
	}
	enc, err := zstd.NewWriter(w, c.encOpts...)
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	return enc, nil
}

func (c *Codec) wholeEncoder() (*zstd.Encoder, error) {
	c.wholeOnce.Do(func() {
		opts := append(append([]zstd.EOption(nil), c.encOpts...), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
		c.whole, c.wholeErr = zstd.NewWriter(nil, opts...)
		if c.wholeErr != nil {
			c.wholeErr = fmt.Errorf("zstd encoder: %w", c.wholeErr)
		}
	})
	return c.whole, c.wholeErr
}

func (c *Codec) putEncoder(enc *zstd.Encoder) {
	enc.Reset(io.Discard) // drop the reference to the caller's writer
	c.encPool.Put(enc)
}

func (c *Codec) getDecoder(r io.Reader) (*zstd.Decoder, error) {
	select {
	case dec := <-c.decoders:
		if err := dec.Reset(r); err != nil {
			return nil, fmt.Errorf("zstd decoder: %w", err)
		}
		return dec, nil
	default:
	}
	dec, err := zstd.NewReader(r,
		zstd.WithDecoderConcurrency(1), // synchronous: no goroutines, memory ≈ one window
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(maxZstdWindow),
		zstd.WithDecoderMaxMemory(maxZstdWindow),
	)
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return dec, nil
}

func (c *Codec) putDecoder(dec *zstd.Decoder) {
	_ = dec.Reset(nil) // drop the reference to the caller's reader; the error is expected
	select {
	case c.decoders <- dec:
	default:
		dec.Close()
	}
}

// Header returns the header new objects get.
func (c *Codec) Header() Header { return c.header }

// Seal encodes a small payload into a whole object (manifests, identity files). It uses a
// DataSealer's encoder, whose small window suits small payloads: the streaming encoder's
// history alone would take two of its larger windows.
func (c *Codec) Seal(plain []byte) ([]byte, error) {
	var s *DataSealer
	select {
	case s = <-c.sealers:
	default:
		var err error
		if s, err = c.NewDataSealer(); err != nil {
			return nil, err
		}
	}
	var buf bytes.Buffer
	buf.Grow(len(plain)/2 + 512)
	err := s.Seal(&buf, plain, SealCompressed)
	select {
	case c.sealers <- s:
	default:
		s.Close()
	}
	if err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Open decodes a whole object produced by Seal or NewWriter. Use it for small objects only:
// the payload is returned in memory.
func (c *Codec) Open(sealed []byte) ([]byte, error) {
	r, err := c.NewReader(bytes.NewReader(sealed))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	plain, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	return plain, nil
}

// Fingerprints returns the fingerprints of the recipients new objects are sealed to, in
// configuration order (nil unless Encryption is "age"). They contain no secrets.
func (c *Codec) Fingerprints() []string {
	out := make([]string, 0, len(c.recStrings))
	for _, r := range c.recStrings {
		out = append(out, fingerprint(r))
	}
	return out
}

// IdentityFingerprints returns the fingerprints of the recipients the configured
// identities can decrypt, to compare with a repository's fingerprints before a restore.
func (c *Codec) IdentityFingerprints() []string {
	return append([]string(nil), c.idFPs...)
}

// DataSealer seals payloads held whole in memory (backup bundles), one after another, into
// the objects NewWriter would make of them. It owns one zstd encoder and streams through
// it: no buffer for the whole compressed payload, and the encoder's history and tables are
// allocated once, not per object. Objects carry a smaller zstd window than NewWriter's at
// levels below 6 (dataZstdWindow), which readers need less memory for, and no zstd content
// checksum. Not safe for
// concurrent use: one per goroutine.
type DataSealer struct {
	c     *Codec
	enc   dataEncoder // nil when the codec does not compress
	dense dataEncoder // at the codec's dense level; made on first use
}

// SealMode says how DataSealer.Seal treats a payload.
type SealMode int

const (
	// SealCompressed compresses at the codec's level.
	SealCompressed SealMode = iota
	// SealDense compresses at the codec's dense level (Config.DenseLevel): for payloads the
	// caller found to compress to more than half their size.
	SealDense
	// SealStored does not compress: for payloads the caller knows do not compress (random
	// bytes, compressed data). Readers need no setting: the header says so.
	SealStored
)

// NewDataSealer returns a DataSealer for c's settings.
func (c *Codec) NewDataSealer() (*DataSealer, error) {
	s := &DataSealer{c: c}
	if c.header.Compression == CompressionZstd {
		enc, err := c.newDataEncoder(c.level)
		if err != nil {
			return nil, err
		}
		s.enc = enc
	}
	return s, nil
}

// Seal writes the object for plain to w, compressed as mode says when the codec
// compresses. After an error the bytes written to w are not an object.
func (s *DataSealer) Seal(w io.Writer, plain []byte, mode SealMode) error {
	h := s.c.header
	if mode == SealStored || s.enc == nil {
		h.Compression = CompressionNone
	}
	enc := s.enc
	if mode == SealDense && s.c.denseLevel != s.c.level && h.Compression == CompressionZstd {
		if s.dense == nil {
			// A second encoder rather than one switched between levels: a libzstd context
			// reset to another level reallocates its tables, which left more memory in use.
			d, err := s.c.newDataEncoder(s.c.denseLevel)
			if err != nil {
				return err
			}
			s.dense = d
		}
		enc = s.dense
	}
	ow, err := s.c.newWriter(w, h, false)
	if err != nil {
		return err
	}
	if h.Compression == CompressionZstd {
		if err := enc.encode(ow, plain); err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
	} else if _, err := ow.Write(plain); err != nil {
		return err
	}
	return ow.Close()
}

// Close releases the encoder.
func (s *DataSealer) Close() {
	if s.enc != nil {
		s.enc.close()
	}
	if s.dense != nil {
		s.dense.close()
	}
}
