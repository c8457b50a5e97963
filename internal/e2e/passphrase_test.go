package e2e

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Passphrase mode: the cluster's data key is created once, sealed with the passphrase, and
// every object after it (bundles, manifests, WAL) is sealed to that key. A point-in-time
// restore through archive_command and restore_command works, and a wrong passphrase is
// refused with a message that says so.
func TestPassphraseRepository(t *testing.T) {
	e := newEnv(t, "", "")
	repoDir := filepath.Join(e.dir, "repo")
	conf := func(pass string) string {
		return fmt.Sprintf("repo:\n  url: file://%s\n  cluster: main\nencryption:\n  mode: passphrase\n  passphrase: %s\nwal:\n  spool_dir: %s\n",
			repoDir, pass, filepath.Join(e.dir, "spool"))
	}
	e.writeOwned(e.config, conf("correct horse battery staple"), 0o600)
	pg := e.primaryWithData()
	e.must("backup", "--conn", pg.ConnString("postgres"))
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "100")
	p := markPoint(t, pg, 1)
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "100")
	waitArchived(t, pg)

	if got := e.restoreAndRead(pg, "--target-name", p.name); got != p.snap {
		t.Fatalf("restored data %s, want the snapshot at %s: %s", got, p.name, p.snap)
	}

	// Header byte 6 is the encryption id: 2 = a scrypt stanza per object, 3 = sealed to
	// the data key. Only the data key itself may need scrypt.
	perID := map[byte][]string{}
	err := filepath.WalkDir(repoDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if len(b) < 8 || string(b[:4]) != "PGHB" {
			return fmt.Errorf("%s: not a pgharbor object", path)
		}
		rel, _ := filepath.Rel(repoDir, path)
		perID[b[6]] = append(perID[b[6]], rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if ids := perID[2]; len(ids) != 1 || ids[0] != "main/keys/data-key" {
		t.Fatalf("objects with a scrypt stanza: %v, want only main/keys/data-key", ids)
	}
	var bundles, wal int
	for _, k := range perID[3] {
		if strings.HasPrefix(k, "main/backups/") && strings.Contains(k, "/data/") {
			bundles++
		}
		if strings.HasPrefix(k, "main/wal/") {
			wal++
		}
	}
	if bundles == 0 || wal == 0 {
		t.Fatalf("objects sealed to the data key: %v; want bundles and WAL among them", perID[3])
	}

	bad := *e
	bad.config = filepath.Join(e.dir, "wrong.yaml")
	e.writeOwned(bad.config, conf("not the passphrase"), 0o600)
	r := bad.run("verify")
	if r.code == 0 || !strings.Contains(r.stderr, "wrong passphrase") {
		t.Fatalf("verify with a wrong passphrase: exit %d, stderr %q; want a failure saying wrong passphrase", r.code, r.stderr)
	}
}
