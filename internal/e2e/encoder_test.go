package e2e

import (
	"encoding/json"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestZstdEncodersShareOneChain: compression.encoder can change between backups of one
// repository. A full backup sealed by the Go encoder and an incremental on it sealed by the
// binary's default encoder (libzstd when built with cgo) restore to exactly the data at a
// named point; one verify run reads both, and does not read again the full backup's
// bundles that the incremental points at whole. An unknown encoder is refused up front.
func TestZstdEncodersShareOneChain(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	pg := e.primaryWithData()

	var ver struct {
		Encoder string `json:"zstd_encoder"`
	}
	if err := json.Unmarshal([]byte(e.must("version", "--output", "json")), &ver); err != nil || (ver.Encoder != "libzstd" && ver.Encoder != "go") {
		t.Fatalf("version names no zstd encoder: %+v %v", ver, err)
	}
	text, err := os.ReadFile(e.config)
	if err != nil {
		t.Fatal(err)
	}
	withEncoder := func(name string) func() {
		cfg := e.config + "." + name
		e.writeOwned(cfg, string(text)+"compression:\n  encoder: "+name+"\n", 0o600)
		saved := e.config
		e.config = cfg
		return func() { e.config = saved }
	}

	restore := withEncoder("lz4")
	r := e.run("backup", "--conn", pg.ConnString("postgres"))
	restore()
	if r.code == 0 || !strings.Contains(r.stderr, `unknown zstd encoder "lz4"`) {
		t.Fatalf("backup with encoder lz4: exit %d, stderr %s", r.code, r.stderr)
	}

	restore = withEncoder("go")
	r = e.run("backup", "--conn", pg.ConnString("postgres"))
	restore()
	if r.code != 0 || !strings.Contains(r.stderr, "zstd_encoder=go") {
		t.Fatalf("full backup with the Go encoder: exit %d, stderr %s", r.code, r.stderr)
	}
	pg.Pgbench(t, "postgres", "-n", "-t", "200")
	r = e.run("backup", "--conn", pg.ConnString("postgres"), "--type", "incr")
	if r.code != 0 || !strings.Contains(r.stderr, "zstd_encoder="+ver.Encoder) {
		t.Fatalf("incremental with the default encoder: exit %d, stderr %s", r.code, r.stderr)
	}
	p := markPoint(t, pg, 1)
	waitArchived(t, pg)

	if got := e.restoreAndRead(pg, "--target-name", p.name); got != p.snap {
		t.Fatalf("restore of the mixed chain: %s, want %s", got, p.snap)
	}
	var results []struct {
		Label           string   `json:"label"`
		References      []string `json:"references"`
		AlreadyVerified int      `json:"already_verified_bundles"`
	}
	if err := json.Unmarshal([]byte(e.must("verify", "--output", "json")), &results); err != nil {
		t.Fatal(err)
	}
	if len(results) != 2 || len(results[1].References) != 1 || results[1].References[0] != results[0].Label {
		t.Fatalf("verify: %+v, want the full backup and the incremental on it", results)
	}
	if results[0].AlreadyVerified != 0 || results[1].AlreadyVerified == 0 {
		t.Fatalf("verify: %+v: the incremental's unchanged pieces were read again", results)
	}
}

// TestDenseBundlesRestoreExactly: rows of random bytes beside text, stored inline, make
// bundles that keep more than half their size under zstd; a backup compresses them at
// compression.dense_level (the log and the summary count them) and the rest at the level,
// and the restore gives back exactly the data at a named point, dense table included.
func TestDenseBundlesRestoreExactly(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	pg := e.primaryWithData()
	// About 12 MB: each row 1 KiB of SHA-256 output and 450 bytes of text, kept on the
	// table's own pages (STORAGE PLAIN, no TOAST compression).
	pg.Exec(t, `CREATE TABLE dense (id int PRIMARY KEY, r bytea, t text);
		ALTER TABLE dense ALTER r SET STORAGE PLAIN, ALTER t SET STORAGE PLAIN;
		INSERT INTO dense SELECT g,
			(SELECT string_agg(sha256((g * 100 + i)::text::bytea), ''::bytea) FROM generate_series(1, 32) i),
			repeat('dense row ' || g || ' ', 30)
		FROM generate_series(1, 8000) g`)
	denseDigest := func(conn string) string {
		return queryDigest(t, conn, `SELECT md5(string_agg(id::text || ':' || encode(r, 'hex') || ':' || t, ',' ORDER BY id)) FROM dense`)
	}
	want := denseDigest(pg.ConnString("postgres"))

	r := e.run("backup", "--conn", pg.ConnString("postgres"))
	if r.code != 0 {
		t.Fatalf("backup: exit %d, stderr %s", r.code, r.stderr)
	}
	m := regexp.MustCompile(`bundles=(\d+) bundles_uncompressed=\d+ bundles_dense=(\d+)`).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("backup log names no dense bundles: %s", r.stderr)
	}
	if n, _ := strconv.Atoi(m[2]); n == 0 || m[2] == m[1] {
		t.Fatalf("%s of %s bundles dense: want some, not all (the dense table is a part of the cluster)", m[2], m[1])
	}
	var info struct {
		Catalog struct {
			Backups []struct {
				Dense int `json:"bundles_dense"`
			} `json:"backups"`
		} `json:"catalog"`
	}
	err := json.Unmarshal([]byte(e.must("info", "--output", "json")), &info)
	if b := info.Catalog.Backups; err != nil || len(b) != 1 || strconv.Itoa(b[0].Dense) != m[2] {
		t.Fatalf("info: %+v %v, want one backup with %s dense bundles", b, err, m[2])
	}
	p := markPoint(t, pg, 1)
	waitArchived(t, pg)

	c := e.restoreStarted(pg, "--target-name", p.name)
	if got := snapshot(t, c.ConnString("postgres")); got != p.snap {
		t.Fatalf("restored snapshot %s, want %s", got, p.snap)
	}
	if got := denseDigest(c.ConnString("postgres")); got != want {
		t.Fatalf("restored dense table %s, want %s", got, want)
	}
}
