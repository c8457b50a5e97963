package backup

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/wal"
)

// Options configure a backup.
type Options struct {
	// ConnString reaches the server (libpq keyword/value string or URL). The user needs the
	// REPLICATION attribute (and pg_hba.conf must allow replication connections).
	ConnString string
	// FastCheckpoint asks for an immediate checkpoint (the default in pgharbor).
	FastCheckpoint bool
	// Workers seal bundles in parallel (default 2); Uploads store them (default 3). On a
	// backend that streams (storage.Streamer: a local filesystem) each worker is also joined
	// to an upload while it seals, so Workers more run.
	Workers, Uploads int
	// BundleSize is the size of a bundle's decoded bytes (default 4 MiB). The data pipeline
	// holds Workers+1 raw bundles (Workers, at least 2, when the host has no more cores than
	// Workers) besides one zstd encoder per worker. On an object store it also holds up to
	// Workers+Uploads sealed bundles, each as large as it is sealed: at most about
	// (2×Workers + Uploads + 1) × BundleSize, whatever the cluster's size, and much less when
	// the data compresses. On a backend that streams, sealed bundles go to their files as
	// they are sealed and none is held.
	BundleSize int
	// LockStale is how old a lock's heartbeat may be before it is taken over (default 2 min).
	LockStale time.Duration
	// ArchiveCheck, when set, is called after the server finished the backup and must
	// return nil only when every WAL segment from start to stop is in the repository.
	ArchiveCheck func(ctx context.Context, tli uint32, startLSN, stopLSN string, segSize int64) error
	// Method is how the files are read: MethodAuto (default), MethodStream or MethodLocal.
	Method string
	// DataDir is the data directory for MethodLocal (default: the server's data_directory).
	DataDir string
	// FromStandby backs up the server at ConnString as a standby (backup.from: standby):
	// without it a standby is refused, and with it a primary is.
	FromStandby bool
	// PrimaryConnString, for a backup from a standby, reaches the standby's primary on a
	// normal connection. It is used only to check the primary is the standby's and to ask it
	// to switch WAL (pg_switch_wal) at the end, so the backup need not wait for the segment
	// to fill or for archive_timeout. Optional.
	PrimaryConnString string
	// Progress, when set, is called with bytes read so far and the estimated total.
	Progress func(done, total int64)
	Logger   *slog.Logger
	// Type is TypeFull (default), TypeDiff or TypeIncr. Without a backup to compare with, a
	// diff or incr backup is taken full, with a warning.
	Type string
	// SpillInMemory is how many bytes of manifest entries, and of an incremental's parent's
	// extents, the backup keeps in memory before it moves them to a temporary file in
	// $TMPDIR; 0 means 1 MiB.
	SpillInMemory int
	// ChecksumAll makes a local diff or incr backup read and hash every file, instead of
	// taking the files whose size and modification time are unchanged from the parent.
	ChecksumAll bool
	// FullAfter, when set, turns a diff or incr backup into a full one when the newest full
	// backup started longer ago than this.
	FullAfter time.Duration
	// MaxRate caps the bytes per second read from the cluster (averaged over the backup;
	// 0: no limit), as pg_basebackup's --max-rate does.
	MaxRate int64
	// Annotations are stored in the backup's summary (see CheckAnnotations).
	Annotations map[string]string
}

// Annotation limits: notes, not a document store.
const (
	maxAnnotations     = 32
	maxAnnotationKey   = 64
	maxAnnotationValue = 1024
)

// CheckAnnotations validates backup annotations: at most 32, keys of 1 to 64 characters
// without '=', values of at most 1024 bytes.
func CheckAnnotations(a map[string]string) error {
	if len(a) > maxAnnotations {
		return fmt.Errorf("%d annotations: at most %d", len(a), maxAnnotations)
	}
	for k, v := range a {
		if k == "" || len(k) > maxAnnotationKey || strings.ContainsAny(k, "=\n") {
			return fmt.Errorf("annotation key %q: want 1 to %d characters, no '=' or newline", k, maxAnnotationKey)
		}
		if len(v) > maxAnnotationValue {
			return fmt.Errorf("annotation %s: the value is longer than %d bytes", k, maxAnnotationValue)
		}
	}
	return nil
}

