package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgharbor/pgharbor/internal/secret"
	"github.com/pgharbor/pgharbor/retention"
)

// Config is the whole configuration file. Every leaf is also settable through the
// environment as PGHARBOR_<SECTION>_<KEY> (upper case, yaml names), e.g.
// PGHARBOR_REPO_URL, PGHARBOR_S3_ENDPOINT, PGHARBOR_ENCRYPTION_RECIPIENTS (comma-separated
// for lists). Flags override both. docs/configuration.md documents every key.
type Config struct {
	Repo        RepoConfig        `yaml:"repo"`
	S3          S3Config          `yaml:"s3"`
	GCS         GCSConfig         `yaml:"gcs"`
	Encryption  EncryptionConfig  `yaml:"encryption"`
	Compression CompressionConfig `yaml:"compression"`
	Postgres    PostgresConfig    `yaml:"postgres"`
	Backup      BackupConfig      `yaml:"backup"`
	WAL         WALConfig         `yaml:"wal"`
	Retention   RetentionConfig   `yaml:"retention"`
	// Schedules and Readiness are used by `pgharbor server` (docs/server.md), Server is its
	// top-level listener section; a `clusters:` list (server_config.go) gives per-cluster values.
	Schedules SchedulesConfig `yaml:"schedules"`
	Readiness ReadinessConfig `yaml:"readiness"`
	Server    ServerConfig    `yaml:"server"`

	// raw keeps the parsed document so that capabilities with their own configuration
	// (the pool) decode their section themselves.
	raw map[string]yaml.Node
}

// RepoConfig says where the repository is.
type RepoConfig struct {
	URL     string `yaml:"url"`     // file:///path, s3://bucket/prefix, gs://bucket/prefix
	Cluster string `yaml:"cluster"` // the cluster's name inside the repository
	// SigningKeyFile holds the repository's write key (`pgharbor key generate --signing`):
	// on hosts that take backups and push WAL, which then sign what they store.
	SigningKeyFile string `yaml:"signing_key_file"`
	// VerifyKeys are the public keys of the write key ("pgharbor-verify1…"); when set,
	// manifests, summaries and WAL not signed by one of them are refused.
	VerifyKeys []string `yaml:"verify_keys"`
}

// S3Config holds what the AWS SDK does not find on its own.
type S3Config struct {
	Endpoint        string `yaml:"endpoint"`
	Region          string `yaml:"region"`
	PathStyle       bool   `yaml:"path_style"`
	AccessKeyID     string `yaml:"access_key_id"`
	SecretAccessKey string `yaml:"secret_access_key"`
	SessionToken    string `yaml:"session_token"`
	PartSizeMB      int    `yaml:"part_size_mb"`
	Concurrency     int    `yaml:"concurrency"`
	StorageClass    string `yaml:"storage_class"`  // of new objects; the bucket's default when empty
	SSE             string `yaml:"sse"`            // AES256, aws:kms or aws:kms:dsse
	SSEKMSKeyID     string `yaml:"sse_kms_key_id"` // with sse: aws:kms
}

// GCSConfig configures Google Cloud Storage.
type GCSConfig struct {
	Endpoint        string `yaml:"endpoint"`
	CredentialsFile string `yaml:"credentials_file"`
	StorageClass    string `yaml:"storage_class"` // of new objects; the bucket's default when empty
	KMSKeyName      string `yaml:"kms_key_name"`  // Cloud KMS key of new objects
}

// EncryptionConfig: mode age (X25519 recipients), passphrase, or none (explicitly).
type EncryptionConfig struct {
	Mode         string   `yaml:"mode"`
	Recipients   []string `yaml:"recipients"`
	IdentityFile string   `yaml:"identity_file"`
	Passphrase   string   `yaml:"passphrase"`
}

// CompressionConfig: zstd (default) or none, and the zstd level.
type CompressionConfig struct {
	Type  string `yaml:"type"`
	Level int    `yaml:"level"`
	// WALLevel is the zstd level of WAL pushes (default 1): the archiver has to keep up with
	// the server's write rate, and on WAL zstd's fastest level costs half the CPU of level 3
	// for about the same size.
	WALLevel int `yaml:"wal_level"`
	// DenseLevel is the zstd level of backup bundles that compress to more than half their
	// size (default 1): on such data higher levels remove a percent or two more at much more
	// CPU. Set it to level to compress every bundle alike.
	DenseLevel int `yaml:"dense_level"`
	// Encoder is the zstd encoder of backup bundles and wal push: auto (default: the C
	// library, libzstd, when this binary was built with cgo), libzstd, or go.
	Encoder string `yaml:"encoder"`
}

