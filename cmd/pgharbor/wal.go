package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pgharbor/pgharbor/wal"
)

// Exit codes of `wal fetch` (restore_command): PostgreSQL ends recovery when the command
// exits non-zero, but treats 126/127 (and death by signal) as fatal and stops instead.
const (
	exitWALMissing = 1
	exitWALFatal   = 126
)

func newWALCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "wal",
		Short: "Archive and fetch WAL (archive_command and restore_command)",
		Long: `wal push is PostgreSQL's archive_command and wal fetch its restore_command:

  archive_command = 'pgharbor --config /etc/pgharbor.yaml wal push %p'
  restore_command = 'pgharbor --config /etc/pgharbor.yaml wal fetch %f %p'

See docs/wal.md.`,
	}
	cmd.AddCommand(newWALPushCmd(a), newWALFetchCmd(a), newWALPrefetchCmd(a), newWALLsCmd(a), newWALReceiveCmd(a))
	return cmd
}

func newWALPushCmd(a *app) *cobra.Command {
	var spool, pgdata string
	var parallel int
	cmd := &cobra.Command{
		Use:   "push PATH",
		Short: "Archive one WAL file (archive_command = 'pgharbor wal push %p')",
		Long: `push archives a WAL segment, .partial, .history or .backup file. PATH is relative to
PGDATA (archive_command runs there) or absolute. Identical bytes pushed again succeed;
different bytes under an archived name are refused and the archived copy is kept. While
pushing a segment, the next wal.push_parallel segments PostgreSQL has marked ready are
pushed too, so that the calls for them return at once. Exits 0 on success, 1 otherwise
(PostgreSQL keeps the file and retries).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			opts := wal.PushOptions{
				DataDir:  a.cfg.Postgres.DataDir,
				Parallel: a.cfg.WAL.PushParallel,
				SpoolDir: a.cfg.WAL.SpoolDir,
				RepoID:   a.spoolID(),
				Logger:   a.logger,
			}
			if cmd.Flags().Changed("spool-dir") {
				opts.SpoolDir = spool
			}
			if cmd.Flags().Changed("parallel") {
				opts.Parallel = parallel
			}
			if cmd.Flags().Changed("pgdata") {
				opts.DataDir = pgdata
			}
			// The common case while catching up: an earlier call pushed this segment ahead.
			// Answer it without building the storage stack.
			if a.cfg.Repo.Cluster != "" {
				if done, err := wal.PushedAhead(a.cfg.Repo.Cluster, args[0], opts); err == nil && done {
					return nil
				}
			}
			if a.cfg.Compression.Type != "none" {
				a.cfg.Compression.Level = a.cfg.Compression.WALLevel
				if a.cfg.Compression.Level == 0 {
					a.cfg.Compression.Level = defaultWALLevel
				}
				if l := a.cfg.Compression.Level; l < 1 || l > 22 {
					return fmt.Errorf("compression.wal_level %d: want a zstd level 1..22", l)
				}
			}
			r, err := a.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Backend().Close()
			return wal.Push(ctx, r, args[0], opts)
		},
	}
	cmd.Flags().StringVar(&spool, "spool-dir", "", "root of the spools (wal.spool_dir; default $TMPDIR/pgharbor-spool); each repository and cluster has its own spool in it")
	cmd.Flags().IntVar(&parallel, "parallel", 0, "ready segments pushed along, in parallel (wal.push_parallel; default 4, -1 off)")
	cmd.Flags().StringVar(&pgdata, "pgdata", "", "PGDATA, for a relative PATH (postgres.data_dir; default the working directory)")
	return cmd
}

func newWALFetchCmd(a *app) *cobra.Command {
	var spool string
	var prefetch int
	cmd := &cobra.Command{
		Use:   "fetch NAME DEST",
		Short: "Restore one WAL file (restore_command = 'pgharbor wal fetch %f %p')",
		Long: `fetch writes the archived WAL file NAME to DEST. Exit status 1 means the archive does not
hold NAME (recovery ends there, as PostgreSQL expects); 126 means the archive could not be
read (unreachable storage, wrong key, damaged object): PostgreSQL then stops instead of
ending recovery early at the wrong point. After a segment, the next wal.fetch_prefetch
segments are downloaded in the background into the spool directory.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := a.walFetch(cmd, args[0], args[1], spool, prefetch)
			if err == nil {
				return nil
			}
			if errors.Is(err, wal.ErrSegmentMissing) {
				return &exitError{code: exitWALMissing, err: err}
			}
			if cmd.Context().Err() != nil {
				// PostgreSQL stops restore_command with SIGTERM at shutdown and expects to
				// see the signal in the wait status, not an exit code it must treat as fatal.
				signal.Reset(syscall.SIGTERM)
				_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
				time.Sleep(time.Second)
			}
			return &exitError{code: exitWALFatal, err: fmt.Errorf("%w (fatal for recovery: exit %d)", err, exitWALFatal)}
		},
	}
	cmd.Flags().StringVar(&spool, "spool-dir", "", "root of the spools (wal.spool_dir; default $TMPDIR/pgharbor-spool); each repository and cluster has its own spool in it")
	cmd.Flags().IntVar(&prefetch, "prefetch", 0, "segments downloaded ahead (wal.fetch_prefetch; default 8, -1 off)")
	return cmd
}

