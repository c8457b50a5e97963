package backup

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Methods of reading the cluster's files.
const (
	// MethodAuto reads the data directory directly when pgharbor runs on the database host
	// and can read it (MethodLocal), and streams BASE_BACKUP otherwise.
	MethodAuto = "auto"
	// MethodStream streams BASE_BACKUP over a replication connection: nothing needed on the
	// database host but a replication connection.
	MethodStream = "stream"
	// MethodLocal brackets the backup with pg_backup_start and pg_backup_stop on a normal
	// connection and reads the data directory and tablespaces from the local file system,
	// as pgBackRest does. PostgreSQL then only marks the backup; the file reading, the
	// checksums and the manifest are pgharbor's. Needs pgharbor on the database host, read
	// access to the data directory, and EXECUTE on pg_backup_start/pg_backup_stop.
	MethodLocal = "local"
)

// localDataDir returns the data directory of the server conn is connected to when that
// directory is on this host and readable, and otherwise an error saying why not. The
// proof is threefold: the postmaster.pid there names the postmaster start time the server
// reports, the server process serving conn is a child of that postmaster (so the
// postmaster runs on this host, in this PID namespace), and global/pg_control carries the
// server's system identifier. A standby elsewhere with the same path and system
// identifier fails the second test.
func localDataDir(ctx context.Context, conn *pgx.Conn, configured, systemID string) (string, error) {
	var serverDir string
	var backendPID int
	var started int64
	err := conn.QueryRow(ctx, `SELECT coalesce(current_setting('data_directory', true), ''), pg_backend_pid(),
		extract(epoch FROM pg_postmaster_start_time())::bigint`).Scan(&serverDir, &backendPID, &started)
	if err != nil {
		return "", fmt.Errorf("ask the server for its data directory: %w", err)
	}
	dir := configured
	if dir == "" {
		dir = serverDir
	}
	if dir == "" {
		return "", errors.New("the server does not show data_directory to this user (set postgres.data_dir)")
	}
	pid, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return "", fmt.Errorf("read the server's postmaster.pid: %w", err)
	}
	lines := strings.Split(string(pid), "\n")
	if len(lines) < 3 {
		return "", fmt.Errorf("%s: unexpected contents", filepath.Join(dir, "postmaster.pid"))
	}
	postmaster, err1 := strconv.Atoi(strings.TrimSpace(lines[0]))
	fileStarted, err2 := strconv.ParseInt(strings.TrimSpace(lines[2]), 10, 64)
	if err1 != nil || err2 != nil {
		return "", fmt.Errorf("%s: unexpected contents", filepath.Join(dir, "postmaster.pid"))
	}
	// The server's own view of its postmaster.pid, when this user may read it, settles the
	// question; otherwise the start times must agree (the file's is taken a moment earlier).
	var serverPid []byte
	if err := conn.QueryRow(ctx, "SELECT pg_read_binary_file('postmaster.pid')").Scan(&serverPid); err == nil {
		sl := strings.Split(string(serverPid), "\n")
		if len(sl) < 3 || sl[0] != lines[0] || sl[1] != lines[1] || sl[2] != lines[2] {
			return "", fmt.Errorf("%s is not the postmaster.pid the server has: another cluster", filepath.Join(dir, "postmaster.pid"))
		}
	} else if fileStarted > started || fileStarted < started-60 {
		return "", fmt.Errorf("%s belongs to a postmaster started at %d, the server started at %d: another cluster", dir, fileStarted, started)
	}
	if ppid, err := parentPID(backendPID); err != nil || ppid != postmaster {
		return "", fmt.Errorf("the server process %d is not a child of postmaster %d on this host (%v): the server runs elsewhere", backendPID, postmaster, err)
	}
	control, err := os.Open(filepath.Join(dir, "global", "pg_control"))
	if err != nil {
		return "", fmt.Errorf("read pg_control: %w", err)
	}
	defer control.Close()
	var id [8]byte
	if _, err := io.ReadFull(control, id[:]); err != nil {
		return "", fmt.Errorf("read pg_control: %w", err)
	}
	if got := strconv.FormatUint(binary.LittleEndian.Uint64(id[:]), 10); got != systemID {
		return "", fmt.Errorf("%s has system identifier %s, the server %s", dir, got, systemID)
	}
	if _, err := os.ReadDir(filepath.Join(dir, "base")); err != nil {
		return "", fmt.Errorf("read the data directory: %w", err)
	}
	return dir, nil
}

