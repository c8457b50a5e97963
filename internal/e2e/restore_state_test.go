package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/fs"
	"github.com/pgharbor/pgharbor/wal"
)

// These tests cover state left behind by someone else: a data directory that an earlier
// restore wrote and a server then changed, a primary's own directory, a spool another
// cluster filled, a segment of another system in the archive. Each restore is compared with
// the snapshot taken at its target.

// restoreInto restores with --start into c's data directory (with extra args such as
// --delta) and returns the snapshot of the recovered data; the server is left running.
func (e *env) restoreInto(c *pgtest.Cluster, args ...string) string {
	e.t.Helper()
	all := append([]string{"restore", "--pgdata", c.DataDir, "--start", "--port", strconv.Itoa(c.Port), "--socket-dir", c.SocketDir, "--archive-mode", "off", "--start-timeout", "3m"}, args...)
	e.must(all...)
	return snapshot(e.t, c.ConnString("postgres"))
}

// stopped stops the server on c's directory.
func stopped(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	if out, err := c.Command("pg_ctl", "-D", c.DataDir, "-m", "fast", "-w", "stop").CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl stop: %v: %s", err, out)
	}
}

// A delta restore over a copy that an earlier restore wrote and a promotion changed
// (timeline 2, a new pg_control) must give exactly the data at the new target, earlier or
// later than the first one. Keeping that copy's pg_control (whose whole-file CRC equals the
// backup's, as every pg_control's does) left a directory that would not start.
func TestDeltaRestoreOverARestoredAndPromotedCopy(t *testing.T) {
	e := newEnv(t, "", "")
	j := runJourney(t, e, "local")
	p1, p2 := j.points[0], j.points[1]
	root := pgtest.MkdirOwned(t, e.cred, "pgharbor-delta-promoted-")
	c := &pgtest.Cluster{BinDir: j.pg.BinDir, Root: root, DataDir: filepath.Join(root, "data"), SocketDir: root, Port: pgtest.FreePort(t), Cred: e.cred}
	t.Cleanup(func() { c.Command("pg_ctl", "-D", c.DataDir, "-m", "immediate", "-w", "stop").Run() })

	if got := e.restoreInto(c, "--target-xid", p1.xid, "--target-action", "promote"); got != p1.snap {
		t.Fatalf("first restore: %s, want point 1 %s", got, p1.snap)
	}
	c.Exec(t, "INSERT INTO marks VALUES (100)") // the promoted copy diverges
	c.Exec(t, "CHECKPOINT")
	stopped(t, c)
	if got := e.restoreInto(c, "--delta", "--target-xid", p2.xid, "--target-action", "promote"); got != p2.snap {
		t.Fatalf("delta restore to a later target: %s, want point 2 %s", got, p2.snap)
	}
	stopped(t, c)
	if got := e.restoreInto(c, "--delta", "--target-name", p1.name, "--target-action", "promote"); got != p1.snap {
		t.Fatalf("delta restore to an earlier target: %s, want point 1 %s", got, p1.snap)
	}
	stopped(t, c)
	if got := e.restoreInto(c, "--delta"); got != j.final {
		t.Fatalf("delta restore to the latest WAL: %s, want %s", got, j.final)
	}
}

// A delta restore of a primary's own directory to a point before a VACUUM FULL of mapped
// catalogs: pg_filenode.map (one per database, and global/) changed after the backup, and
// the files it now names are not in the backup. Keeping the newer map left every
// connection failing with "could not open file".
func TestDeltaRestoreOfThePrimaryAcrossVacuumFullOfMappedCatalogs(t *testing.T) {
	e := newEnv(t, "", "")
	pg := e.primaryWithData()
	e.must("backup", "--conn", pg.ConnString("postgres"))
	pg.Pgbench(t, "postgres", "-n", "-t", "100")
	before := markPoint(t, pg, 1)
	mapBefore, err := os.ReadFile(filepath.Join(pg.DataDir, "global", "pg_filenode.map"))
	if err != nil {
		t.Fatal(err)
	}
	pg.Exec(t, "VACUUM FULL pg_class")    // mapped, per database
	pg.Exec(t, "VACUUM FULL pg_database") // mapped, shared (global/pg_filenode.map)
	pg.Exec(t, "INSERT INTO marks VALUES (2)")
	pg.Pgbench(t, "postgres", "-n", "-t", "100")
	pg.Exec(t, "CHECKPOINT")
	mapAfter, _ := os.ReadFile(filepath.Join(pg.DataDir, "global", "pg_filenode.map"))
	if string(mapAfter) == string(mapBefore) {
		t.Fatal("VACUUM FULL pg_database did not change global/pg_filenode.map: the test would prove nothing")
	}
	waitArchived(t, pg)
	pg.Stop(t, "fast")
	start := time.Now()
	got := e.restoreInto(pg, "--delta", "--target-name", before.name, "--target-action", "promote")
	if got != before.snap {
		t.Fatalf("delta restore of the primary's directory: %s, want the snapshot at %s %s", got, before.name, before.snap)
	}
	if n := pg.QueryString(t, "postgres", "SELECT count(*)::text FROM pg_class"); n == "0" {
		t.Fatal("pg_class is empty after the restore")
	}
	t.Logf("delta restore across VACUUM FULL of mapped catalogs took %v", time.Since(start))
}

