package backup

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
)

// Incomplete is a backup prefix without a manifest: a backup running now, or the remains of
// one that was killed.
type Incomplete struct {
	Label   string `json:"label"`
	Objects int    `json:"objects"`
	Bytes   int64  `json:"bytes"`
	Running bool   `json:"running"` // a live lock names this label
	// Expiring is set when an expire began deleting this backup and did not finish: the
	// next expire (or `backup cleanup`) removes the rest.
	Expiring bool `json:"expiring,omitempty"`
}

// Catalog is every backup of a cluster, oldest first.
type Catalog struct {
	Backups    []Summary    `json:"backups"`
	Incomplete []Incomplete `json:"incomplete,omitempty"`
	// Pinned lists the labels of complete backups that expire never deletes.
	Pinned []string `json:"pinned,omitempty"`
	// Expiring lists complete backups that carry an expiring marker: an expire stopped
	// between marking and deleting them. The next expire deletes or unmarks them.
	Expiring []string `json:"expiring,omitempty"`
	// Refused lists backups whose summary or manifest is not signed by the repository's
	// write key (only when verify keys are configured). They are not in Backups, so nothing
	// restores from them or counts them for retention.
	Refused []Refused `json:"refused,omitempty"`
}

// Refused is a backup left out of the catalog because an object of it failed
// authentication.
type Refused struct {
	Label  string `json:"label"`
	Reason string `json:"reason"`
}

// LoadCatalog lists the cluster's backups. Only backups whose manifest exists are in
// Backups; the others are reported in Incomplete.
func LoadCatalog(ctx context.Context, r *repo.Repo) (*Catalog, error) {
	type state struct {
		objects  int
		bytes    int64
		manifest bool
		summary  bool
		pinned   bool
		expiring bool
	}
	states := map[string]*state{}
	prefix := r.Key("backups") + "/"
	err := r.Backend().List(ctx, prefix, func(i storage.ObjectInfo) error {
		rest := strings.TrimPrefix(i.Key, prefix)
		label, name, ok := strings.Cut(rest, "/")
		if !ok {
			return nil
		}
		s := states[label]
		if s == nil {
			s = &state{}
			states[label] = s
		}
		s.objects++
		s.bytes += i.Size
		switch name {
		case manifestName:
			s.manifest = true
		case summaryName:
			s.summary = true
		case pinName:
			s.pinned = true
		case expiringName:
			s.expiring = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list backups in %s: %w", r.Location(prefix), err)
	}
	labels := make([]string, 0, len(states))
	for l := range states {
		labels = append(labels, l)
	}
	sort.Strings(labels)
	cat := &Catalog{Backups: []Summary{}}
	held, locked := lockHolder(ctx, r, LockName)
	for _, l := range labels {
		s := states[l]
		if !s.manifest {
			cat.Incomplete = append(cat.Incomplete, Incomplete{Label: l, Objects: s.objects, Bytes: s.bytes, Running: locked && held.Label == l && !s.expiring, Expiring: s.expiring})
			continue
		}
		if s.pinned {
			cat.Pinned = append(cat.Pinned, l)
		}
		if s.expiring {
			cat.Expiring = append(cat.Expiring, l)
		}
		var sum Summary
		if s.summary {
			if err := r.GetJSON(ctx, path.Join(BackupPrefix(r, l), summaryName), &sum); err != nil {
				if errors.Is(err, codec.ErrUnauthenticated) {
					cat.Refused = append(cat.Refused, Refused{Label: l, Reason: err.Error()})
					continue
				}
				return nil, fmt.Errorf("backup %s: %w", l, err)
			}
		} else {
			m, err := ReadManifestWithoutPageHashes(ctx, r, l)
			if errors.Is(err, codec.ErrUnauthenticated) {
				cat.Refused = append(cat.Refused, Refused{Label: l, Reason: err.Error()})
				continue
			}
			if err != nil {
				return nil, err
			}
			sum = m.Summary
		}
		cat.Backups = append(cat.Backups, sum)
	}
	// Order by start time, never by name alone (labels are times, but be explicit).
	sort.SliceStable(cat.Backups, func(i, j int) bool { return cat.Backups[i].StartTime.Before(cat.Backups[j].StartTime) })
	return cat, nil
}

// Find returns the backup with label.
func (c *Catalog) Find(label string) (Summary, bool) {
	for _, b := range c.Backups {
		if b.Label == label {
			return b, true
		}
	}
	return Summary{}, false
}

// IsPinned reports whether the complete backup label is pinned.
func (c *Catalog) IsPinned(label string) bool { return slices.Contains(c.Pinned, label) }

// Cleanup removes the objects of incomplete backups that are not running. It returns the
// labels removed.
func Cleanup(ctx context.Context, r *repo.Repo) ([]string, error) {
	cat, err := LoadCatalog(ctx, r)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, inc := range cat.Incomplete {
		if inc.Running {
			continue
		}
		var keys []string
		if err := r.Backend().List(ctx, BackupPrefix(r, inc.Label)+"/", func(i storage.ObjectInfo) error {
			keys = append(keys, i.Key)
			return nil
		}); err != nil {
			return removed, err
		}
		for _, k := range keys {
			if err := r.Backend().Delete(ctx, k); err != nil {
				return removed, fmt.Errorf("remove %s: %w", r.Location(k), err)
			}
		}
		removed = append(removed, inc.Label)
	}
	return removed, nil
}
