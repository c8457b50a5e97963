package wal

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
)

// DefaultPushParallel is how many other ready segments one push call uploads along.
const DefaultPushParallel = 4

// ErrConflict means another file with different content is already archived under the
// same name. The stored copy is never replaced.
var ErrConflict = errors.New("a different file is already archived under this name")

// PushOptions tune Push.
type PushOptions struct {
	// DataDir is PGDATA; a relative walPath is taken relative to it (default: the working
	// directory, which is PGDATA when PostgreSQL runs archive_command).
	DataDir string
	// Parallel is how many other .ready segments after this one are pushed along, in
	// parallel: 0 means DefaultPushParallel, a negative value turns it off.
	Parallel int
	// SpoolDir is the root of the spools, which remember segments pushed ahead; default
	// DefaultSpoolRoot(). Each repository and cluster has its own spool in it.
	SpoolDir string
	// RepoID names the repository's spool (SpoolID); default SpoolID of the backend's
	// location and the cluster.
	RepoID string
	// Logger receives warnings about segments pushed ahead (nil: discarded).
	Logger *slog.Logger
}

// Push archives one file of pg_wal — a segment, .partial, .history or .backup file — for
// archive_command = 'pgharbor wal push %p'.
//
// Archiving is write-once: pushing identical bytes again succeeds, different bytes under
// an archived name fail with ErrConflict and the stored copy stays. The first push records
// the server's system identifier, version and segment size in the repository identity; a
// repository of another server is refused.
//
// For a segment, Push also uploads the next opts.Parallel segments that PostgreSQL has
// marked .ready, in parallel, and remembers them in the spool; the archive_command calls
// for them then return after checking the file against the marker.
func Push(ctx context.Context, r *repo.Repo, walPath string, opts PushOptions) error {
	p := walPath
	if !filepath.IsAbs(p) && opts.DataDir != "" {
		p = filepath.Join(opts.DataDir, p)
	}
	name := filepath.Base(p)
	kind := Classify(name)
	if kind == KindUnknown {
		return fmt.Errorf("push %s: %w: not a WAL segment, .partial, .history or .backup file", walPath, ErrInvalidName)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	parallel := opts.Parallel
	if parallel == 0 {
		parallel = DefaultPushParallel
	}
	walDir := filepath.Dir(p)
	pgdata := opts.DataDir
	if pgdata == "" {
		if abs, err := filepath.Abs(walDir); err == nil && filepath.Base(abs) == "pg_wal" {
			pgdata = filepath.Dir(abs)
		}
	}

	var pushed string
	if kind == KindSegment && parallel > 0 {
		dir, err := openSpool(opts.SpoolDir, repoSpoolID(r, opts.RepoID), "pushed")
		if err != nil {
			// Archiving must not stop over a local convenience: push this file alone.
			log.Warn("spool unusable; ready segments are not pushed ahead", "err", err)
		}
		pushed = dir
		if done, err := takeMarker(pushed, name, p); pushed != "" && (done || err != nil) {
			if err != nil {
				log.Warn("spool marker unusable; pushing again", "segment", name, "err", err)
			} else {
				return nil
			}
		}
	}

	data, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("push %s: %w", walPath, err)
	}
	server, err := serverIdentity(pgdata, name, kind, data)
	if err != nil {
		return fmt.Errorf("push %s: %w", walPath, err)
	}
	server.Encryption = repo.EncryptionMode(r.Codec())
	server.Recipients = r.Codec().Fingerprints()
	if err := attach(ctx, r, server); err != nil {
		return fmt.Errorf("push %s: %w", name, err)
	}

	var ahead []string
	if pushed != "" {
		ahead = readyAfter(walDir, name, parallel, pushed)
	}
	var wg sync.WaitGroup
	for _, next := range ahead {
		wg.Go(func() {
			m, err := pushAhead(ctx, r, walDir, next, server)
			if err == nil {
				err = writeFileAtomic(pushed, next, []byte(m.String()))
			}
			if err != nil {
				// Not this call's failure: PostgreSQL will ask for next in its turn.
				log.Warn("pushing a ready segment ahead failed; it is pushed again when PostgreSQL asks", "segment", next, "err", err)
			}
		})
	}
	_, err = pushData(ctx, r, name, data)
	wg.Wait()
	return err
}

// PushedAhead reports whether an earlier Push to the repository and cluster opts.RepoID
// names (SpoolID) already archived walPath as a ready segment pushed ahead, and the file is
// unchanged since (size and SHA-256 match its spool marker). The marker is used up. Callers
// may skip opening the repository when it returns true; Push checks the same by itself.
func PushedAhead(cluster, walPath string, opts PushOptions) (bool, error) {
	p := walPath
	if !filepath.IsAbs(p) && opts.DataDir != "" {
		p = filepath.Join(opts.DataDir, p)
	}
	name := filepath.Base(p)
	if !IsSegmentName(name) || opts.Parallel < 0 {
		return false, nil
	}
	if err := repo.ValidateCluster(cluster); err != nil {
		return false, err
	}
	if opts.RepoID == "" {
		return false, errors.New("PushedAhead needs PushOptions.RepoID")
	}
	dir, err := openSpool(opts.SpoolDir, opts.RepoID, "pushed")
	if err != nil {
		return false, err
	}
	return takeMarker(dir, name, p)
}

