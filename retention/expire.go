package retention

import (
	"context"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"time"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/wal"
)

// ExpireOptions tune Expire.
type ExpireOptions struct {
	// DryRun plans and reports without deleting anything or taking the lock.
	DryRun bool
	// Now is the time the policy is measured from; zero means the current time.
	Now time.Time
	// Logger receives one line per deleted backup and per WAL batch; nil discards.
	Logger *slog.Logger
	// LockStale is how old the lock's heartbeat may be before it is taken over (default 2 min).
	LockStale time.Duration
	// Parallel is the number of single deletes in flight on stores without a batch delete
	// (default storage.DefaultDeleteParallel).
	Parallel int
	// OnDelete, when set, is called before each delete request with what it deletes and how
	// many keys: for progress output (and for tests that interrupt an expire part-way).
	OnDelete func(what string, keys int)
	// Set, when not empty, expires that backup and the backups that depend on it instead of
	// applying the policy (PlanSet); the policy is then not needed.
	Set string
}

// Report is what Expire did (or, with DryRun, would do). It is JSON-serialisable.
type Report struct {
	Cluster  string `json:"cluster"`
	Location string `json:"location"`
	DryRun   bool   `json:"dry_run"`
	*Decision
	// Finished are backups an interrupted expire had begun deleting; this run removed (or,
	// dry, would remove) the rest of them.
	Finished []string `json:"finished,omitempty"`
	// Unmarked are kept backups whose leftover expiring marker was removed.
	Unmarked []string `json:"unmarked,omitempty"`
	// Skipped are dropped backups pinned while this expire ran; they stay.
	Skipped []string `json:"skipped,omitempty"`
	// Incomplete counts backups without a manifest that expire leaves to `backup cleanup`.
	Incomplete int `json:"incomplete,omitempty"`
	// DeletedBackups, DeletedWAL and DeletedObjects count what was removed; FreedBytes is the
	// stored size of those objects (as listed). With DryRun they count what would go.
	DeletedBackups int     `json:"deleted_backups"`
	DeletedWAL     int     `json:"deleted_wal"`
	DeletedObjects int     `json:"deleted_objects"`
	FreedBytes     int64   `json:"freed_bytes"`
	Duration       float64 `json:"duration_seconds"`
}

