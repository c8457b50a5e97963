package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/internal/server"
	"github.com/pgharbor/pgharbor/restore"
	"github.com/pgharbor/pgharbor/wal"
)

// infoReport is what info shows; the server's /api/v1/clusters shows the same per cluster.
type infoReport = server.Facts

// readInfo reads a cluster's facts from its repository: `pgharbor info` and the server run it.
func readInfo(ctx context.Context, r *repo.Repo) (*infoReport, error) {
	cat, err := backup.LoadCatalog(ctx, r)
	if err != nil {
		return nil, err
	}
	id, err := r.ReadIdentity(ctx)
	if err != nil {
		return nil, err
	}
	arch, err := wal.ListArchive(ctx, r)
	if err != nil {
		return nil, err
	}
	recv, err := wal.ReceiverStatuses(ctx, r)
	if err != nil {
		return nil, err
	}
	return &infoReport{Identity: id, Catalog: cat, WAL: arch, Window: restore.ComputeWindow(restore.Usable(cat.Backups, arch), arch.Newest), Receivers: recv}, nil
}

func newInfoCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "info",
		Short: "Show backups, archived WAL per timeline, gaps and the recoverable window",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if a.cfg.Encryption.Mode == "" {
				a.cfg.Encryption.Mode = "none" // listing needs no key; the identity is read in clear
			}
			r, err := a.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Backend().Close()
			rep, err := readInfo(ctx, r)
			if err != nil {
				return err
			}
			return a.print(rep, func() { a.printInfo(*rep) })
		},
	}
}

func (a *app) printInfo(rep infoReport) {
	w := a.stdout
	fmt.Fprintf(w, "cluster %s (system identifier %s, PostgreSQL %d, encryption %s)\n\n", rep.Identity.Cluster, rep.Identity.SystemIdentifier, rep.Identity.PGVersion/10000, rep.Identity.Encryption)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKUP\tTYPE\tPARENT\tMETHOD\tSTART\tSTOP\tTIMELINE\tSTART LSN\tSTOP LSN\tSIZE\tSTORED\tSECONDS")
	for _, b := range rep.Catalog.Backups {
		method := b.Method
		if method == "" {
			method = backup.MethodStream // backups from before the method was recorded
		}
		parent := b.Parent
		if parent == "" {
			parent = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%.1f\n", b.Label, b.Type, parent, method, b.StartTime.Format(time.RFC3339), b.StopTime.Format(time.RFC3339),
			b.Timeline, b.StartLSN, b.StopLSN, humanBytes(b.Size), humanBytes(b.StoredSize), b.Duration)
	}
	tw.Flush()
	if len(rep.Catalog.Backups) == 0 {
		fmt.Fprintln(w, "(no complete backup)")
	}
	for _, l := range rep.Catalog.Pinned {
		fmt.Fprintf(w, "backup %s is pinned: expire keeps it (`pgharbor backup unpin %s`)\n", l, l)
	}
	for _, b := range rep.Catalog.Backups {
		if len(b.Annotations) == 0 {
			continue
		}
		keys := slices.Sorted(maps.Keys(b.Annotations))
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + strconv.Quote(b.Annotations[k])
		}
		fmt.Fprintf(w, "backup %s annotations: %s\n", b.Label, strings.Join(parts, " "))
	}
	for _, rf := range rep.Catalog.Refused {
		fmt.Fprintf(w, "REFUSED backup %s: %s\n", rf.Label, rf.Reason)
	}
	for _, inc := range rep.Catalog.Incomplete {
		state := "did not finish: remove with `pgharbor backup cleanup`"
		switch {
		case inc.Running:
			state = "running"
		case inc.Expiring:
			state = "half-deleted by an interrupted expire: the next `pgharbor expire` finishes it"
		}
		fmt.Fprintf(w, "incomplete backup %s: %d objects, %s (%s)\n", inc.Label, inc.Objects, humanBytes(inc.Bytes), state)
	}
	fmt.Fprintln(w)
	for _, t := range rep.WAL.Timelines {
		fmt.Fprintf(w, "WAL timeline %d: %d segments %s .. %s", t.TLI, t.Count, t.First, t.Last)
		if t.HasHistory {
			fmt.Fprint(w, " (history archived)")
		}
		fmt.Fprintln(w)
		for _, g := range t.Gaps {
			fmt.Fprintf(w, "  GAP: %d segments missing %s .. %s: recovery cannot pass it\n", g.Count, g.From, g.To)
		}
	}
	if len(rep.WAL.Timelines) == 0 {
		fmt.Fprintln(w, "no archived WAL")
	}
	for _, t := range rep.WAL.Timelines {
		if t.StreamedEnd != 0 {
			fmt.Fprintf(w, "WAL timeline %d: streamed up to %s after the last complete segment\n", t.TLI, t.StreamedEnd)
		}
	}
	for _, s := range rep.Receivers {
		state := "stopped"
		if s.Streaming {
			state = "streaming"
		}
		if age := time.Since(s.Reported); s.Streaming && age > 30*time.Second {
			state = fmt.Sprintf("not reporting for %s (killed, or cut off from the repository)", age.Round(time.Second))
		}
		lag := ""
		if s.ServerEnd > s.Stored {
			lag = fmt.Sprintf(", %s behind the server", humanBytes(int64(s.ServerEnd-s.Stored)))
		}
		fmt.Fprintf(w, "WAL receiver (slot %s): %s, timeline %d, stored up to %s%s, last report %s\n", s.Slot, state, s.Timeline, s.Stored, lag, s.Reported.Format(time.RFC3339))
		if s.LastError != "" {
			fmt.Fprintf(w, "  last error: %s\n", s.LastError)
		}
	}
	for _, warn := range rep.WAL.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
	fmt.Fprintf(w, "\nrecoverable window: %s\n", rep.Window)
}