// Two clusters that share a cluster name ("main") but not a repository, restored one after
// the other on one host with the default spool: the first restore stops early and leaves
// segments prefetched; the second must use only its own repository's WAL.
func TestTwoClustersOfOneNameRestoreFromTheirOwnRepositories(t *testing.T) {
	type side struct {
		e     *env
		pg    *pgtest.Cluster
		early point
		final string
	}
	var sides [2]side
	for i := range sides {
		e := newEnvSpool(t, "", "", true)
		pg := e.primaryWithData()
		e.must("backup", "--conn", pg.ConnString("postgres"))
		early := markPoint(t, pg, 1)
		// Several segments after the early point, so that a restore to it prefetches some.
		for range 4 {
			pg.Pgbench(t, "postgres", "-n", "-t", "200")
			pg.Exec(t, "SELECT pg_switch_wal()")
		}
		pg.Exec(t, "INSERT INTO marks VALUES ($1)", 10+i)
		final := snapshot(t, pg.ConnString("postgres"))
		waitArchived(t, pg)
		sides[i] = side{e, pg, early, final}
	}
	if sides[0].final == sides[1].final {
		t.Fatal("both clusters hold the same data: the test would prove nothing")
	}
	if got := sides[0].e.restoreAndRead(sides[0].pg, "--target-name", sides[0].early.name, "--target-action", "promote"); got != sides[0].early.snap {
		t.Fatalf("cluster 1 to its early point: %s, want %s", got, sides[0].early.snap)
	}
	if got := sides[1].e.restoreAndRead(sides[1].pg); got != sides[1].final {
		t.Fatalf("cluster 2 to the latest WAL after cluster 1's restore: %s, want its own data %s", got, sides[1].final)
	}
	if got := sides[0].e.restoreAndRead(sides[0].pg); got != sides[0].final {
		t.Fatalf("cluster 1 to the latest WAL after cluster 2's restore: %s, want its own data %s", got, sides[0].final)
	}
}

// A segment of another database system planted in the archive, under the name of a segment
// recovery needs: the restore fails and names it, instead of promoting early and
// reporting the target reached.
func TestRestoreFailsOnAForeignSegmentInTheArchive(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "", "")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	e.must("repo", "init")
	e.must("backup", "--conn", pg.ConnString("postgres"))
	var segs []string
	for range 3 {
		pg.Pgbench(t, "postgres", "-n", "-t", "100")
		segs = append(segs, pg.QueryString(t, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())"))
		pg.Exec(t, "SELECT pg_switch_wal()")
	}
	waitArchived(t, pg)
	victim := segs[1] // recovery needs it, and more WAL follows it

	// Another cluster's segment of the same name, sealed to this repository's key as a
	// writer could.
	other := pgtest.Start(t, pgtest.Options{})
	for {
		cur := other.QueryString(t, "postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())")
		if cur > victim {
			break
		}
		other.Exec(t, "CREATE TABLE IF NOT EXISTS filler (x int)")
		other.Exec(t, "INSERT INTO filler SELECT generate_series(1, 1000)")
		other.Exec(t, "SELECT pg_switch_wal()")
	}
	foreign, err := os.ReadFile(filepath.Join(other.DataDir, "pg_wal", victim))
	if err != nil {
		t.Fatalf("the other cluster has no segment %s: %v", victim, err)
	}
	b, err := fs.New(filepath.Join(e.dir, "repo"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := codec.New(codec.Config{Encryption: "age", Recipients: []string{e.recipient}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.New(b, c, "main")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := wal.SegmentKey(victim)
	if err := b.Delete(ctx, r.Key(key)); err != nil {
		t.Fatal(err)
	}
	if err := r.PutBytes(ctx, r.Key(key), foreign, true); err != nil {
		t.Fatal(err)
	}

	root := pgtest.MkdirOwned(t, e.cred, "pgharbor-foreign-")
	dc := &pgtest.Cluster{BinDir: pg.BinDir, Root: root, DataDir: filepath.Join(root, "data"), SocketDir: root, Port: pgtest.FreePort(t), Cred: e.cred}
	t.Cleanup(func() { dc.Command("pg_ctl", "-D", dc.DataDir, "-m", "immediate", "-w", "stop").Run() })
	res := e.run("restore", "--pgdata", dc.DataDir, "--start", "--port", strconv.Itoa(dc.Port), "--socket-dir", dc.SocketDir, "--archive-mode", "off", "--start-timeout", "2m")
	if res.code == 0 {
		t.Fatalf("restore over a foreign segment reported success:\n%s", res.stdout)
	}
	if !strings.Contains(res.stderr, victim) || !strings.Contains(res.stderr, "database system") {
		t.Fatalf("the failure does not name the foreign segment %s:\n%s", victim, res.stderr)
	}
	t.Logf("restore failed as it must:\n%s", lastLines(res.stderr, 12))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
