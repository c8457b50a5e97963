package pool

import (
	"errors"
	"fmt"
	"time"

	"github.com/pgharbor/pgharbor/pool/cluster"
)

// PoolMode says when a server connection goes back to the pool.
type PoolMode string

// Pool modes (PgBouncer's names).
const (
	// ModeSession keeps one server connection for the client's whole session.
	ModeSession PoolMode = "session"
	// ModeTransaction hands the server connection back at the end of every transaction
	// (ReadyForQuery with status idle).
	ModeTransaction PoolMode = "transaction"
)

// Authentication types for clients.
const (
	AuthSCRAM = "scram-sha-256"
	AuthMD5   = "md5"
	AuthTrust = "trust"
)

// AdminDatabase is the virtual database of the admin console.
const AdminDatabase = "pgharbor"

// Defaults applied by New.
const (
	DefaultListen               = "127.0.0.1:6432"
	DefaultPoolSize             = 20
	DefaultMaxClientConn        = 1000
	DefaultQueryWaitTimeout     = 120 * time.Second
	DefaultServerIdleTimeout    = 600 * time.Second
	DefaultServerLifetime       = 3600 * time.Second
	DefaultServerConnectTimeout = 15 * time.Second
	DefaultServerCheckDelay     = 30 * time.Second
	// DefaultMaxPreparedStatements is PgBouncer's default for the same setting.
	DefaultMaxPreparedStatements = 200
	DefaultAuthQuery             = "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1"
)

// Config is the `pool:` section of pgharbor.yaml. Durations are Go durations ("30s").
// Zero values take the defaults above; a negative timeout turns the timeout off.
type Config struct {
	Listen        string `yaml:"listen"`          // host:port for TCP clients; DefaultListen when empty
	UnixSocketDir string `yaml:"unix_socket_dir"` // also listen on DIR/.s.PGSQL.<port> when set

	PoolMode        PoolMode `yaml:"pool_mode"`         // session (default) or transaction
	DefaultPoolSize int      `yaml:"default_pool_size"` // max server connections per (node, database, user)
	MinPoolSize     int      `yaml:"min_pool_size"`     // idle server connections kept open per pool
	MaxClientConn   int      `yaml:"max_client_conn"`   // client connections accepted at once
	// MaxPreparedStatements caps the protocol-level prepared statements the pool keeps
	// prepared on each server connection in transaction mode; beyond it the least recently
	// used one is closed (and prepared again when a client uses it).
	MaxPreparedStatements int `yaml:"max_prepared_statements"`

	ServerIdleTimeout    time.Duration `yaml:"server_idle_timeout"`    // close server connections idle this long
	QueryWaitTimeout     time.Duration `yaml:"query_wait_timeout"`     // max wait for a server connection (or a paused pool)
	ServerLifetime       time.Duration `yaml:"server_lifetime"`        // close server connections this old when released
	ClientIdleTimeout    time.Duration `yaml:"client_idle_timeout"`    // close clients idle (not in a transaction) this long; off when 0
	ServerConnectTimeout time.Duration `yaml:"server_connect_timeout"` // dial + login to a server
	ServerCheckDelay     time.Duration `yaml:"server_check_delay"`     // probe idle connections older than this before reuse

	AuthType     string `yaml:"auth_type"`     // scram-sha-256 (default), md5 or trust
	AuthFile     string `yaml:"auth_file"`     // PgBouncer userlist.txt format: "user" "secret"
	AuthQuery    string `yaml:"auth_query"`    // used for users not in auth_file when auth_user is set
	AuthUser     string `yaml:"auth_user"`     // runs auth_query; its password comes from auth_file
	AuthDatabase string `yaml:"auth_database"` // database auth_query runs in; the client's database when empty

	// ServerUser and ServerPassword, when set, are used for every server connection instead
	// of the client's user (and its auth_file password or SCRAM keys).
	ServerUser     string `yaml:"server_user"`
	ServerPassword string `yaml:"server_password"`

	// ServerTLSMode is disable, prefer (the default, as in PgBouncer and libpq), require,
	// verify-ca or verify-full; it covers server connections and the auth_query connection.
	ServerTLSMode   string `yaml:"server_tls_sslmode"`
	ServerTLSCAFile string `yaml:"server_tls_ca_file"`

	ClientTLSMode     string `yaml:"client_tls_sslmode"` // disable, allow, prefer (default when a key is set), require
	ClientTLSCertFile string `yaml:"client_tls_cert_file"`
	ClientTLSKeyFile  string `yaml:"client_tls_key_file"`

	AdminUsers []string `yaml:"admin_users"` // users allowed on the admin database "pgharbor"

	LoadBalance               bool     `yaml:"load_balance"`                 // send read-only traffic to standbys
	StatementLevelLoadBalance bool     `yaml:"statement_level_load_balance"` // classify each transaction (transaction mode)
	WriteFunctions            []string `yaml:"write_functions"`              // extra function names that make a SELECT a write

	Databases map[string]DatabaseConfig `yaml:"databases"` // per-database overrides, by the name clients use
	Users     map[string]UserConfig     `yaml:"users"`     // per-user overrides

	Cluster cluster.Config `yaml:"cluster"` // the PostgreSQL nodes; the first primary found takes writes

	MetricsListen string `yaml:"metrics_listen"` // host:port serving Prometheus /metrics; off when empty

	// IOEngine is how transaction-mode sessions on plain sockets run: "epoll" (the default)
	// on one event-loop thread, "goroutines" on a goroutine each like every other session.
	IOEngine string `yaml:"io_engine"`
	// IOUring is whether the event loop makes the socket reads and the writes of one batch
	// of events in one system call each through an io_uring: "auto" (the default) where the
	// kernel allows it, "off" never (a recvfrom or sendto per socket).
	IOUring string `yaml:"io_uring"`
}