func newVerifyCmd(a *app) *cobra.Command {
	var label string
	var workers int
	cmd := &cobra.Command{
		Use:   "verify [--backup LABEL]",
		Short: "Check that backups decrypt and match their manifests, and that the WAL they need is archived and intact",
		Long: `verify reads every object of a backup (all backups without --backup), decrypting and
decompressing it, checks every file's pieces against the manifest's CRC-32C and SHA-256, and
reads the WAL from the backup's start to its stop (it must decrypt, be signed when verify
keys are configured, and belong to this system). For a diff or
incr backup it also reads the bundles of the earlier backups its pieces point into (the chain),
and an error names the damaged object and the backup it belongs to. Verifying all backups
(oldest first), a piece found intact earlier in the run is not read again: an incremental's
unchanged chunks and files are those pieces; the unchanged pages of a changed chunk are
parts of one, read again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			results, err := a.runVerify(cmd.Context(), label, workers)
			if err != nil && len(results) == 0 {
				return err
			}
			if results == nil {
				results = []*backup.VerifyResult{}
			}
			// Backups refused for their signature come after the ones that verified.
			if perr := a.print(results, func() {
				for _, res := range results {
					chain := ""
					if len(res.References) > 0 {
						chain = ", pieces in " + strings.Join(res.References, ", ") + " intact"
						if res.AlreadyVerified > 0 {
							chain += fmt.Sprintf(" (%d of their bundles verified earlier in this run, not read again)", res.AlreadyVerified)
						}
					}
					fmt.Fprintf(a.stdout, "backup %s OK: %d files, %d bundles, %s%s, its WAL intact\n", res.Label, res.Files, res.Bundles, humanBytes(res.Bytes), chain)
				}
				if len(results) == 0 {
					fmt.Fprintln(a.stdout, "no complete backup to verify")
				}
			}); perr != nil {
				return perr
			}
			return err
		},
	}
	cmd.Flags().StringVar(&label, "backup", "", "verify only this backup")
	cmd.Flags().IntVar(&workers, "workers", 4, "bundles read in parallel")
	return cmd
}

// runVerify verifies one backup (label) or all of them: `pgharbor verify` and the server's
// verify job run it.
func (a *app) runVerify(ctx context.Context, label string, workers int) ([]*backup.VerifyResult, error) {
	r, cat, err := a.openCatalog(ctx, true)
	if err != nil {
		return nil, err
	}
	defer r.Backend().Close()
	var todo []backup.Summary
	if label != "" {
		b, ok := cat.Find(label)
		switch {
		case ok:
			todo = append(todo, b)
		case !slices.ContainsFunc(cat.Refused, func(rf backup.Refused) bool { return rf.Label == label }):
			return nil, fmt.Errorf("no complete backup %q (see `pgharbor info`)", label)
		}
	} else {
		todo = cat.Backups
	}
	check := a.archiveCheck(r, 0)
	var results []*backup.VerifyResult
	// One Verifier for the run, oldest backup first: a bundle that several backups of a
	// chain point into is read once.
	v := backup.NewVerifier(r, workers)
	for i, b := range todo {
		v.Expect(todo[i:])
		res, err := v.Verify(ctx, b.Label)
		if err != nil {
			return nil, err
		}
		if err := check(ctx, b.Timeline, b.StartLSN, b.StopLSN, b.WALSegmentSize); err != nil {
			return nil, fmt.Errorf("backup %s: %w", b.Label, err)
		}
		// The WAL that makes the backup consistent is read whole: a forged or damaged
		// segment fails here, not in the middle of a restore.
		segs, err := segmentsBetween(b.Timeline, b.StartLSN, b.StopLSN, b.WALSegmentSize)
		if err != nil {
			return nil, fmt.Errorf("backup %s: %w", b.Label, err)
		}
		for _, seg := range segs {
			name, err := seg.SegmentName(b.WALSegmentSize)
			if err == nil {
				err = wal.VerifySegment(ctx, r, name)
			}
			if err != nil {
				return nil, fmt.Errorf("backup %s: WAL: %w", b.Label, err)
			}
		}
		results = append(results, res)
		a.logger.Info("backup verified", "label", b.Label, "files", res.Files, "bundles", res.Bundles)
	}
	var refused []string
	for _, rf := range cat.Refused {
		if label == "" || rf.Label == label {
			refused = append(refused, fmt.Sprintf("backup %s: %s", rf.Label, rf.Reason))
		}
	}
	if len(refused) > 0 {
		return results, fmt.Errorf("%d backups failed authentication:\n%s", len(refused), strings.Join(refused, "\n"))
	}
	return results, nil
}