// parentPID reads a process's parent from /proc.
func parentPID(pid int) (int, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc stat")
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 2 {
		return 0, errors.New("unexpected /proc stat")
	}
	return strconv.Atoi(fields[1])
}

// What PostgreSQL's own base backup leaves out (basebackup.c): the contents of directories
// the server empties or rebuilds at start, files it recreates, and a few that must not be
// restored.
var (
	excludeDirContents = map[string]bool{
		"pg_stat_tmp": true, "pg_replslot": true, "pg_dynshmem": true, "pg_notify": true,
		"pg_serial": true, "pg_snapshots": true, "pg_subtrans": true,
	}
	excludeFiles = map[string]bool{
		"postgresql.auto.conf.tmp": true, "current_logfiles.tmp": true, "backup_label": true,
		"tablespace_map": true, "backup_manifest": true, "postmaster.pid": true, "postmaster.opts": true,
	}
	// relFile matches a relation file: relfilenode, fork, segment.
	relFile = regexp.MustCompile(`^(t[0-9]+_)?([0-9]+)(_(fsm|vm|init))?(\.[0-9]+)?$`)
)

// localEntry is a file found in the walk, with where to read it.
type localEntry struct {
	File
	abs string
}

// walker lists a data directory or a tablespace the way BASE_BACKUP would send it.
type walker struct {
	skipDirs map[string]bool // absolute paths of tablespaces inside the data directory
	log      *slog.Logger
	entries  []localEntry
}

func (w *walker) walk(ts uint32, root, rel string, dbDir bool) error {
	dir := filepath.Join(root, rel)
	des, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && rel != "" {
			return nil // dropped while we looked
		}
		return fmt.Errorf("read directory %s: %w", dir, err)
	}
	names := make(map[string]bool, len(des))
	for _, de := range des {
		names[de.Name()] = true
	}
	for _, de := range des {
		name := de.Name()
		if strings.HasPrefix(name, "pgsql_tmp") || excludeFiles[name] || strings.HasPrefix(name, "pg_internal.init") {
			continue
		}
		if dbDir {
			if m := relFile.FindStringSubmatch(name); m != nil {
				if m[1] != "" { // temporary relation
					continue
				}
				if m[4] != "init" && names[m[2]+"_init"] { // unlogged: only the init fork
					continue
				}
			}
		}
		p := path.Join(rel, name)
		if ts == 0 && signalFiles[p] {
			continue
		}
		if ts == 0 && p == "global/pg_control" {
			continue // read last, as PostgreSQL does
		}
		abs := filepath.Join(root, p)
		fi, err := os.Lstat(abs)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("stat %s: %w", abs, err)
		}
		if (excludeDirContents[name] || (ts == 0 && p == "pg_wal")) && fi.Mode()&fs.ModeSymlink != 0 {
			if fi, err = os.Stat(abs); err != nil { // a link to a directory is kept as a directory
				return fmt.Errorf("stat %s: %w", abs, err)
			}
		}
		f := File{Tablespace: ts, Path: p, Mode: unixPerm(fi), ModTime: fi.ModTime().UTC().Truncate(time.Second)}
		switch {
		case excludeDirContents[name] && fi.IsDir():
			f.Type = "dir"
			w.entries = append(w.entries, localEntry{File: f})
		case ts == 0 && p == "pg_wal" && fi.IsDir():
			f.Type = "dir"
			w.entries = append(w.entries, localEntry{File: f})
			f.Path = "pg_wal/archive_status"
			w.entries = append(w.entries, localEntry{File: f})
		case ts == 0 && rel == "pg_tblspc" && fi.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(abs)
			if err != nil {
				return fmt.Errorf("read link %s: %w", abs, err)
			}
			f.Type, f.Link = "symlink", link
			w.entries = append(w.entries, localEntry{File: f})
		case fi.IsDir():
			f.Type = "dir"
			w.entries = append(w.entries, localEntry{File: f})
			if w.skipDirs[abs] {
				continue
			}
			// A database directory: base/<oid>, or <version dir>/<oid> in a tablespace.
			db := isDigits(name) && ((ts == 0 && rel == "base") || (ts != 0 && strings.HasPrefix(rel, "PG_") && !strings.Contains(rel, "/")))
			if err := w.walk(ts, root, p, db); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			f.Type, f.Size = "file", fi.Size()
			w.entries = append(w.entries, localEntry{File: f, abs: abs})
		default:
			w.log.Warn("skipping a file that is neither a regular file nor a directory", "path", abs, "mode", fi.Mode().String())
		}
	}
	return nil
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// unixPerm is the permission, setuid, setgid and sticky bits as a tar header carries them.
func unixPerm(fi fs.FileInfo) fs.FileMode {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fs.FileMode(st.Mode & 0o7777)
	}
	return fi.Mode().Perm()
}