// IOEngine values.
const (
	IOEngineEpoll      = "epoll"
	IOEngineGoroutines = "goroutines"
)

// DatabaseConfig overrides settings for one database name.
type DatabaseConfig struct {
	DBName      string   `yaml:"dbname"`        // database on the server; the client's name when empty
	User        string   `yaml:"user"`          // force this server user
	Password    string   `yaml:"password"`      // with user
	PoolMode    PoolMode `yaml:"pool_mode"`     // overrides pool_mode
	PoolSize    int      `yaml:"pool_size"`     // overrides default_pool_size
	MinPoolSize int      `yaml:"min_pool_size"` // overrides min_pool_size
	// Route "reader" makes every session of this database read-only and load-balanced;
	// "primary" never load-balances; empty follows load_balance.
	Route string `yaml:"route"`
}

// UserConfig overrides settings for one user.
type UserConfig struct {
	PoolMode PoolMode `yaml:"pool_mode"`
	PoolSize int      `yaml:"pool_size"`
}

// withDefaults validates c and fills in defaults.
func (c Config) withDefaults() (Config, error) {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.PoolMode == "" {
		c.PoolMode = ModeSession
	}
	if err := c.PoolMode.validate(); err != nil {
		return c, err
	}
	if c.DefaultPoolSize == 0 {
		c.DefaultPoolSize = DefaultPoolSize
	}
	if c.DefaultPoolSize < 0 || c.MinPoolSize < 0 || c.MinPoolSize > c.DefaultPoolSize {
		return c, fmt.Errorf("pool: default_pool_size %d and min_pool_size %d: want 0 <= min <= size", c.DefaultPoolSize, c.MinPoolSize)
	}
	if c.MaxClientConn == 0 {
		c.MaxClientConn = DefaultMaxClientConn
	}
	if c.MaxPreparedStatements == 0 {
		c.MaxPreparedStatements = DefaultMaxPreparedStatements
	}
	if c.MaxPreparedStatements < 0 {
		return c, fmt.Errorf("pool: max_prepared_statements %d: want a positive number", c.MaxPreparedStatements)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.QueryWaitTimeout, DefaultQueryWaitTimeout)
	def(&c.ServerIdleTimeout, DefaultServerIdleTimeout)
	def(&c.ServerLifetime, DefaultServerLifetime)
	def(&c.ServerConnectTimeout, DefaultServerConnectTimeout)
	def(&c.ServerCheckDelay, DefaultServerCheckDelay)
	if c.AuthType == "" {
		c.AuthType = AuthSCRAM
	}
	switch c.AuthType {
	case AuthSCRAM, AuthMD5, AuthTrust:
	default:
		return c, fmt.Errorf("pool: auth_type %q: want scram-sha-256, md5 or trust", c.AuthType)
	}
	if c.AuthType != AuthTrust && c.AuthFile == "" && c.AuthUser == "" {
		return c, fmt.Errorf("pool: auth_type %s needs auth_file or auth_user (or auth_type trust)", c.AuthType)
	}
	if c.AuthQuery == "" {
		c.AuthQuery = DefaultAuthQuery
	}
	switch c.ServerTLSMode {
	case "":
		c.ServerTLSMode = "prefer"
	case "disable", "prefer", "require", "verify-ca", "verify-full":
	default:
		return c, fmt.Errorf("pool: server_tls_sslmode %q: want disable, prefer, require, verify-ca or verify-full", c.ServerTLSMode)
	}
	if (c.ClientTLSCertFile == "") != (c.ClientTLSKeyFile == "") {
		return c, errors.New("pool: client_tls_cert_file and client_tls_key_file go together")
	}
	switch c.ClientTLSMode {
	case "":
		c.ClientTLSMode = "disable"
		if c.ClientTLSCertFile != "" {
			c.ClientTLSMode = "prefer"
		}
	case "disable":
	case "allow", "prefer", "require":
		if c.ClientTLSCertFile == "" {
			return c, fmt.Errorf("pool: client_tls_sslmode %s needs client_tls_cert_file and client_tls_key_file", c.ClientTLSMode)
		}
	default:
		return c, fmt.Errorf("pool: client_tls_sslmode %q: want disable, allow, prefer or require", c.ClientTLSMode)
	}
	switch c.IOEngine {
	case "":
		c.IOEngine = IOEngineEpoll
	case IOEngineEpoll, IOEngineGoroutines:
	default:
		return c, fmt.Errorf("pool: io_engine %q: want epoll or goroutines", c.IOEngine)
	}
	switch c.IOUring {
	case "":
		c.IOUring = "auto"
	case "auto", "off":
	default:
		return c, fmt.Errorf("pool: io_uring %q: want auto or off", c.IOUring)
	}
	for name, d := range c.Databases {
		if d.PoolMode != "" {
			if err := d.PoolMode.validate(); err != nil {
				return c, fmt.Errorf("database %s: %w", name, err)
			}
		}
		switch d.Route {
		case "", "primary", "reader":
		default:
			return c, fmt.Errorf("pool: database %s: route %q: want primary or reader", name, d.Route)
		}
		if d.PoolSize < 0 || d.MinPoolSize < 0 {
			return c, fmt.Errorf("pool: database %s: negative pool size", name)
		}
	}
	for name, u := range c.Users {
		if u.PoolMode != "" {
			if err := u.PoolMode.validate(); err != nil {
				return c, fmt.Errorf("user %s: %w", name, err)
			}
		}
	}
	if len(c.Cluster.Nodes) == 0 {
		return c, errors.New("pool: cluster.nodes is empty: list at least the primary (host, port)")
	}
	return c, nil
}