func (o *Options) defaults() {
	if o.Workers <= 0 {
		o.Workers = 2
	}
	if o.Uploads <= 0 {
		o.Uploads = 3
	}
	if o.BundleSize <= 0 {
		o.BundleSize = 4 << 20
	}
	if o.Method == "" {
		o.Method = MethodAuto
	}
	if o.LockStale <= 0 {
		o.LockStale = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// serverFacts are read over a normal connection before the backup.
type serverFacts struct {
	systemID  string
	version   int
	segSize   int64
	inRecover bool
}

func readServerFacts(ctx context.Context, conn *pgx.Conn) (serverFacts, error) {
	var f serverFacts
	var segSize string
	err := conn.QueryRow(ctx, `SELECT system_identifier::text, current_setting('server_version_num')::int,
		current_setting('wal_segment_size'), pg_is_in_recovery() FROM pg_control_system()`).Scan(&f.systemID, &f.version, &segSize, &f.inRecover)
	if err != nil {
		return f, fmt.Errorf("read server facts: %w", err)
	}
	f.segSize, err = wal.ParsePGSize(segSize)
	if err != nil {
		return f, fmt.Errorf("wal_segment_size %q: %w", segSize, err)
	}
	if f.version < 150000 {
		return f, fmt.Errorf("PostgreSQL %d is not supported: pgharbor needs PostgreSQL 15 or later", f.version/10000)
	}
	return f, nil
}

// NewLabel returns a label for a backup starting at t.
func NewLabel(t time.Time) string { return t.UTC().Format("20060102T150405Z") }

// Run takes a full backup into r. The returned summary describes the completed backup. If
// Run fails, no manifest is written: the backup does not exist for any command, and the
// bundles already stored are removed where possible (or reported by the catalog).
func Run(ctx context.Context, r *repo.Repo, o Options) (*Summary, error) {
	o.defaults()
	if o.Method != MethodAuto && o.Method != MethodStream && o.Method != MethodLocal {
		return nil, fmt.Errorf("backup method %q: want auto, stream or local", o.Method)
	}
	if o.Type != "" && o.Type != TypeFull && o.Type != TypeDiff && o.Type != TypeIncr {
		return nil, fmt.Errorf("backup type %q: want full, diff or incr", o.Type)
	}
	if err := CheckAnnotations(o.Annotations); err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, o.ConnString)
	if err != nil {
		return nil, fmt.Errorf("connect to the server: %w", err)
	}
	defer conn.Close(context.Background())
	facts, err := readServerFacts(ctx, conn)
	if err != nil {
		return nil, err
	}
	sb, err := checkSource(ctx, conn, facts, o)
	if err != nil {
		return nil, err
	}
	defer sb.close()
	id, err := r.Attach(ctx, repo.Identity{SystemIdentifier: facts.systemID, PGVersion: facts.version, WALSegmentSize: facts.segSize})
	if err != nil {
		return nil, err
	}

	start := time.Now().UTC()
	label := NewLabel(start)
	for {
		taken, err := labelTaken(ctx, r, label)
		if err != nil {
			return nil, err
		}
		if !taken {
			break
		}
		time.Sleep(time.Until(start.Truncate(time.Second).Add(time.Second)))
		start = time.Now().UTC()
		label = NewLabel(start)
	}
	lock, err := AcquireLock(ctx, r, LockName, label, o.LockStale)
	if err != nil {
		return nil, err
	}
	defer lock.Release(context.Background())

	sum, err := run(ctx, r, o, label, start, facts, id, conn, sb)
	if err != nil {
		cleanup(r, label, o.Logger)
		return nil, fmt.Errorf("backup %s failed: %w", label, err)
	}
	return sum, nil
}

func labelTaken(ctx context.Context, r *repo.Repo, label string) (bool, error) {
	found := false
	stop := errors.New("found")
	err := r.Backend().List(ctx, BackupPrefix(r, label)+"/", func(storage.ObjectInfo) error { found = true; return stop })
	if err != nil && !errors.Is(err, stop) {
		return false, err
	}
	return found, nil
}

func cleanup(r *repo.Repo, label string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var keys []string
	_ = r.Backend().List(ctx, BackupPrefix(r, label)+"/", func(i storage.ObjectInfo) error { keys = append(keys, i.Key); return nil })
	for _, k := range keys {
		if err := r.Backend().Delete(ctx, k); err != nil {
			log.Warn("could not remove an object of the failed backup; `pgharbor backup cleanup` removes it later", "key", k, "err", err)
			return
		}
	}
}

func replicationConn(ctx context.Context, connString string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("connection string: %w", err)
	}
	cfg.RuntimeParams["replication"] = "true"
	cfg.RuntimeParams["application_name"] = "pgharbor backup"
	// The backup arrives as a stream of CopyData messages, which pgx reads one system call
	// per message (PostgreSQL 15 writes them in 8 KiB pieces); a large buffer in front
	// takes whatever the socket holds in one call.
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		return pgproto3.NewFrontend(bufio.NewReaderSize(r, 256<<10), w)
	}
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("replication connection (the user needs REPLICATION and pg_hba.conf a replication line): %w", err)
	}
	return c, nil
}