var startTimeline = regexp.MustCompile(`(?m)^START TIMELINE: ([0-9]+)$`)

// readLocal takes the backup by reading dir directly, between pg_backup_start and
// pg_backup_stop on conn (a non-exclusive backup: if pgharbor dies, the session ends and
// the server forgets the backup).
func readLocal(ctx context.Context, conn *pgx.Conn, dir, label string, o Options, facts serverFacts, p *pipeline) (*source, error) {
	th := newThrottle(o.MaxRate)
	throttled := func(r io.Reader) io.Reader { return th.reader(ctx, r) }
	res := source{method: MethodLocal}
	log := o.Logger
	if err := conn.QueryRow(ctx, "SELECT pg_backup_start($1, $2)::text", label, o.FastCheckpoint).Scan(&res.startLSN); err != nil {
		return nil, fmt.Errorf("pg_backup_start (the user needs EXECUTE on it, or use --method stream): %w", err)
	}
	var catversion int64
	if err := conn.QueryRow(ctx, "SELECT catalog_version_no FROM pg_control_system()").Scan(&catversion); err != nil {
		return nil, fmt.Errorf("read the catalog version: %w", err)
	}
	rows, err := conn.Query(ctx, "SELECT oid, pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid")
	if err != nil {
		return nil, fmt.Errorf("list tablespaces: %w", err)
	}
	for rows.Next() {
		var t Tablespace
		if err := rows.Scan(&t.OID, &t.Location); err != nil {
			return nil, fmt.Errorf("list tablespaces: %w", err)
		}
		res.tablespaces = append(res.tablespaces, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tablespaces: %w", err)
	}

	w := &walker{skipDirs: map[string]bool{}, log: log}
	for _, t := range res.tablespaces {
		loc := t.Location
		if !filepath.IsAbs(loc) {
			loc = filepath.Join(dir, loc)
		}
		w.skipDirs[filepath.Clean(loc)] = true
	}
	if err := w.walk(0, dir, "", false); err != nil {
		return nil, err
	}
	versionDir := fmt.Sprintf("PG_%d_%d", facts.version/10000, catversion)
	for _, t := range res.tablespaces {
		root := t.Location
		if !filepath.IsAbs(root) {
			root = filepath.Join(dir, root)
		}
		fi, err := os.Stat(filepath.Join(root, versionDir))
		if err != nil {
			return nil, fmt.Errorf("tablespace %d: %w", t.OID, err)
		}
		w.entries = append(w.entries, localEntry{File: File{Tablespace: t.OID, Path: versionDir, Type: "dir", Mode: unixPerm(fi), ModTime: fi.ModTime().UTC().Truncate(time.Second)}})
		if err := w.walk(t.OID, root, versionDir, false); err != nil {
			return nil, err
		}
	}
	control := filepath.Join(dir, "global", "pg_control")
	fi, err := os.Stat(control)
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", control, err)
	}
	w.entries = append(w.entries, localEntry{File: File{Path: "global/pg_control", Type: "file", Size: fi.Size(), Mode: unixPerm(fi), ModTime: fi.ModTime().UTC().Truncate(time.Second)}, abs: control})

	var checksums string
	if err := conn.QueryRow(ctx, "SELECT current_setting('data_checksums')").Scan(&checksums); err != nil {
		return nil, fmt.Errorf("read data_checksums: %w", err)
	}
	startLSN, err := parseLSN(res.startLSN)
	if err != nil {
		return nil, fmt.Errorf("pg_backup_start returned %q: %w", res.startLSN, err)
	}

	var total, done int64
	for _, e := range w.entries {
		total += e.Size
	}
	for _, e := range w.entries {
		if e.Type == "file" {
			ok, err := readLocalFile(p, &e.File, e.abs, checksums == "on", startLSN, throttled)
			if err != nil {
				return nil, err
			}
			if !ok {
				log.Debug("file removed during the backup", "path", e.abs)
				continue
			}
			if n := len(e.PageErrors); n > 0 {
				res.checksumFailures += n
				log.Warn("page checksum verification failed; the pages are backed up as read", "file", e.abs, "pages", n, "blocks", e.PageErrors[:min(n, 10)])
			}
			done += e.Size
			if o.Progress != nil {
				o.Progress(done, total)
			}
		}
		if err := p.addFile(e.File); err != nil {
			return nil, err
		}
	}

	var labelFile, spcmap string
	if err := conn.QueryRow(ctx, "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_backup_stop(false)").Scan(&res.stopLSN, &labelFile, &spcmap); err != nil {
		return nil, fmt.Errorf("pg_backup_stop: %w", err)
	}
	m := startTimeline.FindStringSubmatch(labelFile)
	if m == nil {
		return nil, fmt.Errorf("backup_label without START TIMELINE: %q", labelFile)
	}
	tli, err := strconv.ParseUint(m[1], 10, 32)
	if err != nil {
		return nil, fmt.Errorf("backup_label START TIMELINE %q: %w", m[1], err)
	}
	// A backup taken on a primary ends on the timeline it started on.
	res.startTLI, res.stopTLI = uint32(tli), uint32(tli)
	if facts.inRecover {
		// On a standby pg_backup_stop returns the minimum recovery point, which lies on the
		// timeline pg_control gives with it; that timeline only grows, so reading it now
		// tells whether the backup stayed on the one it began on (standbyStop refuses it
		// otherwise).
		if err := conn.QueryRow(ctx, "SELECT min_recovery_end_timeline FROM pg_control_recovery()").Scan(&res.stopTLI); err != nil {
			return nil, fmt.Errorf("read the standby's minimum recovery point timeline: %w", err)
		}
	}
	// backup_label goes into the backup as BASE_BACKUP sends it; the tablespaces travel as
	// the pg_tblspc links, so tablespace_map is not needed.
	lf := File{Path: "backup_label", Type: "file", Mode: 0o600, ModTime: time.Now().UTC().Truncate(time.Second)}
	if lf.Extents, lf.Size, err = p.readFrom(strings.NewReader(labelFile), int64(len(labelFile)), nil); err != nil {
		return nil, err
	}
	lf.CRC = extentsCRC(lf.Extents)
	if err := p.addFile(lf); err != nil {
		return nil, err
	}
	res.files = p.files.lean
	res.pgManifest = buildPGManifest(res.files, res.startTLI, res.startLSN, res.stopLSN)
	return &res, nil
}

