package failover

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Defaults applied by New.
const (
	DefaultHealthCheckPeriod = 2 * time.Second
	DefaultConnectTimeout    = 2 * time.Second
	DefaultQueryTimeout      = 2 * time.Second
	DefaultRetries           = 2
	DefaultRetryDelay        = 500 * time.Millisecond
	DefaultPromoteTimeout    = 60 * time.Second
	DefaultCommandTimeout    = 60 * time.Second
	DefaultUser              = "postgres"
	DefaultDatabase          = "postgres"
	DefaultSSLMode           = "prefer"
	DefaultDrainTimeout      = 10 * time.Second
	DefaultReplayTimeout     = 60 * time.Second
	DefaultRejoinWait        = 5 * time.Minute
	DefaultBinDir            = "/usr/lib/postgresql/15/bin"
	DefaultClientWait        = 30 * time.Second
)

// NodeOptions are the failover settings of one node, keyed by the node's name in the
// pool's cluster.nodes.
type NodeOptions struct {
	// NoFailover: never promote this node (pgpool's DISALLOW_TO_FAILOVER).
	NoFailover bool `yaml:"no_failover"`
	// Priority breaks ties between equally advanced standbys; higher wins.
	Priority int `yaml:"priority"`
	// DataDir is the node's data directory, for the hooks' %D and %R.
	DataDir string `yaml:"data_dir"`
	// ApplicationName is the name the standby streams under (application_name in its
	// primary_conninfo, as listed in synchronous_standby_names); the node's name when empty.
	ApplicationName string `yaml:"application_name"`
}

// Config is the `failover:` section of pgharbor.yaml. Durations are Go durations ("1s").
type Config struct {
	// Enabled runs the monitor inside `pgharbor pool`.
	Enabled bool `yaml:"enabled"`

	HealthCheckPeriod time.Duration `yaml:"health_check_period"` // between checks of the primary
	ConnectTimeout    time.Duration `yaml:"connect_timeout"`     // per check: connecting and logging in
	QueryTimeout      time.Duration `yaml:"query_timeout"`       // per check: the status query
	// Retries is how many failed checks in a row are tolerated before the primary is
	// declared failed (a timeout alone never fails it on the first check). 0 means the
	// default; a negative value means none (fail on the first refused connection).
	Retries int `yaml:"retries"`
	// RetryDelay is the pause before the next check once a check failed (instead of the period).
	RetryDelay time.Duration `yaml:"retry_delay"`

	User     string `yaml:"user"`     // monitor's login; DefaultUser when empty (needs pg_promote, ALTER SYSTEM: a superuser)
	Password string `yaml:"password"` // empty: libpq rules (PGPASSWORD, .pgpass)
	Database string `yaml:"database"` // DefaultDatabase when empty
	SSLMode  string `yaml:"sslmode"`  // DefaultSSLMode when empty

	// ReplicationUser and ReplicationPassword go into the re-pointed standbys' primary_conninfo;
	// User (and no password) when empty.
	ReplicationUser     string `yaml:"replication_user"`
	ReplicationPassword string `yaml:"replication_password"`

	// MaxLagBytes: a standby further behind than this is not promoted; 0 = no limit.
	MaxLagBytes    int64         `yaml:"max_lag_bytes"`
	PromoteTimeout time.Duration `yaml:"promote_timeout"` // pg_promote's wait

	FailoverCommand      string        `yaml:"failover_command"`       // once, after the promotion
	FollowPrimaryCommand string        `yaml:"follow_primary_command"` // once per other standby, after it was re-pointed
	OnRoleChange         string        `yaml:"on_role_change"`         // once per node whose role changed
	CommandTimeout       time.Duration `yaml:"command_timeout"`        // per hook run

	// StopCommand stops a node's PostgreSQL for a switchover (placeholders as in
	// failover_command, %d being the node to stop); without it, a node whose data_dir is on
	// this host is stopped with pg_ctl stop -m fast.
	StopCommand string `yaml:"stop_command"`
	// DrainTimeout bounds how long a switchover waits for running transactions to finish
	// once new ones are held; past it the switchover is abandoned and nothing changes.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// ReplayTimeout bounds how long a switchover waits for the target to replay everything
	// the stopped primary wrote.
	ReplayTimeout time.Duration `yaml:"replay_timeout"`
	// AutoRejoin rebuilds a former primary that comes back as a standby of the new primary
	// (pg_rewind or a delta restore; its data_dir must be on this host) and attaches it.
	AutoRejoin bool `yaml:"auto_rejoin"`
	// RejoinWait bounds a rebuild's wait for the rebuilt standby to stream.
	RejoinWait time.Duration `yaml:"rejoin_wait"`
	// BinDir holds pg_ctl, pg_controldata and pg_rewind for nodes on this host.
	BinDir string `yaml:"bin_dir"`
	// RestoreCommand, when set, is written into a rejoined standby's configuration so it can
	// fetch archived WAL (pgharbor wal fetch).
	RestoreCommand string `yaml:"restore_command"`

	// ClientWait bounds how long a new transaction through the pool waits for a reachable
	// primary while the primary is down (until the promotion); then it gets an error.
	ClientWait time.Duration `yaml:"client_wait"`

	Nodes map[string]NodeOptions `yaml:"nodes"`

	// Etcd, when set, lets several monitors run: an etcd lease elects the one that acts
	// (docs/ha.md). Without it, exactly one monitor may run.
	Etcd *EtcdConfig `yaml:"etcd"`
}