// listDatabases reads the cluster's databases, for restore --db-include.
func listDatabases(ctx context.Context, conn *pgx.Conn) ([]Database, error) {
	rows, err := conn.Query(ctx, "SELECT oid::bigint, datname FROM pg_database ORDER BY oid")
	if err != nil {
		return nil, fmt.Errorf("list databases: %w", err)
	}
	var dbs []Database
	for rows.Next() {
		var oid int64
		var name string
		if err := rows.Scan(&oid, &name); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list databases: %w", err)
		}
		dbs = append(dbs, Database{OID: uint32(oid), Name: name})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list databases: %w", err)
	}
	return dbs, nil
}

// source is what reading the cluster produced, by either method.
type source struct {
	method            string
	files             []File
	pgManifest        []byte
	startLSN, stopLSN string
	startTLI, stopTLI uint32
	tablespaces       []Tablespace
	checksumFailures  int // data pages whose checksum failed (local backups of clusters with data checksums)
}

func run(ctx context.Context, r *repo.Repo, o Options, label string, start time.Time, facts serverFacts, id repo.Identity, conn *pgx.Conn, sb *standby) (*Summary, error) {
	// The times recorded are the server's: restore compares them with --target-time, which
	// users take from the server (commit times are the server's), and the host running the
	// backup may be minutes off.
	var serverStart time.Time
	if err := conn.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&serverStart); err != nil {
		return nil, fmt.Errorf("read the server's clock: %w", err)
	}
	method, dir := o.Method, ""
	if method == MethodAuto || method == MethodLocal {
		d, err := localDataDir(ctx, conn, o.DataDir, facts.systemID)
		switch {
		case err == nil:
			method, dir = MethodLocal, d
		case method == MethodLocal:
			return nil, fmt.Errorf("--method local: the data directory cannot be read here: %w", err)
		default:
			o.Logger.Debug("reading the data directory directly is not possible; streaming BASE_BACKUP", "reason", err)
			method = MethodStream
		}
	}
	from := FromPrimary
	if sb != nil {
		from = FromStandby
	}
	spill := o.SpillInMemory
	if spill <= 0 {
		spill = spillInMemory
	}
	b, err := chooseBase(ctx, r, o.Type, facts, o.ChecksumAll, o.FullAfter, start, spill, o.Logger)
	if err != nil {
		return nil, err
	}
	defer b.close()
	typ, parent := TypeFull, ""
	if b != nil {
		typ, parent = o.Type, b.label
	}
	zstdEncoder := "none"
	if r.Codec().Compresses() {
		zstdEncoder = r.Codec().EncoderName()
	}
	o.Logger.Info("backup starting", "label", label, "type", typ, "parent", parent, "method", method, "from", from, "repository", r.Location(BackupPrefix(r, label)), "zstd_encoder", zstdEncoder)
	if b != nil && method == MethodStream {
		o.Logger.Info("the stream method reads every file in full (BASE_BACKUP sends them all); only the chunks that changed since the parent are stored", "parent", parent)
	}
	pages, err := newPageHasher(b)
	if err != nil {
		return nil, err
	}
	p := newPipeline(ctx, r, label, o.BundleSize, o.Workers, o.Uploads)
	p.base, p.pages, p.files.spill = b, pages, spill
	defer p.files.close()
	var src *source
	if method == MethodLocal {
		src, err = readLocal(ctx, conn, dir, "pgharbor "+label, o, facts, p)
	} else {
		src, err = readStream(ctx, o, "pgharbor "+label, p)
	}
	if err != nil {
		p.close()
		return nil, err
	}
	bundles, err := p.close()
	if err != nil {
		return nil, err
	}
	if sb != nil {
		if err := standbyStop(src); err != nil {
			return nil, err
		}
	}
	entries, err := p.endFiles()
	if err != nil {
		return nil, err
	}
	o.Logger.Debug("manifest entries written out", "label", label, "bytes", entries.json.Size(), "temporary_file", entries.json.OnDisk())
	o.Logger.Debug("backup data stored", "label", label, "seconds", time.Since(start).Seconds())
	files, pgManifest := src.files, src.pgManifest
	duration := time.Since(start)
	var nextXID uint64
	var stopTime time.Time
	if err := conn.QueryRow(ctx, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, clock_timestamp()").Scan(&nextXID, &stopTime); err != nil {
		return nil, fmt.Errorf("read next transaction id: %w", err)
	}
	dbs, err := listDatabases(ctx, conn)
	if err != nil {
		return nil, err
	}
	o.Logger.Debug("backup stopped on the server", "label", label, "seconds", time.Since(start).Seconds())
	if sb != nil && sb.primary != nil {
		if err := sb.switchPrimary(ctx, src, facts.segSize, o.Logger); err != nil {
			return nil, err
		}
	}
	// The archiver stores the backup's last WAL segment while the backup's other objects are
	// made and stored: all but the manifest, which waits for the check.
	archived := make(chan error, 1)
	checkCtx, cancelCheck := context.WithCancel(ctx)
	defer cancelCheck()
	if o.ArchiveCheck != nil {
		check := o.ArchiveCheck
		if sb != nil {
			check = func(ctx context.Context, _ uint32, _, _ string, segSize int64) error {
				return waitArchived(ctx, o, sb, src, segSize)
			}
		}
		go func() { archived <- check(checkCtx, src.startTLI, src.startLSN, src.stopLSN, facts.segSize) }()
	} else {
		archived <- nil
	}
	sum := Summary{
		Format: ManifestFormat, Label: label, Type: typ, Parent: parent, References: entries.references(), Reused: p.reused.Load(),
		SystemIdentifier: facts.systemID, PGVersion: facts.version, WALSegmentSize: facts.segSize,
		Timeline: src.startTLI, StartLSN: src.startLSN, StopLSN: src.stopLSN, StopTimeline: src.stopTLI, Method: src.method, From: from,
		StartTime: serverStart.UTC(), StopTime: stopTime.UTC(), StopNextXID: nextXID,
		Files: len(files), Bundles: bundles, BundlesUncompressed: int(p.uncompressed.Load()), BundlesDense: int(p.dense.Load()), StoredSize: p.stored.Load(),
		Encryption: id.Encryption, Tablespaces: src.tablespaces, Databases: dbs, ChecksumFailures: src.checksumFailures,
		Duration: duration.Seconds(), Annotations: o.Annotations,
	}
	for _, f := range files {
		sum.Size += f.Size
	}
	manifest, err := storeAllButManifest(ctx, r, &sum, pgManifest, p.pages.key, entries.entries())
	if err != nil {
		cancelCheck()
		<-archived
		return nil, err
	}
	defer manifest.Close()
	if err := <-archived; err != nil {
		return nil, fmt.Errorf("WAL needed to make the backup consistent is not in the repository: %w", err)
	}
	if o.ArchiveCheck != nil {
		o.Logger.Debug("backup WAL archived", "label", label, "seconds", time.Since(start).Seconds())
	}
	// The manifest goes last: from this moment the backup exists.
	if err := manifest.Put(ctx, true); err != nil {
		return nil, fmt.Errorf("store manifest: %w", err)
	}
	o.Logger.Info("backup complete", "label", label, "type", sum.Type, "parent", sum.Parent, "size", sum.Size, "stored", sum.StoredSize, "reused", sum.Reused,
		"files", sum.Files, "bundles", sum.Bundles, "bundles_uncompressed", sum.BundlesUncompressed, "bundles_dense", sum.BundlesDense, "from", from, "start_lsn", sum.StartLSN, "stop_lsn", sum.StopLSN,
		"seconds", fmt.Sprintf("%.1f", sum.Duration))
	return &sum, nil
}