// readLocalFile stores one file. A file removed since the walk is skipped (false): the
// WAL replayed at restore removes it too. Like BASE_BACKUP it reads the size seen in the
// walk: bytes appended later come back from WAL, and a file truncated meanwhile is padded
// with zeros to that size (WAL replay truncates it again).
// With checkPages (a cluster with data checksums), the pages of data files are verified on
// the way (pageVerifier) and the failed ones listed in f.PageErrors.
// In a diff or incr backup, a file whose size and modification time show it unchanged since
// the parent is taken from the parent without being read (base.unchanged).
func readLocalFile(p *pipeline, f *File, abs string, checkPages bool, startLSN uint64, throttled func(io.Reader) io.Reader) (bool, error) {
	prev, err := p.base.unchanged(f)
	if err != nil {
		return false, err
	}
	if prev != nil {
		p.reuse(f, prev)
		return true, nil
	}
	fh, err := os.Open(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open %s: %w", abs, err)
	}
	defer fh.Close()
	var r io.Reader = fh
	var pv *pageVerifier
	if checkPages && checksummedFile(*f) {
		pv = &pageVerifier{r: fh, at: fh, startLSN: startLSN, base: firstBlock(path.Base(f.Path))}
		r = pv
	}
	r = throttled(r)
	_, err = p.readFile(io.MultiReader(r, zeros{}), f)
	if pv != nil {
		f.PageErrors = pv.bad
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", abs, err)
	}
	return true, nil
}