// pushAhead pushes a ready segment of the same server.
func pushAhead(ctx context.Context, r *repo.Repo, walDir, name string, server repo.Identity) (marker, error) {
	data, err := os.ReadFile(filepath.Join(walDir, name))
	if err != nil {
		return marker{}, err
	}
	h, err := checkSegment(name, KindSegment, data)
	if err != nil {
		return marker{}, err
	}
	if sid := repo.FormatSystemIdentifier(h.SystemIdentifier); sid != server.SystemIdentifier {
		return marker{}, fmt.Errorf("%s has system identifier %s, %s has %s", name, sid, "the segment being archived", server.SystemIdentifier)
	}
	sum, err := pushData(ctx, r, name, data)
	if err != nil {
		return marker{}, err
	}
	return marker{size: int64(len(data)), digest: sum}, nil
}

// pushData seals and stores one file, write-once, and returns its SHA-256.
func pushData(ctx context.Context, r *repo.Repo, name string, data []byte) ([32]byte, error) {
	p, err := ObjectPath(name)
	if err != nil {
		return [32]byte{}, err
	}
	key := r.Key(p)
	sealed, sum, err := r.Codec().SealDigest(data)
	if err != nil {
		return sum, fmt.Errorf("push %s: seal: %w", name, err)
	}
	err = r.PutWithDigest(ctx, key, sealed, sum)
	if errors.Is(err, storage.ErrExists) {
		return sum, compareArchived(ctx, r, name, key, sum)
	}
	if err != nil {
		return sum, fmt.Errorf("push %s to %s: %w", name, r.Location(key), err)
	}
	return sum, nil
}

// serverIdentity gathers what the file and PGDATA say about the server.
func serverIdentity(pgdata, name string, kind Kind, data []byte) (repo.Identity, error) {
	var id repo.Identity
	if kind == KindSegment || kind == KindPartial {
		h, err := checkSegment(name, kind, data)
		if err != nil {
			return id, err
		}
		id.SystemIdentifier = repo.FormatSystemIdentifier(h.SystemIdentifier)
		id.WALSegmentSize = h.SegmentSize
	}
	if pgdata == "" {
		return id, nil
	}
	if sysid, err := ControlSystemIdentifier(pgdata); err == nil {
		s := repo.FormatSystemIdentifier(sysid)
		if id.SystemIdentifier != "" && s != id.SystemIdentifier {
			return id, fmt.Errorf("%s belongs to system %s but %s says %s: not this server's WAL", name, id.SystemIdentifier, filepath.Join(pgdata, "global", "pg_control"), s)
		}
		id.SystemIdentifier = s
	}
	if v, err := DataDirVersion(pgdata); err == nil {
		id.PGVersion = v
	}
	return id, nil
}

// attach checks the repository identity against the server and records missing facts.
func attach(ctx context.Context, r *repo.Repo, server repo.Identity) error {
	id, err := r.ReadIdentity(ctx)
	if err != nil {
		return err
	}
	if err := id.Check(server); err != nil {
		return err
	}
	if id.WALSegmentSize != 0 && server.WALSegmentSize != 0 && id.WALSegmentSize != server.WALSegmentSize {
		return fmt.Errorf("%w: cluster %q holds %d-byte WAL segments, the server writes %d-byte ones",
			repo.ErrIdentityMismatch, id.Cluster, id.WALSegmentSize, server.WALSegmentSize)
	}
	if (id.SystemIdentifier == "" && server.SystemIdentifier != "") || (id.PGVersion == 0 && server.PGVersion != 0) ||
		(id.WALSegmentSize == 0 && server.WALSegmentSize != 0) {
		if _, err := r.Attach(ctx, server); err != nil {
			return err
		}
	}
	return nil
}

// readyAfter returns up to n segment names after name that pg_wal/archive_status marks
// .ready and that have no marker in the spool yet, in name order.
func readyAfter(walDir, name string, n int, spool string) []string {
	entries, err := os.ReadDir(filepath.Join(walDir, "archive_status"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries { // ReadDir sorts by name
		base, ok := strings.CutSuffix(e.Name(), ".ready")
		if !ok || !IsSegmentName(base) || base <= name {
			continue
		}
		if _, err := os.Stat(filepath.Join(spool, base)); err == nil {
			continue
		}
		out = append(out, base)
		if len(out) == n {
			break
		}
	}
	return out
}