// storeAllButManifest stores the backup's copy of PostgreSQL's backup_manifest and its
// summary (counting the first in sum.StoredSize), and returns its manifest sealed, for the
// caller to store last.
func storeAllButManifest(ctx context.Context, r *repo.Repo, sum *Summary, pgManifest []byte, pageKey []byte, entries io.Reader) (*repo.Sealed, error) {
	prefix := BackupPrefix(r, sum.Label)
	sealed, err := r.Codec().Seal(pgManifest)
	if err != nil {
		return nil, err
	}
	if err := r.PutSigned(ctx, path.Join(prefix, pgManifestName), sealed, true); err != nil {
		return nil, fmt.Errorf("store backup_manifest: %w", err)
	}
	sum.StoredSize += int64(len(sealed))
	if err := r.PutJSON(ctx, path.Join(prefix, summaryName), sum, true); err != nil {
		return nil, fmt.Errorf("store summary: %w", err)
	}
	manifest, err := sealManifestEntries(r, &Manifest{Summary: *sum, PageKey: pageKey}, entries)
	if err != nil {
		return nil, fmt.Errorf("store manifest: %w", err)
	}
	return manifest, nil
}

// readStream reads the cluster through BASE_BACKUP on a replication connection.
func readStream(ctx context.Context, o Options, label string, p *pipeline) (*source, error) {
	rconn, err := replicationConn(ctx, o.ConnString)
	if err != nil {
		return nil, err
	}
	defer rconn.Close(context.Background())
	bb, err := startBaseBackup(ctx, rconn, label, o.FastCheckpoint)
	if err != nil {
		return nil, err
	}
	if o.Progress != nil {
		bb.onProgress = func(done int64) { o.Progress(done, bb.totalSize) }
	}
	th := newThrottle(o.MaxRate)
	files, pgManifest, err := readArchives(bb, p, func(r io.Reader) io.Reader { return th.reader(ctx, r) })
	if err != nil {
		return nil, err
	}
	stopLSN, stopTLI, err := bb.finish()
	if err != nil {
		return nil, err
	}
	if err := crossCheck(files, pgManifest); err != nil {
		return nil, err
	}
	return &source{method: MethodStream, files: files, pgManifest: pgManifest, startLSN: bb.startLSN, stopLSN: stopLSN,
		startTLI: bb.startTLI, stopTLI: stopTLI, tablespaces: bb.tablespaces}, nil
}