// withDefaults validates c and fills in defaults; names are the cluster's node names.
func (c Config) withDefaults(names []string) (Config, error) {
	if c.HealthCheckPeriod < 0 || c.ConnectTimeout < 0 || c.QueryTimeout < 0 || c.RetryDelay < 0 ||
		c.PromoteTimeout < 0 || c.CommandTimeout < 0 || c.DrainTimeout < 0 || c.ReplayTimeout < 0 || c.RejoinWait < 0 ||
		c.ClientWait < 0 {
		return c, errors.New("failover: durations must not be negative")
	}
	if c.MaxLagBytes < 0 {
		return c, errors.New("failover: max_lag_bytes must not be negative (0 = no limit)")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.HealthCheckPeriod, DefaultHealthCheckPeriod)
	def(&c.ConnectTimeout, DefaultConnectTimeout)
	def(&c.QueryTimeout, DefaultQueryTimeout)
	def(&c.RetryDelay, DefaultRetryDelay)
	def(&c.PromoteTimeout, DefaultPromoteTimeout)
	def(&c.CommandTimeout, DefaultCommandTimeout)
	def(&c.DrainTimeout, DefaultDrainTimeout)
	def(&c.ReplayTimeout, DefaultReplayTimeout)
	def(&c.RejoinWait, DefaultRejoinWait)
	if c.BinDir == "" {
		c.BinDir = DefaultBinDir
	}
	def(&c.ClientWait, DefaultClientWait)
	switch {
	case c.Retries == 0:
		c.Retries = DefaultRetries
	case c.Retries < 0:
		c.Retries = 0
	}
	if c.User == "" {
		c.User = DefaultUser
	}
	if c.Database == "" {
		c.Database = DefaultDatabase
	}
	if c.SSLMode == "" {
		c.SSLMode = DefaultSSLMode
	}
	if c.ReplicationUser == "" {
		c.ReplicationUser = c.User
	}
	known := map[string]bool{}
	for _, n := range names {
		known[n] = true
	}
	var unknown []string
	for n := range c.Nodes {
		if !known[n] {
			unknown = append(unknown, n)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return c, fmt.Errorf("failover.nodes names %s, which are not nodes of pool.cluster.nodes (%s)",
			strings.Join(unknown, ", "), strings.Join(names, ", "))
	}
	return c, nil
}
