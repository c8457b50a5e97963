package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgharbor/pgharbor/internal/pgtest"
)

type incrJSON struct {
	Label      string   `json:"label"`
	Type       string   `json:"type"`
	Parent     string   `json:"parent"`
	References []string `json:"references"`
	Method     string   `json:"method"`
	Size       int64    `json:"size"`
	StoredSize int64    `json:"stored_size"`
	Reused     int64    `json:"reused"`
}

func (e *env) typedBackup(pg *pgtest.Cluster, args ...string) incrJSON {
	e.t.Helper()
	var b incrJSON
	out := e.must(append([]string{"backup", "--conn", pg.ConnString("postgres"), "--output", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), &b); err != nil || b.Label == "" {
		e.t.Fatalf("backup output %q: %v", out, err)
	}
	e.t.Logf("backup %s: type %s, parent %q, method %s, size %d, stored %d, reused %d, references %v",
		b.Label, b.Type, b.Parent, b.Method, b.Size, b.StoredSize, b.Reused, b.References)
	return b
}

// incrSnapshot is snapshot plus the tables the incremental journey creates, truncates,
// extends and rewrites.
func incrSnapshot(t *testing.T, connStr string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, connStr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var s string
	err = conn.QueryRow(ctx, `SELECT md5(
		(SELECT coalesce(string_agg(id::text || ':' || v, ',' ORDER BY id), '') FROM grow) || '|' ||
		(SELECT coalesce(string_agg(id::text || ':' || v, ',' ORDER BY id), '') FROM trunc) || '|' ||
		(SELECT coalesce(string_agg(id::text || ':' || v, ',' ORDER BY id), '') FROM vf) || '|' ||
		(SELECT coalesce(string_agg(id::text || ':' || v, ',' ORDER BY id), '') FROM newrel) || '|' ||
		(SELECT count(*)::text FROM pg_class WHERE relname = 'dropme'))`).Scan(&s)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return snapshot(t, connStr) + "/" + s
}

// relationFiles maps the path of every relation file under dir (base/, global/, tablespaces)
// to its bytes' digest.
func relationFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	rel := regexp.MustCompile(`^[0-9]+(_(fsm|vm|init))?(\.[0-9]+)?$`)
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !rel.MatchString(d.Name()) {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		r, _ := filepath.Rel(dir, p)
		out[r] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// initRepoFirst initialises the filesystem repository before the cluster archives into it:
// the repository directory belongs to the cluster's user, so the objects root writes are
// too, and archive_command succeeds from the first segment.
func (e *env) initRepoFirst() {
	e.t.Helper()
	dir := filepath.Join(e.dir, "repo")
	if err := os.Mkdir(dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	if e.cred != nil {
		if err := os.Chown(dir, int(e.cred.Uid), int(e.cred.Gid)); err != nil {
			e.t.Fatal(err)
		}
	}
	e.must("repo", "init")
}

// restoreFiles restores backup label (target immediate) without starting it and returns
// the data directory.
func (e *env) restoreFiles(label string) string {
	e.t.Helper()
	dir := filepath.Join(pgtest.MkdirOwned(e.t, e.cred, "pgharbor-incr-"), "data")
	e.must("restore", "--pgdata", dir, "--backup", label, "--target", "immediate", "--no-sync")
	return dir
}

// The journey of issue 21: full, writes, incr, writes, incr, full, incr, diff; relations
// created, dropped, truncated, extended and rewritten in between. Every backup restores (PITR
// to a moment after it) to exactly the data of that moment; the second incremental's files
// equal those of a full backup of the same state; incrementals store a fraction of a full;
// verify checks the chain and names a damaged object of a parent; expire keeps the parents
// of a kept incremental and lets them go once nothing references them.
func TestIncrementalChainRestoresEveryBackupInOnePass(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	// No autovacuum: the comparison of two backups of one state needs the pages unchanged
	// between them.
	e.initRepoFirst()
	pg := e.startPrimary(map[string]string{"autovacuum": "off"})
	pg.Pgbench(t, "postgres", "-i", "-s", "4", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
	pg.Exec(t, `CREATE TABLE grow (id int PRIMARY KEY, v text);
		INSERT INTO grow SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
		CREATE TABLE trunc (id int, v text); INSERT INTO trunc SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
		CREATE TABLE dropme (id int, v text); INSERT INTO dropme SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
		CREATE TABLE vf (id int, v text); INSERT INTO vf SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
		CREATE TABLE newrel (id int, v text); DROP TABLE newrel; CREATE TABLE newrel (id int, v text)`)
	// One row per page (fillfactor 10, rows too wide for two) and no index: an update stays
	// on its page (HOT), so updating k rows far apart changes exactly k pages of the file,
	// each in a chunk of its own.
	pg.Exec(t, `CREATE TABLE paged (id int, v text) WITH (fillfactor = 10);
		INSERT INTO paged SELECT g, repeat(md5(g::text), 22) FROM generate_series(1, 2000) g`)
	pg.Exec(t, "VACUUM ANALYZE")
	// The parent's mtimes must lie safely before the incrementals' start for the local
	// method to trust them: wait out the margin once.
	time.Sleep(3 * time.Second)

	full := e.typedBackup(pg, "--type", "full", "--method", "local")
	if full.Type != "full" || full.Parent != "" || len(full.References) != 0 {
		t.Fatalf("full backup: %+v", full)
	}
	// No full backup yet would have been refused; here the first incr has one.
	type step struct {
		b    incrJSON
		snap string
		at   time.Time
	}
	var steps []step
	mark := func(b incrJSON) step {
		p := markPoint(t, pg, len(steps)+1)
		return step{b: b, snap: incrSnapshot(t, pg.ConnString("postgres")), at: p.time}
	}
	steps = append(steps, mark(full))

	// About 1% of pgbench_accounts' pages: a contiguous range of rows, plus relations
	// created, dropped, truncated, extended.
	pg.Exec(t, `UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid BETWEEN 1 AND 4000;
		INSERT INTO newrel SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
		INSERT INTO grow SELECT g, md5(g::text) FROM generate_series(20001, 40000) g;
		TRUNCATE trunc; INSERT INTO trunc VALUES (1, 'after truncate');
		DROP TABLE dropme;
		UPDATE paged SET v = upper(v) WHERE id % 100 = 0`)
	pg.Exec(t, "CHECKPOINT")
	incr1 := e.typedBackup(pg, "--type", "incr", "--method", "local")
	t.Run("stores-only-changed-pages", func(t *testing.T) {
		e.checkPagedStored(pg, incr1.Label, 20)
	})
	if incr1.Type != "incr" || incr1.Parent != full.Label || !slices.Equal(incr1.References, []string{full.Label}) {
		t.Fatalf("first incremental: %+v, want parent and reference %s", incr1, full.Label)
	}
	if incr1.StoredSize*5 > full.StoredSize {
		t.Fatalf("an incremental after changing about 1%% of the pages stored %d bytes, the full %d: want at most a fifth", incr1.StoredSize, full.StoredSize)
	}
	// Compressed sizes flatter pgbench's very compressible pages; the file bytes the
	// incremental stored (not taken from the full) say how much it read into new bundles.
	if stored := incr1.Size - incr1.Reused; stored*10 > incr1.Size {
		t.Fatalf("the incremental stored %d of %d file bytes: want under a tenth", stored, incr1.Size)
	}
	t.Logf("stored: full %d bytes, incremental %d bytes (%.1f%%); file bytes stored by the incremental %d of %d (%.1f%%)",
		full.StoredSize, incr1.StoredSize, 100*float64(incr1.StoredSize)/float64(full.StoredSize),
		incr1.Size-incr1.Reused, incr1.Size, 100*float64(incr1.Size-incr1.Reused)/float64(incr1.Size))
	steps = append(steps, mark(incr1))

	// More writes, a table rewritten by VACUUM FULL (a new relfilenode), read everything.
	pg.Exec(t, `UPDATE pgbench_accounts SET abalance = abalance - 3 WHERE aid BETWEEN 200001 AND 204000;
		DELETE FROM vf WHERE id % 2 = 0;
		INSERT INTO grow SELECT g, md5(g::text) FROM generate_series(40001, 45000) g`)
	pg.Exec(t, "VACUUM FULL vf")
	// Hint bits: a plain VACUUM sets them everywhere now, so that no read between the two
	// backups below dirties a page (which would make the files differ for a good reason).
	pg.Exec(t, "VACUUM")
	pg.Exec(t, "CHECKPOINT")
	incr2 := e.typedBackup(pg, "--type", "incr", "--method", "local", "--checksum-all")
	if incr2.Parent != incr1.Label || !slices.Contains(incr2.References, full.Label) {
		t.Fatalf("second incremental: %+v, want parent %s and a reference to %s", incr2, incr1.Label, full.Label)
	}
	// A full backup of the same state, nothing written in between: every relation file of
	// the two restores is the same, byte for byte.
	full2 := e.typedBackup(pg, "--type", "full", "--method", "local")
	steps = append(steps, mark(incr2))
	steps = append(steps, mark(full2))
	t.Run("incremental-equals-full-byte-for-byte", func(t *testing.T) {
		t0 := time.Now()
		dirA := e.restoreFiles(incr2.Label)
		t1 := time.Now()
		dirB := e.restoreFiles(full2.Label)
		t.Logf("restore of the incremental %.2f s, of the full backup of the same state %.2f s", t1.Sub(t0).Seconds(), time.Since(t1).Seconds())
		// PostgreSQL's own check of the files against the backup_manifest the incremental
		// wrote (sizes and CRC-32C of every file, assembled from three backups).
		if out, err := pg.Command("pg_verifybackup", "-n", dirA).CombinedOutput(); err != nil || !strings.Contains(string(out), "successfully verified") {
			t.Fatalf("pg_verifybackup of the incremental's restore: %v\n%s", err, out)
		}
		a, b := relationFiles(t, dirA), relationFiles(t, dirB)
		if len(a) < 100 || len(a) != len(b) {
			t.Fatalf("restored relation files: %d from the incremental, %d from the full", len(a), len(b))
		}
		for p, data := range b {
			if !bytes.Equal(a[p], data) {
				var blocks []int
				for off := 0; off < max(len(data), len(a[p])); off += 8192 {
					x, y := a[p][min(off, len(a[p])):min(off+8192, len(a[p]))], data[min(off, len(data)):min(off+8192, len(data))]
					if !bytes.Equal(x, y) {
						blocks = append(blocks, off/8192)
					}
				}
				t.Errorf("%s (%d and %d bytes) differs between the incremental's restore and the full's in blocks %v", p, len(a[p]), len(data), blocks)
			}
		}
		// A delta restore of the first incremental (whose changed chunks are pieces of
		// pages from two backups) over the full's restore of a later state gives the same
		// files as a restore of it into an empty directory.
		out := e.must("restore", "--pgdata", dirB, "--backup", incr1.Label, "--target", "immediate", "--no-sync", "--delta")
		t.Logf("delta restore of %s: %s", incr1.Label, strings.TrimSpace(out))
		c, d := relationFiles(t, dirB), relationFiles(t, e.restoreFiles(incr1.Label))
		if len(c) != len(d) {
			t.Fatalf("delta restore of %s left %d relation files, a restore into an empty directory %d", incr1.Label, len(c), len(d))
		}
		for p, data := range d {
			if !bytes.Equal(c[p], data) {
				t.Errorf("%s differs between the delta restore of %s and its restore into an empty directory", p, incr1.Label)
			}
		}
	})

	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
	incr3 := e.typedBackup(pg, "--type", "incr", "--method", "stream")
	steps = append(steps, mark(incr3))
	pg.Exec(t, `UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN 300001 AND 302000;
		INSERT INTO grow SELECT g, md5(g::text) FROM generate_series(45001, 50000) g`)
	diff := e.typedBackup(pg, "--type", "diff", "--method", "local")
	if diff.Type != "diff" || diff.Parent != full2.Label || !slices.Equal(diff.References, []string{full2.Label}) {
		t.Fatalf("differential: %+v, want parent and only reference %s (the newest full, not the incremental after it)", diff, full2.Label)
	}
	if incr3.Parent != full2.Label || incr3.Method != "stream" || incr3.Reused == 0 {
		t.Fatalf("stream incremental: %+v", incr3)
	}
	steps = append(steps, mark(diff))
	pg.Exec(t, "INSERT INTO grow VALUES (100000, 'after everything')")
	waitArchived(t, pg)

	for _, s := range steps {
		t.Run("pitr-"+s.b.Type+"-"+s.b.Label, func(t *testing.T) {
			c := e.restoreStarted(pg, "--backup", s.b.Label, "--target-time", s.at.Format(time.RFC3339Nano), "--target-action", "promote")
			if got := incrSnapshot(t, c.ConnString("postgres")); got != s.snap {
				t.Fatalf("backup %s restored to %s: data %s, want %s", s.b.Label, s.at, got, s.snap)
			}
		})
	}

	out := e.must("info")
	for _, want := range []string{incr2.Label + "  incr  " + incr1.Label, diff.Label + "  diff  " + full2.Label} {
		if !strings.Contains(out, want) {
			t.Errorf("info does not show %q:\n%s", want, out)
		}
	}
	t.Logf("info:\n%s", out)
	out = e.must("verify", "--backup", incr2.Label)
	if !strings.Contains(out, full.Label) {
		t.Errorf("verify of a chain does not name the backups it checked: %s", out)
	}
	t.Logf("verify:\n%s", out)

	// Expire: a pinned incremental keeps its parent and the full it references; unpinned,
	// the three go (the newest full count keeps full2 and what descends from it).
	e.must("backup", "pin", incr2.Label)
	x := e.expire("--full-count", "1", "--dry-run")
	reasons := map[string]string{}
	for _, b := range x.Backups {
		reasons[b.Label] = b.Reason
		if !b.Keep {
			t.Errorf("dry run drops %s: %s", b.Label, b.Reason)
		}
	}
	if !strings.Contains(reasons[incr1.Label], "parent of "+incr2.Label) || !strings.Contains(reasons[full.Label], "referenced by "+incr2.Label) {
		t.Fatalf("dry run reasons: %v", reasons)
	}
	e.must("backup", "unpin", incr2.Label)
	x = e.expire("--full-count", "1")
	if x.DeletedBackups != 3 {
		t.Fatalf("expire deleted %d backups, want the first full and its two incrementals: %+v", x.DeletedBackups, x.Backups)
	}
	e.must("verify", "--backup", diff.Label)

	// A damaged object of a parent: verify and restore of the child name it and its backup.
	bundles, _ := filepath.Glob(filepath.Join(e.dir, "repo", "main", "backups", full2.Label, "data", "*"))
	if len(bundles) == 0 {
		t.Fatal("no bundles of the full backup found")
	}
	for _, p := range bundles {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x55
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r := e.run("verify", "--backup", diff.Label)
	if r.code == 0 || !strings.Contains(r.stderr, full2.Label+"/data/") || !strings.Contains(r.stderr, "backup "+full2.Label) {
		t.Fatalf("verify of a differential whose parent is damaged: exit %d\n%s", r.code, r.stderr)
	}
	t.Logf("verify with a damaged parent: %s", strings.TrimSpace(r.stderr))
	dir := filepath.Join(pgtest.MkdirOwned(t, e.cred, "pgharbor-incr-"), "data")
	r = e.run("restore", "--pgdata", dir, "--backup", diff.Label, "--target", "immediate")
	if r.code == 0 || !strings.Contains(r.stderr, full2.Label+"/data/") || !strings.Contains(r.stderr, "backup "+full2.Label) {
		t.Fatalf("restore of a differential whose parent is damaged: exit %d\n%s", r.code, r.stderr)
	}
	t.Logf("restore with a damaged parent: %s", strings.TrimSpace(r.stderr))
}

// An incremental with no backup to compare with is taken full, with a warning.
func TestIncrementalWithoutParentFallsBackToFull(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	e.initRepoFirst()
	pg := e.startPrimary(nil)
	r := e.run("backup", "--conn", pg.ConnString("postgres"), "--type", "diff", "--output", "json")
	if r.code != 0 {
		t.Fatalf("backup --type diff in an empty repository: exit %d\n%s", r.code, r.stderr)
	}
	var b incrJSON
	if err := json.Unmarshal([]byte(r.stdout), &b); err != nil || b.Type != "full" || b.Parent != "" {
		t.Fatalf("backup --type diff without a full: %q (%v), want a full backup", r.stdout, err)
	}
	if !strings.Contains(r.stderr, "no full backup to compare with") {
		t.Fatalf("no warning about the fallback: %s", r.stderr)
	}
	if r := e.run("backup", "--conn", pg.ConnString("postgres"), "--type", "weekly"); r.code == 0 || !strings.Contains(r.stderr, "want full, diff or incr") {
		t.Fatalf("backup --type weekly: exit %d %s", r.code, r.stderr)
	}
}

// checkPagedStored checks that backup label stored exactly pages pages of table paged's
// file, every other byte of it a reference to an earlier backup.
func (e *env) checkPagedStored(pg *pgtest.Cluster, label string, pages int64) {
	e.t.Helper()
	relPath := pg.QueryString(e.t, "postgres", "SELECT pg_relation_filepath('paged')")
	var m struct {
		Files []struct {
			Path    string `json:"path"`
			Size    int64  `json:"size"`
			Extents []struct {
				Backup string `json:"k"`
				Length int64  `json:"l"`
				Pages  []byte `json:"p"`
			} `json:"extents"`
		} `json:"file_list"`
	}
	if err := json.Unmarshal([]byte(e.must("repo", "get", "backups/"+label+"/manifest")), &m); err != nil {
		e.t.Fatal(err)
	}
	for _, f := range m.Files {
		if f.Path != relPath {
			continue
		}
		var stored int64
		for _, x := range f.Extents {
			if x.Backup == "" {
				stored += x.Length
			}
			if int64(len(x.Pages)) != x.Length/8192*8 {
				e.t.Errorf("%s: a piece of %d bytes has %d bytes of page hashes", f.Path, x.Length, len(x.Pages))
			}
		}
		if stored != pages*8192 {
			e.t.Fatalf("backup %s stored %d bytes of %s (%d bytes, %d pieces), want %d changed pages", label, stored, f.Path, f.Size, len(f.Extents), pages)
		}
		e.t.Logf("backup %s stored %d pages of %s's %d in %d pieces", label, stored/8192, f.Path, f.Size/8192, len(f.Extents))
		return
	}
	e.t.Fatalf("backup %s has no file %s", label, relPath)
}