func (a *app) walFetch(cmd *cobra.Command, name, dest, spool string, prefetch int) error {
	ctx := cmd.Context()
	r, err := a.openRepo(ctx, true)
	if err != nil {
		return err
	}
	defer r.Backend().Close()
	opts := wal.FetchOptions{
		SpoolDir: a.cfg.WAL.SpoolDir,
		RepoID:   a.spoolID(),
		Prefetch: a.cfg.WAL.FetchPrefetch,
		Logger:   a.logger,
	}
	if cmd.Flags().Changed("spool-dir") {
		opts.SpoolDir = spool
	}
	if cmd.Flags().Changed("prefetch") {
		opts.Prefetch = prefetch
	}
	opts.StartPrefetcher = func(root, dir string) error { return startPrefetcher(cmd, root, dir) }
	return wal.Fetch(ctx, r, name, dest, opts)
}

// startPrefetcher re-executes this binary as `wal prefetch` in its own session, with the
// global flags this process got, so that restore_command returns at once and the download
// outlives it. root is the spools' root (empty: the default), dir the repository's spool,
// where its log goes (prefetch.log).
func startPrefetcher(cmd *cobra.Command, root, dir string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var args []string
	cmd.Root().PersistentFlags().VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			args = append(args, "--"+f.Name+"="+f.Value.String())
		}
	})
	args = append(args, "wal", "prefetch")
	if root != "" {
		args = append(args, "--spool-dir", root)
	}
	logf, err := os.OpenFile(filepath.Join(dir, "prefetch.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	if st, err := logf.Stat(); err == nil && st.Size() > 8<<20 {
		_ = logf.Truncate(0)
	}
	c := exec.Command(exe, args...)
	c.Stdout, c.Stderr = logf, logf
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := c.Start(); err != nil {
		return fmt.Errorf("start prefetcher %s: %w", exe, err)
	}
	return c.Process.Release()
}

func newWALPrefetchCmd(a *app) *cobra.Command {
	var spool string
	var parallel int
	cmd := &cobra.Command{
		Use:    "prefetch --spool-dir DIR",
		Short:  "Download segments ahead of restore_command (started by wal fetch)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Minute)
			defer cancel()
			r, err := a.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Backend().Close()
			if spool == "" {
				spool = a.cfg.WAL.SpoolDir
			}
			return wal.Prefetch(ctx, r, wal.PrefetchOptions{SpoolDir: spool, RepoID: a.spoolID(), Parallel: parallel, Logger: a.logger})
		},
	}
	cmd.Flags().StringVar(&spool, "spool-dir", "", "spool directory")
	cmd.Flags().IntVar(&parallel, "parallel", 4, "concurrent downloads")
	return cmd
}

func newWALLsCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "Show the WAL archive per timeline: ranges, partial segments, history files, gaps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if a.cfg.Encryption.Mode == "" {
				a.cfg.Encryption.Mode = "none" // listing needs no key; history files are read when an identity is given
			}
			r, err := a.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Backend().Close()
			ar, err := wal.ListArchive(ctx, r)
			if err != nil {
				return err
			}
			if ar.Timelines == nil {
				ar.Timelines = []wal.TimelineArchive{}
			}
			return a.print(ar, func() { printArchive(a, ar) })
		},
	}
}

func printArchive(a *app, ar wal.Archive) {
	if len(ar.Timelines) == 0 {
		fmt.Fprintln(a.stdout, "WAL archive is empty")
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	if len(ar.Timelines) > 0 {
		fmt.Fprintln(tw, "TIMELINE\tFIRST\tLAST\tSEGMENTS\tPARTIAL\tHISTORY\tGAPS")
	}
	for _, tl := range ar.Timelines {
		hist := "no"
		if tl.HasHistory {
			hist = "yes"
			if tl.History != nil && len(tl.History.Entries) > 0 {
				e := tl.History.Entries[len(tl.History.Entries)-1]
				hist = fmt.Sprintf("from %d at %s", e.TLI, e.Switch)
			}
		}
		gaps := "none"
		if len(tl.Gaps) > 0 {
			var n uint64
			for _, g := range tl.Gaps {
				n += g.Count
			}
			gaps = strconv.Itoa(len(tl.Gaps)) + " (" + strconv.FormatUint(n, 10) + " segments)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\t%s\n", tl.TLI, dash(tl.First), dash(tl.Last), tl.Count, len(tl.Partial), hist, gaps)
	}
	tw.Flush()
	for _, tl := range ar.Timelines {
		for _, g := range tl.Gaps {
			fmt.Fprintf(a.stdout, "GAP timeline %d: %s .. %s (%d segments missing)\n", g.TLI, g.From, g.To, g.Count)
		}
	}
	if !ar.Newest.IsZero() {
		fmt.Fprintf(a.stdout, "%d objects, %d bytes stored, newest %s\n", ar.Objects, ar.StoredBytes, ar.Newest.UTC().Format(time.RFC3339))
	}
	for _, w := range ar.Warnings {
		fmt.Fprintln(a.stdout, "warning:", w)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return strings.TrimSpace(s)
}

// spoolID names the configured repository's and cluster's spool: the repository URL with the
// endpoint that says which server holds it, so that two servers' buckets of the same name
// never share a spool.
func (a *app) spoolID() string {
	loc := a.cfg.Repo.URL
	switch {
	case strings.HasPrefix(loc, "s3:"):
		loc += "\x00" + a.cfg.S3.Endpoint
	case strings.HasPrefix(loc, "gs:"), strings.HasPrefix(loc, "gcs:"):
		loc += "\x00" + a.cfg.GCS.Endpoint
	}
	if len(a.cfg.Repo.VerifyKeys) > 0 {
		// Segments prefetched by a fetch that did not check signatures must never be handed
		// to one that does.
		keys := slices.Sorted(slices.Values(a.cfg.Repo.VerifyKeys))
		loc += "\x00verify:" + strings.ToLower(strings.Join(keys, ","))
	}
	return wal.SpoolID(loc, a.cfg.Repo.Cluster)
}
