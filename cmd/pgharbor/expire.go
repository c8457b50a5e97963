package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/retention"
)

func newExpireCmd(a *app) *cobra.Command {
	var dryRun bool
	var fullCount, minCount int
	var younger, window, set string
	cmd := &cobra.Command{
		Use:   "expire [--dry-run] [--set LABEL]",
		Short: "Delete the backups and WAL the retention policy no longer keeps",
		Long: `expire applies the retention policy (the retention section of the config, or the flags):
it keeps the newest N full backups, every backup younger than a duration, every moment of a
recovery window restorable, never fewer than the minimum count, and every pinned backup
(` + "`pgharbor backup pin`" + `); it deletes the other backups and the WAL that no kept backup
can reach. Backups are ordered by stop time, never by label. --dry-run prints what would go
and the rule that decided each backup, and deletes nothing. expire and backup exclude each
other through the repository lock; an expire that was killed is finished by the next one.
--set LABEL deletes that one backup and the incremental and differential backups that
depend on it, whatever the policy says (refused for a pinned backup, or when no backup would
be left), and the WAL no remaining backup reaches. See docs/retention.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			rc := a.cfg.Retention
			f := cmd.Flags()
			if f.Changed("full-count") {
				rc.FullCount = fullCount
			}
			if f.Changed("keep-younger-than") {
				rc.KeepYoungerThan = younger
			}
			if f.Changed("window") {
				rc.Window = window
			}
			if f.Changed("min-count") {
				rc.MinCount = minCount
			}
			policy, err := rc.Policy()
			if err != nil && set == "" {
				return err
			}
			r, err := a.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Backend().Close()
			delay := expireTestDelay()
			rep, err := retention.Expire(ctx, r, policy, retention.ExpireOptions{
				DryRun: dryRun, Logger: a.logger, LockStale: a.cfg.Backup.LockTimeout, Set: set,
				OnDelete: func(what string, n int) {
					a.logger.Debug("deleting", "what", what, "objects", n)
					if delay > 0 {
						time.Sleep(delay)
					}
				},
			})
			if err != nil {
				if rep != nil && rep.Decision != nil {
					a.logger.Error("expire stopped part-way; the next expire finishes it", "backups_deleted", rep.DeletedBackups, "objects_deleted", rep.DeletedObjects)
				}
				return err
			}
			return a.print(rep, func() { a.printExpire(rep) })
		},
	}
	f := cmd.Flags()
	f.BoolVar(&dryRun, "dry-run", false, "print what would be deleted and why; delete nothing")
	f.StringVar(&set, "set", "", "expire this backup and the backups that depend on it, instead of applying the policy")
	f.IntVar(&fullCount, "full-count", 0, "keep the newest N full backups (retention.full_count)")
	f.StringVar(&younger, "keep-younger-than", "", "keep every backup younger than this, e.g. 7d or 36h (retention.keep_younger_than)")
	f.StringVar(&window, "window", "", "keep every moment of this recovery window restorable, e.g. 14d (retention.window)")
	f.IntVar(&minCount, "min-count", 0, "never keep fewer backups than this; at least 1 (retention.min_count)")
	return cmd
}

func (a *app) printExpire(rep *retention.Report) {
	w := a.stdout
	verb, would := "deleted", ""
	if rep.DryRun {
		verb, would = "would delete", " (dry run: nothing deleted)"
	}
	fmt.Fprintf(w, "expire %s at %s, policy %s%s\n", rep.Location, rep.Now.Format(time.RFC3339), rep.Policy, would)
	if !rep.WindowStart.IsZero() {
		fmt.Fprintf(w, "recovery window starts %s\n", rep.WindowStart.Format(time.RFC3339))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKUP\tSTOP\tTIMELINE\tDECISION")
	for _, b := range rep.Backups {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", b.Label, b.StopTime.Format(time.RFC3339), b.Timeline, b.Reason)
	}
	tw.Flush()
	if len(rep.Backups) == 0 {
		fmt.Fprintln(w, "(no complete backup)")
	}
	for _, l := range rep.Finished {
		fmt.Fprintf(w, "backup %s: left half-deleted by an interrupted expire: %s\n", l, map[bool]string{true: "would be finished", false: "finished"}[rep.DryRun])
	}
	for _, l := range rep.Skipped {
		fmt.Fprintf(w, "backup %s: pinned while expire ran: kept\n", l)
	}
	fmt.Fprintln(w)
	for _, t := range rep.Timelines {
		switch {
		case t.Dropped == 0:
			fmt.Fprintf(w, "WAL timeline %d: keep all %d objects: %s\n", t.Timeline, t.Kept, t.Reason)
		default:
			fmt.Fprintf(w, "WAL timeline %d: %s %d objects %s .. %s, keep %d: %s\n", t.Timeline, verb, t.Dropped, t.DropFirst, t.DropLast, t.Kept, t.Reason)
		}
	}
	fmt.Fprintln(w, "timeline history files are always kept")
	for _, n := range rep.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if rep.Incomplete > 0 {
		fmt.Fprintf(w, "note: %d incomplete backups are left to `pgharbor backup cleanup`\n", rep.Incomplete)
	}
	fmt.Fprintf(w, "\n%s %s and %s: %d objects, %s\n", verb, plural(rep.DeletedBackups, "backup"), plural(rep.DeletedWAL, "WAL object"), rep.DeletedObjects, humanBytes(rep.FreedBytes))
}

func newBackupPinCmd(a *app, pin bool) *cobra.Command {
	var note string
	use, short := "unpin LABEL", "Let expire delete a pinned backup again"
	if pin {
		use, short = "pin LABEL", "Exempt a backup from expiry"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := a.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Backend().Close()
			label := strings.TrimSpace(args[0])
			if pin {
				err = backup.Pin(ctx, r, label, note)
			} else {
				err = backup.Unpin(ctx, r, label)
			}
			if err != nil {
				return err
			}
			return a.print(map[string]any{"label": label, "pinned": pin}, func() {
				if pin {
					fmt.Fprintf(a.stdout, "backup %s pinned: expire keeps it until `pgharbor backup unpin %s`\n", label, label)
				} else {
					fmt.Fprintf(a.stdout, "backup %s unpinned: the retention policy applies to it again\n", label)
				}
			})
		},
	}
	if pin {
		cmd.Flags().StringVar(&note, "note", "", "why the backup is pinned (kept in the pin object)")
	}
	return cmd
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