// readArchives consumes every archive of the COPY stream, sending file bytes down the
// pipeline and the files to its manifest entries, and returns the file list (without
// extents) and PostgreSQL's backup_manifest.
func readArchives(bb *baseBackupStream, p *pipeline, throttled func(io.Reader) io.Reader) ([]File, []byte, error) {
	var pgManifest []byte
	for {
		name, _, isManifest, err := bb.nextArchive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		ar := &archiveReader{s: bb}
		if isManifest {
			if pgManifest, err = io.ReadAll(ar); err != nil {
				return nil, nil, fmt.Errorf("read backup_manifest: %w", err)
			}
			continue
		}
		var ts uint32
		if name != "base.tar" {
			oid, err := strconv.ParseUint(strings.TrimSuffix(name, ".tar"), 10, 32)
			if err != nil {
				return nil, nil, fmt.Errorf("unexpected archive %q (is the server built with compression or a target?)", name)
			}
			ts = uint32(oid)
		}
		tr := tar.NewReader(throttled(ar))
		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, nil, fmt.Errorf("archive %s: %w", name, err)
			}
			f := File{Tablespace: ts, Path: path.Clean(strings.TrimSuffix(hdr.Name, "/")), Mode: fs.FileMode(hdr.Mode & 0o7777), ModTime: hdr.ModTime.UTC()}
			if ts == 0 && signalFiles[f.Path] {
				continue // the rest of the entry is skipped by the next tr.Next
			}
			switch hdr.Typeflag {
			case tar.TypeDir:
				f.Type = "dir"
			case tar.TypeSymlink:
				f.Type, f.Link = "symlink", hdr.Linkname
			case tar.TypeReg:
				f.Type, f.Size = "file", hdr.Size
				n, err := p.readFile(tr, &f)
				if err != nil {
					return nil, nil, fmt.Errorf("archive %s, file %s: %w", name, hdr.Name, err)
				}
				if n != hdr.Size {
					return nil, nil, fmt.Errorf("archive %s, file %s: %d bytes, header says %d", name, hdr.Name, n, hdr.Size)
				}
			default:
				return nil, nil, fmt.Errorf("archive %s: unsupported entry type %q for %s", name, hdr.Typeflag, hdr.Name)
			}
			if err := p.addFile(f); err != nil {
				return nil, nil, err
			}
		}
		if _, err := io.Copy(io.Discard, ar); err != nil { // tar padding after the end blocks
			return nil, nil, err
		}
	}
	if pgManifest == nil {
		return nil, nil, errors.New("the server sent no backup_manifest")
	}
	return p.files.lean, pgManifest, nil
}

