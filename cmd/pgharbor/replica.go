package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/replica"
	"github.com/pgharbor/pgharbor/wal"
)

type replicaFlags struct {
	pgdata, primary, slot, appName, label, method, socketDir string
	createSlot, start, noSync                                bool
	port, workers                                            int
	wait                                                     time.Duration
}

func newReplicaCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replica",
		Short: "Seed and rebuild streaming standbys from the repository",
		Long: `replica create seeds a new standby from the newest backup in the repository (the primary
serves no data files, only the WAL after the backup); replica rebuild brings a failed standby
or a former primary back, with pg_rewind or a delta restore. Both write standby.signal,
primary_conninfo, primary_slot_name, recovery_target_timeline = 'latest' and a pgharbor
restore_command, and with --start return once the standby streams, or say why it does not.`,
	}
	cmd.AddCommand(newReplicaCreateCmd(a), newReplicaRebuildCmd(a))
	return cmd
}

func addReplicaFlags(cmd *cobra.Command, f *replicaFlags) {
	fl := cmd.Flags()
	fl.StringVar(&f.pgdata, "pgdata", "", "the standby's data directory")
	fl.StringVar(&f.primary, "primary", "", "libpq connection string of the primary, as the standby's walreceiver uses it (default: postgres.conn)")
	fl.StringVar(&f.slot, "slot", "", "physical replication slot on the primary (primary_slot_name)")
	fl.BoolVar(&f.createSlot, "create-slot", false, "create --slot on the primary when it does not exist")
	fl.StringVar(&f.appName, "application-name", "", "the standby's application_name in primary_conninfo (default: the slot name, else pgharbor)")
	fl.StringVar(&f.label, "backup", "", "restore this backup (default: the newest usable one)")
	fl.BoolVar(&f.start, "start", false, "start the standby and wait until it streams from the primary")
	fl.IntVar(&f.port, "port", 0, "the standby's port, written into postgresql.auto.conf (default: the backed-up setting)")
	fl.StringVar(&f.socketDir, "socket-dir", "", "the standby's unix_socket_directories, written into postgresql.auto.conf")
	fl.DurationVar(&f.wait, "wait", 10*time.Minute, "with --start: how long to wait for streaming before saying why it does not")
	fl.IntVar(&f.workers, "workers", 4, "bundles downloaded and written in parallel")
	fl.BoolVar(&f.noSync, "no-sync", false, "do not wait for the restored files to reach the disk")
}

func newReplicaCreateCmd(a *app) *cobra.Command {
	var f replicaFlags
	cmd := &cobra.Command{
		Use:   "create --pgdata DIR --primary CONNINFO [--slot NAME [--create-slot]] [--start --port N]",
		Short: "Seed a new standby from the repository",
		Long: `create checks the primary first (reachable, same system identifier as the repository, the
slot free), then restores the newest backup (or --backup) into the empty or missing --pgdata as
a standby, creates the slot when asked, and writes the standby configuration. Nothing is written
when a check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return a.runReplica(cmd, f, false) },
	}
	addReplicaFlags(cmd, &f)
	return cmd
}

func newReplicaRebuildCmd(a *app) *cobra.Command {
	var f replicaFlags
	cmd := &cobra.Command{
		Use:   "rebuild --pgdata DIR --primary CONNINFO [--method auto|rewind|restore] [--start]",
		Short: "Bring a failed standby or a former primary back as a standby",
		Long: `rebuild refuses a directory whose postmaster runs or whose system identifier is not the
repository's. A node that diverged from the primary's timeline (a former primary) is rewound with
pg_rewind when it can be (wal_log_hints or data checksums); otherwise, and for a node that did
not diverge (a stopped or damaged standby), a delta restore from the repository rewrites only the
files whose content differs. The node keeps its own postgresql.conf, pg_hba.conf and pg_ident.conf.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return a.runReplica(cmd, f, true) },
	}
	addReplicaFlags(cmd, &f)
	cmd.Flags().StringVar(&f.method, "method", replica.MethodAuto, "auto (pg_rewind when the node diverged and it can apply, else a delta restore), rewind or restore")
	return cmd
}

func (a *app) runReplica(cmd *cobra.Command, f replicaFlags, rebuild bool) error {
	ctx := cmd.Context()
	if f.pgdata == "" {
		return fmt.Errorf("--pgdata DIR is required")
	}
	pgdata, err := filepath.Abs(f.pgdata)
	if err != nil {
		return err
	}
	primary := f.primary
	if primary == "" {
		primary = a.cfg.Postgres.Conn
	}
	r, cat, err := a.openCatalog(ctx, true)
	if err != nil {
		return err
	}
	defer r.Backend().Close()
	arch, err := wal.ListArchive(ctx, r)
	if err != nil {
		return err
	}
	restoreCmd, err := a.restoreCommand()
	if err != nil {
		return err
	}
	id, err := r.ReadIdentity(ctx)
	if err != nil {
		return err
	}
	bin := a.pgBinDir(id.PGVersion)
	boundMemory(ctx)
	bar := a.newProgress("restore")
	o := replica.Options{
		PGData: pgdata, BinDir: bin, Primary: primary, AppName: f.appName, Slot: f.slot, CreateSlot: f.createSlot,
		Label: f.label, RestoreCommand: restoreCmd, Workers: f.workers, NoSync: f.noSync, Port: f.port, SocketDir: f.socketDir,
		Start: f.start, Wait: f.wait, Method: f.method, Logger: a.logger, Progress: bar.update,
	}
	src := replica.Source{Repo: r, Backups: cat.Backups, Archive: arch}
	var rep *replica.Report
	if rebuild {
		rep, err = replica.Rebuild(ctx, src, o)
	} else {
		rep, err = replica.Create(ctx, src, o)
	}
	bar.finish()
	if err != nil {
		return err
	}
	return a.print(rep, func() {
		verb := "created"
		if rebuild {
			verb = "rebuilt"
		}
		fmt.Fprintf(a.stdout, "standby %s in %s by %s", verb, rep.PGData, rep.Method)
		if rep.Backup != "" {
			fmt.Fprintf(a.stdout, " of backup %s", rep.Backup)
		}
		if res := rep.Restore; res != nil {
			fmt.Fprintf(a.stdout, ": %s written in %d files (%s%d kept, %d removed)", humanBytes(res.Bytes), res.FilesWritten, patchedNote(res), res.FilesKept, res.FilesRemoved)
		}
		fmt.Fprintf(a.stdout, ", %.1f s\n", rep.Seconds)
		if rep.WALStaged > 0 {
			fmt.Fprintf(a.stdout, "%d archived WAL segments staged in pg_wal; restore_command set once the standby streamed\n", rep.WALStaged)
		}
		if rep.SlotCreated {
			fmt.Fprintf(a.stdout, "slot %s created on the primary\n", rep.Slot)
		}
		if rep.Streaming {
			fmt.Fprintf(a.stdout, "the standby streams from the primary (application_name %s)\n", rep.AppName)
		} else {
			fmt.Fprintf(a.stdout, "start PostgreSQL on %s; it will stream from the primary as %s\n", rep.PGData, rep.AppName)
		}
	})
}