// defaultWALLevel is the zstd level of WAL pushes when compression.wal_level is not set.
const defaultWALLevel = 1

// defaultDenseLevel is the zstd level of dense backup bundles when compression.dense_level
// is not set.
const defaultDenseLevel = 1

// PostgresConfig says how to reach the cluster being backed up.
type PostgresConfig struct {
	Conn    string `yaml:"conn"`     // libpq connection string or URL
	BinDir  string `yaml:"bin_dir"`  // where pg_ctl etc. live (restore --start)
	DataDir string `yaml:"data_dir"` // PGDATA of the local cluster (wal push of relative paths, backup --method local)
}

// BackupConfig tunes base backups.
type BackupConfig struct {
	FastCheckpoint *bool         `yaml:"fast_checkpoint"`
	Method         string        `yaml:"method"` // auto, stream or local
	Workers        int           `yaml:"workers"`
	Uploads        int           `yaml:"uploads"`
	BundleSizeMB   int           `yaml:"bundle_size_mb"`
	LockTimeout    time.Duration `yaml:"lock_timeout"`

	// Type is full (default), diff or incr: `pgharbor backup` without --type and the
	// server's scheduled backups take it (docs/configuration.md).
	Type string `yaml:"type"`
	// ChecksumAll makes diff and incr backups read every file (--checksum-all).
	ChecksumAll bool `yaml:"checksum_all"`
	// FullAfter makes a diff or incr backup full when the newest full backup is older.
	FullAfter time.Duration `yaml:"full_after"`
	From      string        `yaml:"from"`     // primary (default), or standby: postgres.conn is a standby to back up there
	MaxRate   string        `yaml:"max_rate"` // cap on bytes read per second from the cluster ("100M"; empty: none)
	Primary   string        `yaml:"primary"`  // with from: standby, the standby's primary, asked to pg_switch_wal at the end
}

// WALConfig tunes archive push and fetch, and the WAL receiver.
type WALConfig struct {
	PushParallel  int          `yaml:"push_parallel"`
	FetchPrefetch int          `yaml:"fetch_prefetch"`
	SpoolDir      string       `yaml:"spool_dir"`
	Stream        StreamConfig `yaml:"stream"`
}

// StreamConfig configures `pgharbor wal receive` (postgres.conn is the server it streams
// from).
type StreamConfig struct {
	Enabled         bool          `yaml:"enabled"`          // pgharbor server runs the receiver
	Slot            string        `yaml:"slot"`             // physical replication slot (pgharbor)
	CreateSlot      *bool         `yaml:"create_slot"`      // create it when missing (true)
	ApplicationName string        `yaml:"application_name"` // for synchronous_standby_names (pgharbor)
	FlushInterval   time.Duration `yaml:"flush_interval"`   // received WAL stored at least this often (1s)
	FlushMB         int           `yaml:"flush_mb"`         // or whenever this much arrived (4)
	Synchronous     bool          `yaml:"synchronous"`      // store as soon as the server pauses
}

// RetentionConfig is the expiry policy (see docs/retention.md). Durations are Go durations
// ("36h", "90m") or days ("7d"); empty or 0 turns a rule off.
type RetentionConfig struct {
	FullCount       int    `yaml:"full_count"`
	KeepYoungerThan string `yaml:"keep_younger_than"`
	Window          string `yaml:"window"`
	MinCount        int    `yaml:"min_count"`
}

// Policy converts the settings, naming the key of a bad value.
func (c RetentionConfig) Policy() (retention.Policy, error) {
	p := retention.Policy{FullCount: c.FullCount, MinCount: c.MinCount}
	for _, d := range []struct {
		key string
		in  string
		out *time.Duration
	}{{"retention.keep_younger_than", c.KeepYoungerThan, &p.KeepYoungerThan}, {"retention.window", c.Window, &p.Window}} {
		if strings.TrimSpace(d.in) == "" || strings.TrimSpace(d.in) == "0" {
			continue
		}
		v, err := retention.ParseDuration(d.in)
		if err != nil {
			return p, fmt.Errorf("%s: %w", d.key, err)
		}
		*d.out = v
	}
	if err := p.Validate(); err != nil {
		return p, err
	}
	return p, nil
}

