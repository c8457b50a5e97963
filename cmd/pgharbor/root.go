package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// app is what every subcommand shares: global flags, the loaded configuration and the logger.
type app struct {
	configPath string
	logFormat  string
	logLevel   string
	output     string
	repoFlags  repoFlags
	// clusterName selects one entry of a `clusters:` list (--cluster-name).
	clusterName string
	// clusterErr is why no cluster could be selected (several listed, none named); commands
	// that open the repository report it.
	clusterErr error
	// clusterSelected is the name of the entry of a `clusters:` list the command works on.
	clusterSelected string

	cfg    *Config
	logger *slog.Logger
	stdout io.Writer
	stderr io.Writer
}

func newRootCmd() *cobra.Command {
	a := &app{stdout: os.Stdout, stderr: os.Stderr}
	root := &cobra.Command{
		Use:           "pgharbor",
		Short:         "PostgreSQL backups, WAL archiving, point-in-time recovery and pooling in one binary",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return a.setup(cmd)
		},
	}
	f := root.PersistentFlags()
	f.StringVar(&a.configPath, "config", os.Getenv("PGHARBOR_CONFIG"), "config file (YAML); also $PGHARBOR_CONFIG")
	f.StringVar(&a.logFormat, "log-format", envOr("PGHARBOR_LOG_FORMAT", "text"), "log format: text or json")
	f.StringVar(&a.logLevel, "log-level", envOr("PGHARBOR_LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	f.StringVarP(&a.output, "output", "o", "text", "output of listings: text or json")
	f.StringVar(&a.clusterName, "cluster-name", os.Getenv("PGHARBOR_CLUSTER_NAME"), "with a clusters: list in the config, the NAME of the cluster to work on (needed when it lists several); also $PGHARBOR_CLUSTER_NAME")
	addRepoFlags(root, a)

	root.AddCommand(newVersionCmd(a), newKeygenCmd(a), newRepoCmd(a), newServerCmd(a))
	for _, c := range extraCommands(a) {
		root.AddCommand(c)
	}
	return root
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func (a *app) setup(cmd *cobra.Command) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(a.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", a.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(a.logFormat) {
	case "text":
		a.logger = slog.New(slog.NewTextHandler(a.stderr, opts))
	case "json":
		a.logger = slog.New(slog.NewJSONHandler(a.stderr, opts))
	default:
		return fmt.Errorf("--log-format %q: want text or json", a.logFormat)
	}
	switch a.output {
	case "text", "json":
	default:
		return fmt.Errorf("--output %q: want text or json", a.output)
	}
	cfg, err := a.loadConfig(cmd)
	if err != nil {
		return err
	}
	a.cfg = cfg
	return nil
}

// annotationAllClusters marks commands that work on every cluster of a `clusters:` list
// (the server); every other command works on one.
const annotationAllClusters = "pgharbor/all-clusters"

// loadConfig reads the configuration and applies the global flags. For a command that works
// on one cluster it returns that cluster's merged configuration; --cluster, --repo and the
// other repository flags then apply to it.
func (a *app) loadConfig(cmd *cobra.Command) (*Config, error) {
	cfg, err := LoadConfig(a.configPath)
	if err != nil {
		return nil, err
	}
	if cmd.Annotations[annotationAllClusters] != "" {
		applyRepoFlags(cmd, a, cfg) // defaults for every cluster
		return cfg, nil
	}
	if cfg.hasClusters() {
		if _, err := cfg.Clusters(); err != nil {
			return nil, err // a bad entry is an error for every command, as any bad key is
		}
		cc, err := cfg.selectCluster(a.clusterName)
		if err != nil {
			a.clusterErr = err
		} else {
			cfg, a.clusterSelected = cc.Cfg, cc.Name
		}
	} else if a.clusterName != "" && a.clusterName != cfg.Repo.Cluster {
		a.clusterErr = fmt.Errorf("--cluster-name %q: the configuration has no `clusters:` list; its one cluster is %q", a.clusterName, cfg.Repo.Cluster)
	}
	applyRepoFlags(cmd, a, cfg)
	return cfg, nil
}