// Expire applies policy p to r's cluster: it plans with Plan and, unless opts.DryRun, holds
// the repository lock (backup.LockName, the one backup takes) and deletes the dropped
// backups, then the WAL no kept backup reaches.
//
// Each backup goes in this order: an expiring marker is written, the manifest (the
// completion marker) is deleted, then every other object, then the marker. A backup
// interrupted part-way never looks complete, and the next Expire recognises it by its
// marker and finishes it. WAL goes only after the backups, so an interruption never leaves
// a backup whose WAL is gone.
func Expire(ctx context.Context, r *repo.Repo, p Policy, opts ExpireOptions) (*Report, error) {
	began := time.Now()
	if opts.Set == "" {
		if err := p.Validate(); err != nil {
			return nil, err
		}
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.LockStale <= 0 {
		opts.LockStale = 2 * time.Minute
	}
	rep := &Report{Cluster: r.Cluster(), Location: r.Location(r.Cluster()), DryRun: opts.DryRun}
	if !opts.DryRun {
		lock, err := backup.AcquireLock(ctx, r, backup.LockName, backup.ExpireLabel, opts.LockStale)
		if err != nil {
			return nil, fmt.Errorf("expire: %w", err)
		}
		defer lock.Release(context.WithoutCancel(ctx))
	}
	cat, err := backup.LoadCatalog(ctx, r)
	if err != nil {
		return nil, err
	}
	backups, err := fromCatalog(cat)
	if err != nil {
		return nil, err
	}
	arch, sizes, notes, err := loadArchive(ctx, r)
	if err != nil {
		return nil, err
	}
	var d *Decision
	if opts.Set != "" {
		d, err = PlanSet(opts.Set, backups, arch, now)
	} else {
		d, err = Plan(p, backups, arch, now)
	}
	if err != nil {
		return nil, err
	}
	d.Notes = append(d.Notes, notes...)
	rep.Decision = d
	for _, inc := range cat.Incomplete {
		if inc.Expiring {
			rep.Finished = append(rep.Finished, inc.Label)
		} else if !inc.Running {
			rep.Incomplete++
		}
	}
	dropped := d.Dropped()
	for _, l := range cat.Expiring {
		if !containsLabel(dropped, l) {
			rep.Unmarked = append(rep.Unmarked, l)
		}
	}
	x := &expirer{r: r, opts: opts, log: log, rep: rep}
	if opts.DryRun {
		for _, l := range append(append([]string(nil), rep.Finished...), dropped...) {
			if _, err := x.count(ctx, l); err != nil {
				return nil, err
			}
		}
		rep.DeletedBackups = len(dropped)
		rep.DeletedWAL = len(d.DropWAL)
		rep.DeletedObjects += len(d.DropWAL)
		for _, f := range d.DropWAL {
			rep.FreedBytes += sizes[f.Key]
		}
		rep.Duration = time.Since(began).Seconds()
		return rep, nil
	}

	for _, l := range rep.Finished {
		log.Info("finishing the expiry of a backup an earlier expire left half-deleted", "label", l)
		if err := x.deleteRest(ctx, l, nil); err != nil {
			return rep, err
		}
	}
	for _, l := range rep.Unmarked {
		if err := r.Backend().Delete(ctx, backup.ExpiringKey(r, l)); err != nil {
			return rep, fmt.Errorf("remove the stale expiring marker of kept backup %s: %w", l, err)
		}
	}
	// Newest first: a diff or incr backup goes before the backups it references, so an
	// interrupted expire never leaves a complete backup whose pieces are gone.
	refs := map[string][]string{}
	for _, b := range backups {
		refs[b.Label] = b.References
	}
	var needed []string // dropped backups that a backup pinned meanwhile references
	for i := len(d.Backups) - 1; i >= 0; i-- {
		b := d.Backups[i]
		if b.Keep {
			continue
		}
		if slices.Contains(needed, b.Label) {
			log.Warn("backup referenced by a backup pinned while expire ran: kept", "label", b.Label)
			continue
		}
		deleted, err := x.deleteBackup(ctx, b.Label)
		if err != nil {
			return rep, err
		}
		if deleted {
			rep.DeletedBackups++
			log.Info("backup expired", "label", b.Label, "stop_time", b.StopTime, "reason", b.Reason)
		} else {
			needed = append(needed, refs[b.Label]...)
		}
	}
	if len(rep.Skipped) > 0 {
		// A backup pinned while expire ran stays, with the backups it references, and so
		// must the WAL from its start.
		d.keepAlso(rep.Skipped, "pinned while expire ran", backups, arch)
	}
	if len(d.DropWAL) > 0 {
		keys := make([]string, len(d.DropWAL))
		for i, f := range d.DropWAL {
			keys[i] = f.Key
			rep.FreedBytes += sizes[f.Key]
		}
		x.onDelete("WAL", len(keys))
		if err := storage.DeleteMany(ctx, r.Backend(), keys, opts.Parallel); err != nil {
			return rep, fmt.Errorf("expire WAL: %w", err)
		}
		rep.DeletedWAL = len(keys)
		rep.DeletedObjects += len(keys)
		for _, t := range d.Timelines {
			if t.Dropped > 0 {
				log.Info("WAL expired", "timeline", uint32(t.Timeline), "objects", t.Dropped, "first_kept", t.FirstKept, "reason", t.Reason)
			}
		}
	}
	rep.Duration = time.Since(began).Seconds()
	return rep, nil
}

type expirer struct {
	r    *repo.Repo
	opts ExpireOptions
	log  *slog.Logger
	rep  *Report
}

func (x *expirer) onDelete(what string, n int) {
	if x.opts.OnDelete != nil {
		x.opts.OnDelete(what, n)
	}
}

// list returns the keys below a backup's prefix and their total size.
func (x *expirer) list(ctx context.Context, label string) ([]string, int64, error) {
	var keys []string
	var size int64
	prefix := backup.BackupPrefix(x.r, label) + "/"
	err := x.r.Backend().List(ctx, prefix, func(o storage.ObjectInfo) error {
		keys = append(keys, o.Key)
		size += o.Size
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", x.r.Location(prefix), err)
	}
	return keys, size, nil
}

// count adds a backup's objects to the report; expire's own marker is not counted.
func (x *expirer) count(ctx context.Context, label string) ([]string, error) {
	keys, size, err := x.list(ctx, label)
	if err != nil {
		return nil, err
	}
	marker := backup.ExpiringKey(x.r, label)
	for _, k := range keys {
		if k != marker {
			x.rep.DeletedObjects++
		}
	}
	x.rep.FreedBytes += size
	return keys, nil
}

// deleteBackup marks a backup as expiring, deletes its manifest and then the rest. It
// returns false when the backup was pinned meanwhile (it then stays, unmarked).
func (x *expirer) deleteBackup(ctx context.Context, label string) (bool, error) {
	r := x.r
	// Listed once: while expire holds the lock nothing else writes into this prefix.
	keys, err := x.count(ctx, label)
	if err != nil {
		return false, err
	}
	marker := backup.ExpiringKey(r, label)
	if err := r.PutJSON(ctx, marker, backup.NewMarker("expire"), false); err != nil {
		return false, fmt.Errorf("expire backup %s: write %s: %w", label, r.Location(marker), err)
	}
	// A pin written before our marker is seen here; one written after it sees our marker
	// and fails (backup.Pin).
	pinned, err := storage.Exists(ctx, r.Backend(), backup.PinKey(r, label))
	if err != nil {
		return false, fmt.Errorf("expire backup %s: %w", label, err)
	}
	if pinned {
		x.log.Warn("backup pinned while expire ran: kept", "label", label)
		x.rep.Skipped = append(x.rep.Skipped, label)
		if err := r.Backend().Delete(ctx, marker); err != nil {
			return false, fmt.Errorf("backup %s: remove the expiring marker: %w", label, err)
		}
		return false, nil
	}
	x.onDelete("manifest of backup "+label, 1)
	if err := r.Backend().Delete(ctx, backup.ManifestKey(r, label)); err != nil {
		return false, fmt.Errorf("expire backup %s: delete its manifest: %w", label, err)
	}
	manifest := backup.ManifestKey(r, label)
	rest := slices.DeleteFunc(keys, func(k string) bool { return k == manifest })
	return true, x.deleteRest(ctx, label, append(rest, marker))
}

// deleteRest deletes every object of a backup whose manifest is gone, the expiring marker last.
// keys are the backup's objects; nil lists (and counts) them.
func (x *expirer) deleteRest(ctx context.Context, label string, keys []string) error {
	if keys == nil {
		var err error
		if keys, err = x.count(ctx, label); err != nil {
			return err
		}
	}
	marker := backup.ExpiringKey(x.r, label)
	rest := keys[:0:0]
	hasMarker := false
	for _, k := range keys {
		if k == marker {
			hasMarker = true
			continue
		}
		rest = append(rest, k)
	}
	if len(rest) > 0 {
		x.onDelete("objects of backup "+label, len(rest))
		if err := storage.DeleteMany(ctx, x.r.Backend(), rest, x.opts.Parallel); err != nil {
			return fmt.Errorf("expire backup %s: %w", label, err)
		}
	}
	if hasMarker {
		x.onDelete("expiring marker of backup "+label, 1)
		if err := x.r.Backend().Delete(ctx, marker); err != nil {
			return fmt.Errorf("expire backup %s: delete the marker: %w", label, err)
		}
	}
	return nil
}

func containsLabel(labels []string, l string) bool {
	for _, x := range labels {
		if x == l {
			return true
		}
	}
	return false
}

// fromCatalog turns the catalog's complete backups into Plan's input.
func fromCatalog(cat *backup.Catalog) ([]Backup, error) {
	out := make([]Backup, 0, len(cat.Backups))
	for _, s := range cat.Backups {
		start, err := wal.ParseLSN(s.StartLSN)
		if err != nil {
			return nil, fmt.Errorf("backup %s: start LSN: %w", s.Label, err)
		}
		stop, err := wal.ParseLSN(s.StopLSN)
		if err != nil {
			return nil, fmt.Errorf("backup %s: stop LSN: %w", s.Label, err)
		}
		if s.Timeline == 0 || s.StopTime.IsZero() {
			return nil, fmt.Errorf("backup %s: its summary has no timeline or stop time; it cannot be placed in time", s.Label)
		}
		out = append(out, Backup{
			Label: s.Label, Type: s.Type, Parent: s.Parent, References: s.References, StartTime: s.StartTime, StopTime: s.StopTime,
			StartLSN: start, StopLSN: stop, Timeline: wal.TimelineID(s.Timeline), Pinned: cat.IsPinned(s.Label),
		})
	}
	return out, nil
}

// loadArchive lists the WAL archive and reads its history files. A history file that
// cannot be read (no identity, damaged) leaves its timeline out of Histories: Plan then
// keeps all of that timeline's WAL.
func loadArchive(ctx context.Context, r *repo.Repo) (a Archive, sizes map[string]int64, notes []string, err error) {
	a = Archive{SegmentSize: wal.DefaultSegmentSize, Histories: map[wal.TimelineID]wal.History{}}
	id, err := r.ReadIdentity(ctx)
	if err != nil {
		return a, nil, nil, err
	}
	if id.WALSegmentSize != 0 {
		a.SegmentSize = id.WALSegmentSize
	}
	sizes = map[string]int64{}
	prefix := r.Key(wal.Dir) + "/"
	var histories []wal.TimelineID
	err = r.Backend().List(ctx, prefix, func(o storage.ObjectInfo) error {
		name := path.Base(o.Key)
		a.Files = append(a.Files, WALFile{Name: name, Key: o.Key, Size: o.Size})
		sizes[o.Key] = o.Size
		if wal.Classify(name) == wal.KindHistory {
			if tli, err := wal.ParseTimelineID(name[:8]); err == nil {
				histories = append(histories, tli)
			}
		}
		return nil
	})
	if err != nil {
		return a, nil, nil, fmt.Errorf("list %s: %w", r.Location(prefix), err)
	}
	for _, tli := range histories {
		h, err := wal.ReadHistory(ctx, r, tli)
		if err != nil {
			if ctx.Err() != nil {
				return a, nil, nil, err
			}
			// Keeping more WAL is the safe side of not knowing.
			notes = append(notes, fmt.Sprintf("history file %s not readable (%v): all WAL of timeline %d kept", wal.HistoryFileName(tli), err, tli))
			continue
		}
		a.Histories[tli] = h
	}
	return a, sizes, notes, nil
}
