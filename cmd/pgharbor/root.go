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
	addRepoFlags(root, a)

	root.AddCommand(newVersionCmd(a), newKeygenCmd(a), newRepoCmd(a))
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
	cfg, err := LoadConfig(a.configPath)
	if err != nil {
		return err
	}
	a.cfg = cfg
	return applyRepoFlags(cmd, a)
}
