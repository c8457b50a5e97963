package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/pgharbor/pgharbor/internal/server"
)

// SchedulesConfig holds the cron expressions of `pgharbor server`'s jobs (5 fields or a
// descriptor such as @daily or @every 6h, optionally led by CRON_TZ=Area/City). An empty
// expression leaves the job unscheduled.
type SchedulesConfig struct {
	Backup string `yaml:"backup"`
	Verify string `yaml:"verify"`
	Expire string `yaml:"expire"`
	// Timezone applies to the expressions that do not start with CRON_TZ= (default: the
	// server's local time zone).
	Timezone string `yaml:"timezone"`
	// CatchUp runs one backup at start-up when the newest backup is older than the backup
	// schedule's interval (default true). Other missed runs are not caught up.
	CatchUp *bool `yaml:"catch_up"`
}

// ReadinessConfig bounds what /readyz accepts; zero does not check.
type ReadinessConfig struct {
	MaxBackupAge time.Duration `yaml:"max_backup_age"`
	MaxWALAge    time.Duration `yaml:"max_wal_age"`
}

// ServerConfig is the top-level `server:` section of `pgharbor server`.
type ServerConfig struct {
	Listen          string        `yaml:"listen"`           // default 127.0.0.1:9187
	ShutdownGrace   time.Duration `yaml:"shutdown_grace"`   // default 2m
	RefreshInterval time.Duration `yaml:"refresh_interval"` // default 1m
	// ArchiveTimeout is how long a scheduled backup waits for its WAL to be archived
	// (the `backup --archive-timeout` of the server's backups; default 60s).
	ArchiveTimeout time.Duration `yaml:"archive_timeout"`
}

// clusterConfig is one cluster of a configuration: an entry of `clusters:` merged over the
// top level, or the whole file when it has no `clusters:` list.
type clusterConfig struct {
	Name string
	// Key says where the cluster is in the file, for error messages: "clusters[1] (billing)"
	// or "" for the single-cluster form.
	Key string
	Cfg *Config
}

// keyOf prefixes a configuration key with the cluster's place in the file.
func (cc clusterConfig) keyOf(key string) string {
	if cc.Key == "" {
		return key
	}
	return cc.Key + "." + key
}

var clusterNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// hasClusters says whether the file lists clusters.
func (c *Config) hasClusters() bool {
	_, ok := c.raw["clusters"]
	return ok
}

// hasSection says whether the file (or the cluster's entry) has a section.
func (c *Config) hasSection(name string) bool {
	_, ok := c.raw[name]
	return ok
}

// Clusters returns the clusters of the configuration. With a `clusters:` list, each entry is
// the top level (file and environment, then flags) with the entry's own sections decoded over
// it: a key the entry does not set keeps the top level's value, maps merge key by key, and
// lists and scalars replace. Without one, the file itself is the only cluster, named after
// repo.cluster.
func (c *Config) Clusters() ([]clusterConfig, error) {
	node, ok := c.raw["clusters"]
	if !ok {
		return []clusterConfig{{Name: c.Repo.Cluster, Cfg: c}}, nil
	}
	if node.Kind != yaml.SequenceNode || len(node.Content) == 0 {
		return nil, errors.New("clusters: want a list of clusters, each with a name and its own settings (see docs/server.md)")
	}
	fields := map[string]int{}
	t := reflect.TypeOf(Config{})
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); f.IsExported() && yamlName(f) != "" {
			fields[yamlName(f)] = i
		}
	}
	var out []clusterConfig
	names := map[string]string{}
	places := map[string]string{}
	spools := map[string]string{}
	for i, item := range node.Content {
		where := fmt.Sprintf("clusters[%d]", i)
		if item.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%s: want a map of settings (name, repo, postgres, …)", where)
		}
		cfg := cloneConfig(c)
		var name string
		for j := 0; j+1 < len(item.Content); j += 2 {
			k, v := item.Content[j].Value, item.Content[j+1]
			switch fi, known := fields[k]; {
			case k == "name":
				if err := v.Decode(&name); err != nil {
					return nil, fmt.Errorf("%s.name: %w", where, err)
				}
			case k == "clusters" || k == "server":
				return nil, fmt.Errorf("%s: %s is a top-level setting, not one of a cluster", where, k)
			case known:
				if err := decodeStrict(v, reflect.ValueOf(cfg).Elem().Field(fi).Addr().Interface()); err != nil {
					return nil, fmt.Errorf("%s.%s: %w", where, k, err)
				}
			case sectionsDecodedElsewhere[k]:
				base := cfg.raw[k]
				cfg.raw[k] = mergeNodes(&base, v)
			default:
				return nil, fmt.Errorf("%s: unknown key %q", where, k)
			}
		}
		if name == "" {
			name = cfg.Repo.Cluster
		}
		if name == "" {
			return nil, fmt.Errorf("%s: no name and no repo.cluster", where)
		}
		if !clusterNameRE.MatchString(name) {
			return nil, fmt.Errorf("%s: name %q: use letters, digits, '.', '_' and '-'", where, name)
		}
		if prev, dup := names[name]; dup {
			return nil, fmt.Errorf("%s: name %q is also the name of %s", where, name, prev)
		}
		names[name] = where
		// Two entries writing into the same place would take each other's locks and mix their
		// backups' catalogues.
		place := cfg.Repo.URL + "\x00" + cfg.Repo.Cluster
		if prev, dup := places[place]; dup && cfg.Repo.Cluster != "" {
			return nil, fmt.Errorf("%s (%s): repository %s cluster %s is also %s's", where, name, cfg.Repo.URL, cfg.Repo.Cluster, prev)
		}
		places[place] = where
		// A spool holds one cluster's pushed-ahead markers and prefetched segments: a spool
		// shared by two clusters once served one cluster's WAL to another's restore. An
		// inherited spool directory therefore gets a directory per cluster.
		if sd := cfg.WAL.SpoolDir; sd != "" && sd == c.WAL.SpoolDir {
			cfg.WAL.SpoolDir = filepath.Join(sd, name)
		}
		if sd := cfg.WAL.SpoolDir; sd != "" {
			if prev, dup := spools[sd]; dup {
				return nil, fmt.Errorf("%s (%s): wal.spool_dir %s is also %s's: each cluster needs its own", where, name, sd, prev)
			}
			spools[sd] = where
		}
		out = append(out, clusterConfig{Name: name, Key: fmt.Sprintf("%s (%s)", where, name), Cfg: cfg})
	}
	return out, nil
}