// LoadConfig reads path (may be empty: defaults and environment only) and applies env.
func LoadConfig(path string) (*Config, error) {
	cfg := &Config{raw: map[string]yaml.Node{}}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if ok, key := secret.HoldsSecrets(data); ok {
			if err := secret.CheckPrivate(path, "config file (it holds "+key+")"); err != nil {
				return nil, err
			}
		}
		if err := parseConfig(data, cfg); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := applyEnv(reflect.ValueOf(cfg).Elem(), "PGHARBOR"); err != nil {
		return nil, err
	}
	return cfg, nil
}

// sectionsDecodedElsewhere are top-level keys that capabilities decode with Config.Section
// (clusters: see server_config.go).
var sectionsDecodedElsewhere = map[string]bool{"pool": true, "failover": true, "clusters": true}

func parseConfig(data []byte, cfg *Config) error {
	if err := yaml.Unmarshal(data, &cfg.raw); err != nil {
		return err
	}
	if cfg.raw == nil {
		cfg.raw = map[string]yaml.Node{}
	}
	v := reflect.ValueOf(cfg).Elem()
	known := map[string]bool{}
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		name := yamlName(f)
		if !f.IsExported() || name == "" {
			continue
		}
		known[name] = true
		if node, ok := cfg.raw[name]; ok {
			if err := decodeStrict(&node, v.Field(i).Addr().Interface()); err != nil {
				return fmt.Errorf("section %s: %w", name, err)
			}
		}
	}
	for k := range cfg.raw {
		if !known[k] && !sectionsDecodedElsewhere[k] {
			return fmt.Errorf("unknown section %q", k)
		}
	}
	return nil
}

// Section decodes the raw YAML section name into out (strict: unknown keys are errors) and
// then applies PGHARBOR_<NAME>_<KEY> environment overrides.
func (c *Config) Section(name string, out any) error {
	if node, ok := c.raw[name]; ok {
		if err := decodeStrict(&node, out); err != nil {
			return fmt.Errorf("config section %s: %w", name, err)
		}
	}
	return applyEnv(reflect.ValueOf(out).Elem(), "PGHARBOR_"+strings.ToUpper(name))
}

func decodeStrict(node *yaml.Node, out any) error {
	data, err := yaml.Marshal(node)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

func yamlName(f reflect.StructField) string {
	tag := f.Tag.Get("yaml")
	name, _, _ := strings.Cut(tag, ",")
	if name == "-" {
		return ""
	}
	if name == "" {
		return strings.ToLower(f.Name)
	}
	return name
}

// applyEnv walks a struct and sets each leaf from PREFIX_<YAMLNAME> when that variable is set.
func applyEnv(v reflect.Value, prefix string) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name := yamlName(f)
		if name == "" {
			continue
		}
		key := prefix + "_" + strings.ToUpper(name)
		fv := v.Field(i)
		if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Duration(0)) {
			if err := applyEnv(fv, key); err != nil {
				return err
			}
			continue
		}
		s, ok := os.LookupEnv(key)
		if !ok {
			continue
		}
		if err := setFromString(fv, s); err != nil {
			return fmt.Errorf("environment %s=%q: %w", key, s, err)
		}
	}
	return nil
}

func setFromString(fv reflect.Value, s string) error {
	if fv.Kind() == reflect.Pointer {
		nv := reflect.New(fv.Type().Elem())
		if err := setFromString(nv.Elem(), s); err != nil {
			return err
		}
		fv.Set(nv)
		return nil
	}
	if fv.Type() == reflect.TypeOf(time.Duration(0)) {
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		fv.SetInt(int64(d))
		return nil
	}
	switch fv.Kind() {
	case reflect.String:
		fv.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		fv.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		fv.SetInt(n)
	case reflect.Float64:
		n, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		fv.SetFloat(n)
	case reflect.Slice:
		if fv.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("unsupported list type %s", fv.Type())
		}
		var parts []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		fv.Set(reflect.ValueOf(parts))
	default:
		return fmt.Errorf("unsupported type %s", fv.Type())
	}
	return nil
}
