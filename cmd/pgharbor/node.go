package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// consoleFlags say how to reach the pool's admin console, the channel of the node commands
// (as pgpool's pcp_* tools reach pcp).
type consoleFlags struct {
	addr, user, sslmode string
}

func addConsoleFlags(fl *pflag.FlagSet, f *consoleFlags) {
	fl.StringVar(&f.addr, "pool", "", "the pool's address host:port (default: pool.listen of the config)")
	fl.StringVar(&f.user, "admin-user", "", "the admin console user (default: the first of pool.admin_users, else postgres); password from PGPASSWORD or ~/.pgpass")
	fl.StringVar(&f.sslmode, "sslmode", "prefer", "libpq sslmode for the admin console connection")
}

// consoleQuery runs one admin console command and returns its rows (text).
func (a *app) consoleQuery(ctx context.Context, f consoleFlags, q string) ([]string, [][]string, error) {
	addr, user := f.addr, f.user
	if addr == "" || user == "" {
		cfg, err := loadPoolConfig(a, "")
		if err != nil && addr == "" {
			return nil, nil, fmt.Errorf("no --pool address and no pool: section to take it from: %w", err)
		}
		if addr == "" {
			addr = cfg.Listen
			if addr == "" {
				addr = "127.0.0.1:6432"
			}
		}
		if user == "" && len(cfg.AdminUsers) > 0 {
			user = cfg.AdminUsers[0]
		}
	}
	if user == "" {
		user = "postgres"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("pool address %q: %w", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	if _, err := strconv.Atoi(port); err != nil {
		return nil, nil, fmt.Errorf("pool address %q: bad port", addr)
	}
	q1 := func(s string) string {
		return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `'`, `\'`) + "'"
	}
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s dbname=pgharbor sslmode=%s application_name='pgharbor cli'",
		q1(host), port, q1(user), q1(f.sslmode)))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to the pool's admin console at %s: %w", addr, err)
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(ctx, q).ReadAll()
	if err != nil {
		return nil, nil, err
	}
	if len(res) != 1 {
		return nil, nil, fmt.Errorf("%s: %d results, want 1", q, len(res))
	}
	var cols []string
	for _, fd := range res[0].FieldDescriptions {
		cols = append(cols, fd.Name)
	}
	var rows [][]string
	for _, r := range res[0].Rows {
		var row []string
		for _, v := range r {
			row = append(row, string(v))
		}
		rows = append(rows, row)
	}
	return cols, rows, nil
}

// runNodeCommand sends a node command and prints its result (the sentence, or its JSON
// detail with --output json).
func (a *app) runNodeCommand(ctx context.Context, f consoleFlags, q string) error {
	_, rows, err := a.consoleQuery(ctx, f, q)
	if err != nil {
		return err
	}
	if len(rows) != 1 || len(rows[0]) != 2 {
		return fmt.Errorf("%s: unexpected answer from the admin console", q)
	}
	if a.output == "json" {
		_, err := fmt.Fprintln(a.stdout, rows[0][1])
		return err
	}
	_, err = fmt.Fprintln(a.stdout, rows[0][0])
	return err
}

func newNodeCmd(a *app) *cobra.Command {
	var f consoleFlags
	cmd := &cobra.Command{
		Use:   "node",
		Short: "List, attach, detach or recover the pool's nodes (pcp-like, through the pool's admin console)",
		Long: `The node commands talk to the running pool's admin console (database "pgharbor"), as
pgpool's pcp_* tools talk to pcp; the pool must run the failover monitor's code (it does
whenever failover: and two or more nodes are configured; failover.enabled only decides
whether it also watches and fails over). A node is given by its id (SHOW POOL_NODES) or name.

  node list          SHOW POOL_NODES
  node detach N      take N out of routing and out of the failover candidates
  node attach N      put N back, after checking that it is the primary or a standby
                     streaming the primary's timeline
  node recover N     rebuild N as a standby of the current primary (pg_rewind or a delta
                     restore from the repository; N's failover.nodes data_dir must be on
                     the pool's host), then attach it

See docs/ha.md.`,
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "Show the nodes as the pool sees them (SHOW POOL_NODES)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cols, rows, err := a.consoleQuery(cmd.Context(), f, "SHOW POOL_NODES")
			if err != nil {
				return err
			}
			if a.output == "json" {
				var out []map[string]string
				for _, r := range rows {
					m := map[string]string{}
					for i, c := range cols {
						if i < len(r) {
							m[c] = r[i]
						}
					}
					out = append(out, m)
				}
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			fmt.Fprintln(a.stdout, strings.Join(cols, " | "))
			for _, r := range rows {
				fmt.Fprintln(a.stdout, strings.Join(r, " | "))
			}
			return nil
		},
	}
	cmd.AddCommand(list)
	for _, verb := range []string{"attach", "detach", "recover"} {
		short := map[string]string{
			"attach":  "Put a node back into routing after checking its role and timeline",
			"detach":  "Take a node out of routing and out of the failover candidates",
			"recover": "Rebuild a node as a standby of the current primary and attach it",
		}[verb]
		cmd.AddCommand(&cobra.Command{
			Use:   verb + " NODE",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return a.runNodeCommand(cmd.Context(), f, strings.ToUpper(verb)+" NODE "+args[0])
			},
		})
	}
	addConsoleFlags(cmd.PersistentFlags(), &f)
	return cmd
}