// selectCluster picks the cluster the command works on: the one named, or the only one.
func (c *Config) selectCluster(name string) (clusterConfig, error) {
	list, err := c.Clusters()
	if err != nil {
		return clusterConfig{}, err
	}
	var names []string
	for _, cc := range list {
		if cc.Name == name || (name == "" && len(list) == 1) {
			return cc, nil
		}
		names = append(names, cc.Name)
	}
	if name == "" {
		return clusterConfig{}, fmt.Errorf("the configuration lists %d clusters (%s): choose one with --cluster-name or PGHARBOR_CLUSTER_NAME", len(list), strings.Join(names, ", "))
	}
	return clusterConfig{}, fmt.Errorf("--cluster-name %q: the configuration has no such cluster (it has %s)", name, strings.Join(names, ", "))
}

// cloneConfig copies c deeply, so that decoding a cluster's entry over the copy (which fills
// existing pointers and maps in place) never changes the top level or another cluster.
func cloneConfig(c *Config) *Config {
	cp := *c
	cloneValue(reflect.ValueOf(&cp).Elem())
	cp.raw = make(map[string]yaml.Node, len(c.raw))
	for k, v := range c.raw {
		if k != "clusters" {
			cp.raw[k] = v
		}
	}
	return &cp
}

func cloneValue(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				cloneValue(v.Field(i))
			}
		}
	case reflect.Pointer:
		if !v.IsNil() {
			n := reflect.New(v.Type().Elem())
			n.Elem().Set(v.Elem())
			cloneValue(n.Elem())
			v.Set(n)
		}
	case reflect.Slice:
		if !v.IsNil() {
			n := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
			reflect.Copy(n, v)
			for i := 0; i < n.Len(); i++ {
				cloneValue(n.Index(i))
			}
			v.Set(n)
		}
	case reflect.Map:
		if !v.IsNil() {
			n := reflect.MakeMapWithSize(v.Type(), v.Len())
			for it := v.MapRange(); it.Next(); {
				e := reflect.New(it.Value().Type()).Elem()
				e.Set(it.Value())
				cloneValue(e)
				n.SetMapIndex(it.Key(), e)
			}
			v.Set(n)
		}
	}
}

// mergeNodes merges YAML maps key by key (recursively); anything else in over replaces base.
func mergeNodes(base, over *yaml.Node) yaml.Node {
	if base == nil || base.Kind != yaml.MappingNode || over.Kind != yaml.MappingNode {
		return *over
	}
	out := yaml.Node{Kind: yaml.MappingNode, Tag: base.Tag, Style: base.Style}
	index := map[string]int{}
	for j := 0; j+1 < len(base.Content); j += 2 {
		index[base.Content[j].Value] = len(out.Content)
		out.Content = append(out.Content, base.Content[j], base.Content[j+1])
	}
	for j := 0; j+1 < len(over.Content); j += 2 {
		k, v := over.Content[j], over.Content[j+1]
		if at, ok := index[k.Value]; ok {
			m := mergeNodes(out.Content[at+1], v)
			out.Content[at+1] = &m
			continue
		}
		out.Content = append(out.Content, k, v)
	}
	return out
}

// scheduleSpec turns a configured expression and timezone into what the server parses, and
// checks it: the error names the key and gives the parser's reason.
func scheduleSpec(cc clusterConfig, kind server.JobKind, expr string) (string, error) {
	key := cc.keyOf("schedules." + string(kind))
	spec := strings.TrimSpace(expr)
	tz := cc.Cfg.Schedules.Timezone
	if tz != "" && !strings.HasPrefix(spec, "CRON_TZ=") && !strings.HasPrefix(spec, "TZ=") {
		if _, err := time.LoadLocation(tz); err != nil {
			return "", fmt.Errorf("%s %q: %w", cc.keyOf("schedules.timezone"), tz, err)
		}
		spec = "CRON_TZ=" + tz + " " + spec
	}
	if _, err := server.ParseSchedule(spec); err != nil {
		return "", fmt.Errorf("%s %q: %w", key, expr, err)
	}
	return spec, nil
}