func (m PoolMode) validate() error {
	switch m {
	case ModeSession, ModeTransaction:
		return nil
	}
	return fmt.Errorf("pool: pool_mode %q: want session or transaction", string(m))
}

// positive turns "negative means off" into 0.
func positive(d time.Duration) time.Duration {
	if d < 0 {
		return 0
	}
	return d
}

func (c *Config) isAdmin(user string) bool {
	for _, u := range c.AdminUsers {
		if u == user {
			return true
		}
	}
	return false
}

// target is what one client's (database, user) resolves to.
type target struct {
	clientDB, clientUser string
	dbname, user         string // on the server
	password             string // forced server password ("" = from auth)
	forced               bool   // user/password forced by config
	mode                 PoolMode
	size, minSize        int
	route                string
}

func (c *Config) resolve(db, user string) target {
	t := target{clientDB: db, clientUser: user, dbname: db, user: user, mode: c.PoolMode, size: c.DefaultPoolSize, minSize: c.MinPoolSize}
	if c.ServerUser != "" {
		t.user, t.password, t.forced = c.ServerUser, c.ServerPassword, true
	}
	if u, ok := c.Users[user]; ok {
		if u.PoolMode != "" {
			t.mode = u.PoolMode
		}
		if u.PoolSize > 0 {
			t.size = u.PoolSize
		}
	}
	if d, ok := c.Databases[db]; ok {
		if d.DBName != "" {
			t.dbname = d.DBName
		}
		if d.User != "" {
			t.user, t.password, t.forced = d.User, d.Password, true
		}
		if d.PoolMode != "" {
			t.mode = d.PoolMode
		}
		if d.PoolSize > 0 {
			t.size = d.PoolSize
		}
		if d.MinPoolSize > 0 {
			t.minSize = d.MinPoolSize
		}
		t.route = d.Route
	}
	if t.minSize > t.size {
		t.minSize = t.size
	}
	return t
}
