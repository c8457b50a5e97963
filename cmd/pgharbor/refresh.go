package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/replica"
	"github.com/pgharbor/pgharbor/restore"
	"github.com/pgharbor/pgharbor/wal"
)

type refreshFlags struct {
	pgdata, targetTime, target, socketDir, dbname, dbUser string
	sql, dbInclude                                        []string
	port, workers                                         int
	noSync                                                bool
	startTimeout                                          time.Duration
}

func newRefreshCmd(a *app) *cobra.Command {
	var f refreshFlags
	cmd := &cobra.Command{
		Use:   "refresh --pgdata DIR --port N [--target-time T | --target latest] [--sql FILE]…",
		Short: "Refresh a test database from the repository: delta restore, start as an independent primary, run SQL",
		Long: `refresh stops the server running on --pgdata (pg_ctl stop -m fast), delta restores the chosen
point into it (only files whose content differs are rewritten), starts it on --port as an
independent primary with archive_mode = off, so that it never pushes WAL into the repository it
came from, runs the --sql files in order (psql, stopping at the first error; e.g. scrubbing
personal data) and reports the time taken. A directory holding another cluster (another system
identifier) is refused before anything is stopped or written. With --db-include only the named
databases are fetched; the other user databases are restored as sparse zeroed files, so that
recovery runs, and dropped right after the start, before the --sql files.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return a.runRefresh(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.pgdata, "pgdata", "", "the test database's data directory (missing, empty, or an earlier refresh)")
	fl.StringVar(&f.targetTime, "target-time", "", "refresh to this time (RFC 3339 or '2006-01-02 15:04:05+00')")
	fl.StringVar(&f.target, "target", "", "latest (the default): the end of the archived WAL")
	fl.IntVar(&f.port, "port", 0, "port of the refreshed server (required: a copy must not take the production port by accident); written into postgresql.auto.conf")
	fl.StringVar(&f.socketDir, "socket-dir", "", "unix_socket_directories of the refreshed server (default: the restored setting)")
	fl.StringArrayVar(&f.sql, "sql", nil, "SQL file to run after the start, in order (repeatable)")
	fl.StringArrayVar(&f.dbInclude, "db-include", nil, "refresh only this user database (name or OID; repeatable): the others are left out and dropped after the start (template0, template1 and postgres always stay)")
	fl.StringVar(&f.dbname, "dbname", "postgres", "database the --sql files run in")
	fl.StringVar(&f.dbUser, "db-user", "postgres", "role the --sql files run as (over the unix socket, as the data directory's OS user)")
	fl.IntVar(&f.workers, "workers", 4, "bundles downloaded and written in parallel")
	fl.BoolVar(&f.noSync, "no-sync", false, "do not wait for the restored files to reach the disk (faster; a crash soon after can damage the copy)")
	fl.DurationVar(&f.startTimeout, "start-timeout", 30*time.Minute, "how long recovery may take")
	return cmd
}

type refreshReport struct {
	PGData        string          `json:"pgdata"`
	Backup        string          `json:"backup"`
	Target        string          `json:"target"`
	StoppedServer bool            `json:"stopped_server"`
	Restore       *restore.Result `json:"restore"`
	SQLFiles      []string        `json:"sql_files"`
	// Dropped are the databases --db-include left out, dropped after the start.
	Dropped        []backup.Database `json:"dropped_databases,omitempty"`
	Port           int               `json:"port"`
	StopSeconds    float64           `json:"stop_seconds"`
	RestoreSeconds float64           `json:"restore_seconds"`
	StartSeconds   float64           `json:"start_seconds"`
	SQLSeconds     float64           `json:"sql_seconds"`
	Seconds        float64           `json:"seconds"`
}

func (a *app) runRefresh(cmd *cobra.Command, f refreshFlags) error {
	ctx := cmd.Context()
	t0 := time.Now()
	if f.pgdata == "" {
		return errors.New("--pgdata DIR is required")
	}
	if f.port <= 0 || f.port > 65535 {
		return errors.New("--port N is required: the port the refreshed server listens on")
	}
	pgdata, err := filepath.Abs(f.pgdata)
	if err != nil {
		return err
	}
	t := restore.Target{Kind: restore.TargetLatest}
	switch {
	case f.targetTime != "" && f.target != "":
		return errors.New("give one target: --target-time or --target latest")
	case f.targetTime != "":
		tm, err := parseTime(f.targetTime)
		if err != nil {
			return err
		}
		t = restore.Target{Kind: restore.TargetTime, Time: tm, Action: "promote"}
	case f.target != "" && f.target != "latest":
		return fmt.Errorf("--target %q: refresh supports latest (or --target-time)", f.target)
	}
	for _, s := range f.sql {
		if _, err := os.Stat(s); err != nil {
			return fmt.Errorf("--sql: %w", err)
		}
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
	plan, err := restore.MakePlan(cat.Backups, arch, t, "")
	if err != nil {
		return err
	}
	id, err := r.ReadIdentity(ctx)
	if err != nil {
		return err
	}
	bin := a.pgBinDir(plan.Backup.PGVersion)
	// Refuse another cluster's directory before stopping anything: a mistyped --pgdata must
	// not take down and overwrite some other database.
	if ctl, err := replica.ReadControl(ctx, bin, pgdata); err == nil {
		if id.SystemIdentifier != "" && ctl.SystemIdentifier != id.SystemIdentifier {
			return fmt.Errorf("%s belongs to another cluster: its system identifier is %s, the repository's (cluster %s) is %s; refusing to refresh it, nothing was changed", pgdata, ctl.SystemIdentifier, r.Cluster(), id.SystemIdentifier)
		}
	} else if !errors.Is(err, replica.ErrNoCluster) {
		return err
	} else if ents, _ := os.ReadDir(pgdata); len(ents) > 0 {
		return fmt.Errorf("%s is not empty and holds no PostgreSQL cluster (no global/pg_control): refusing to overwrite it", pgdata)
	}
	restoreCmd, err := a.restoreCommand()
	if err != nil {
		return err
	}
	owner, err := restore.OwnerFor(pgdata)
	if err != nil {
		return err
	}
	rep := refreshReport{PGData: pgdata, Backup: plan.Backup.Label, Target: t.Kind, Port: f.port, SQLFiles: f.sql}
	if pid := replica.PostmasterPID(pgdata); pid != 0 {
		a.logger.Info("stopping the server on the refreshed directory", "pgdata", pgdata, "pid", pid)
		if err := replica.Stop(ctx, bin, pgdata, "fast", owner); err != nil {
			return err
		}
		rep.StoppedServer = true
	}
	os.Remove(filepath.Join(pgdata, "postmaster.pid")) // left by a crash: the restore refuses it
	t1 := time.Now()
	rep.StopSeconds = t1.Sub(t0).Seconds()
	boundMemory(ctx)
	bar := a.newProgress("refresh")
	res, err := restore.Execute(ctx, r, plan, restore.Options{
		PGData: pgdata, Delta: true, Workers: f.workers, RestoreCommand: restoreCmd, ArchiveOff: true,
		NoSync: f.noSync, Logger: a.logger, Progress: bar.update, DBInclude: f.dbInclude,
	})
	bar.finish()
	if err != nil {
		return fmt.Errorf("refresh of %s from backup %s: %w", pgdata, plan.Backup.Label, err)
	}
	rep.Restore = res
	set := map[string]string{"port": strconv.Itoa(f.port)}
	if f.socketDir != "" {
		set["unix_socket_directories"] = f.socketDir
	}
	if err := replica.SetServerSettings(pgdata, set, owner); err != nil {
		return err
	}
	t2 := time.Now()
	rep.RestoreSeconds = t2.Sub(t1).Seconds()
	if err := restore.StartAndWait(ctx, plan, restore.StartOptions{PGData: pgdata, BinDir: bin, Port: f.port, SocketDir: f.socketDir, Timeout: f.startTimeout, Cred: owner}); err != nil {
		return err
	}
	t3 := time.Now()
	rep.StartSeconds = t3.Sub(t2).Seconds()
	if len(res.Excluded) > 0 {
		var oids []string
		for _, d := range res.Excluded {
			oids = append(oids, strconv.FormatUint(uint64(d.OID), 10))
		}
		// The zeroed databases cannot be connected to, but can be dropped.
		drop := "SELECT format('DROP DATABASE %I', datname) FROM pg_database WHERE oid IN (" + strings.Join(oids, ",") + ")\\gexec\n"
		if err := runPSQL(bin, pgdata, "postgres", f.dbUser, "dropping the databases --db-include left out", strings.NewReader(drop), owner); err != nil {
			return err
		}
		a.logger.Info("dropped the databases --db-include left out", "databases", excludedNames(res.Excluded))
		rep.Dropped = res.Excluded
	}
	for _, file := range f.sql {
		if err := runSQLFile(bin, pgdata, f.dbname, f.dbUser, file, owner); err != nil {
			return err
		}
		a.logger.Info("sql file ran", "file", file)
	}
	rep.SQLSeconds = time.Since(t3).Seconds()
	rep.Seconds = time.Since(t0).Seconds()
	return a.print(rep, func() {
		fmt.Fprintf(a.stdout, "refreshed %s from backup %s (target %s) in %.1f s: %d files rewritten (%s%d kept, %d removed), %s written; stop %.1f s, restore %.1f s, start %.1f s, sql %.1f s\n",
			pgdata, rep.Backup, rep.Target, rep.Seconds, res.FilesWritten, patchedNote(res), res.FilesKept, res.FilesRemoved, humanBytes(res.Bytes),
			rep.StopSeconds, rep.RestoreSeconds, rep.StartSeconds, rep.SQLSeconds)
		fmt.Fprintf(a.stdout, "PostgreSQL runs on port %d as an independent primary with archive_mode = off\n", f.port)
	})
}

// runSQLFile feeds file to psql on standard input (the file need not be readable by the
// server's OS user), as that user over the server's unix socket, stopping at the first error.
func runSQLFile(bin, pgdata, dbname, dbUser, file string, owner *syscall.Credential) error {
	in, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("--sql: %w", err)
	}
	defer in.Close()
	return runPSQL(bin, pgdata, dbname, dbUser, "--sql "+file, in, owner)
}

// runPSQL runs psql with the script in on the server started on pgdata, as owner over the
// unix socket; what names the script in errors.
func runPSQL(bin, pgdata, dbname, dbUser, what string, in io.Reader, owner *syscall.Credential) error {
	port, sock, ok := replica.Endpoint(pgdata)
	if !ok {
		return fmt.Errorf("%s: cannot read the started server's port from %s/postmaster.pid", what, pgdata)
	}
	cmd := exec.Command(filepath.Join(bin, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", sock, "-p", strconv.Itoa(port), "-U", dbUser, "-d", dbname, "-f", "-")
	cmd.Stdin = in
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if owner != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: owner}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s failed (the refreshed server is running; the files before it ran): %w\n%s", what, err, strings.TrimSpace(string(out)))
	}
	return nil
}