// crossCheck compares what pgharbor read with PostgreSQL's own manifest: every file, its
// size and its CRC-32C. A mismatch means bytes were lost or mangled on the way.
func crossCheck(files []File, pgManifest []byte) error {
	var m struct {
		Files []struct {
			Path      string `json:"Path"`
			Size      int64  `json:"Size"`
			Algorithm string `json:"Checksum-Algorithm"`
			Checksum  string `json:"Checksum"`
		} `json:"Files"`
	}
	if err := json.Unmarshal(pgManifest, &m); err != nil {
		return fmt.Errorf("parse backup_manifest: %w", err)
	}
	want := make(map[string]int, len(m.Files))
	for i, f := range m.Files {
		want[f.Path] = i
	}
	seen := 0
	for _, f := range m.Files {
		if signalFiles[f.Path] {
			seen++ // left out on purpose (signalFiles)
		}
	}
	for _, f := range files {
		if f.Type != "file" {
			continue
		}
		p := f.ManifestPath(nil)
		i, ok := want[p]
		if !ok {
			return fmt.Errorf("file %s is not in the server's backup_manifest", p)
		}
		mf := m.Files[i]
		if mf.Size != f.Size {
			return fmt.Errorf("file %s: read %d bytes, the server's manifest says %d", p, f.Size, mf.Size)
		}
		if mf.Algorithm == "CRC32C" {
			var le [4]byte
			binary.LittleEndian.PutUint32(le[:], f.CRC)
			if hex.EncodeToString(le[:]) != strings.ToLower(mf.Checksum) {
				return fmt.Errorf("file %s: CRC-32C %s, the server's manifest says %s", p, hex.EncodeToString(le[:]), mf.Checksum)
			}
		}
		seen++
	}
	if seen != len(m.Files) {
		return fmt.Errorf("read %d files, the server's manifest lists %d", seen, len(m.Files))
	}
	return nil
}
