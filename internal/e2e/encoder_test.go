package e2e

import (
	"encoding/json"
	"os"
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
