package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/pgtest"
	"github.com/pgharbor/pgharbor/internal/testserver"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/s3"
	"github.com/pgharbor/pgharbor/wal"
)

// Write authentication, as an operator turns it on for a repository that already holds
// unsigned backups and WAL: a reader given the verify key refuses them, `repo sign-existing`
// signs them, writers then sign what they store, and a reader holding only the identity and
// the public verify key restores. Objects stored by a host without the write key (sealed to
// the public recipients, unsigned or signed with another key, or a signed object moved to
// another name) are refused by `wal fetch`, `restore`, `info` and `verify`, naming them.
func TestSigningRefusesObjectsFromHostsWithoutTheWriteKey(t *testing.T) {
	parallel(t)
	e := newEnv(t, "", "")
	repoDir := filepath.Join(e.dir, "repo")
	spool := filepath.Join(e.dir, "spool")
	// Owned by the cluster user, who pushes WAL into it; pgharbor running as root keeps that owner.
	if err := os.Mkdir(repoDir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(repoDir, int(e.cred.Uid), int(e.cred.Gid)); err != nil {
		t.Fatal(err)
	}

	// The write key, made by the CLI, kept by the cluster user (archive_command runs as it).
	keyFile := filepath.Join(e.dir, "signing.key")
	var kg struct {
		VerifyKey string `json:"verify_key"`
	}
	if err := json.Unmarshal([]byte(e.must("keygen", "--signing", "--out", keyFile, "--output", "json")), &kg); err != nil || !strings.HasPrefix(kg.VerifyKey, "pgharbor-verify1") {
		t.Fatalf("keygen --signing: %+v, %v", kg, err)
	}
	if st, err := os.Stat(keyFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("signing key file: %v, %v", st, err)
	}
	if err := os.Chown(keyFile, int(e.cred.Uid), int(e.cred.Gid)); err != nil {
		t.Fatal(err)
	}

	// The writer holds the recipients (and, once signing is on, the write key), never the
	// identity; the reader holds the identity and the public verify key, never the write key.
	writerConf := func(signing bool) string {
		s := fmt.Sprintf("repo:\n  url: file://%s\n  cluster: main\n", repoDir)
		if signing {
			s += fmt.Sprintf("  signing_key_file: %s\n", keyFile)
		}
		return s + fmt.Sprintf("encryption:\n  mode: age\n  recipients: [%s]\nwal:\n  spool_dir: %s\n", e.recipient, spool)
	}
	e.writeOwned(e.config, writerConf(false), 0o600)
	reader := *e
	reader.config = filepath.Join(e.dir, "reader.yaml")
	e.writeOwned(reader.config, fmt.Sprintf("repo:\n  url: file://%s\n  cluster: main\n  verify_keys: [%s]\nencryption:\n  mode: age\n  recipients: [%s]\n  identity_file: %s\nwal:\n  spool_dir: %s\n",
		repoDir, kg.VerifyKey, e.recipient, e.identity, filepath.Join(e.dir, "reader-spool")), 0o600)

	// Phase 1: signing off. Backups and WAL work as before, unsigned.
	e.must("repo", "init")
	pg := e.startPrimary(nil)
	pg.Pgbench(t, "postgres", "-i", "-s", "1", "-q")
	pg.Exec(t, "CREATE TABLE marks (k int PRIMARY KEY)")
	e.must("backup", "--conn", pg.ConnString("postgres"))
	waitArchived(t, pg)
	unsigned := signedFlags(t, repoDir)
	if len(unsigned.signed) != 0 || len(unsigned.toSign) == 0 {
		t.Fatalf("signing off: signed objects %v, unsigned manifests and WAL %d", unsigned.signed, len(unsigned.toSign))
	}
	label := onlyBackup(t, e)

	// A reader with the verify key refuses the unsigned repository, naming what it refuses.
	r := reader.run("info")
	if r.code != 0 || !strings.Contains(r.stdout, "REFUSED backup "+label) || !strings.Contains(r.stdout, "no signature") {
		t.Fatalf("info on an unsigned repository: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	r = reader.run("verify")
	if r.code == 0 || !strings.Contains(r.stderr, "backup "+label) || !strings.Contains(r.stderr, "main/backups/"+label+"/summary") {
		t.Fatalf("verify on an unsigned repository: exit %d, stderr %s", r.code, r.stderr)
	}

	// Phase 2: the upgrade, in the documented order: writers get the write key (what they
	// store from now on is signed), the repository is checked, what exists is signed.
	e.writeOwned(e.config, writerConf(true), 0o600)
	// Once a segment went out with the new configuration, no push with the old one is under
	// way (the archiver runs one archive_command at a time), and the unsigned set is final.
	waitArchived(t, pg)
	unsigned = signedFlags(t, repoDir)
	plainReader := *e
	plainReader.config = filepath.Join(e.dir, "plain-reader.yaml")
	e.writeOwned(plainReader.config, strings.Replace(string(mustRead(t, reader.config)), "  verify_keys: ["+kg.VerifyKey+"]\n", "", 1), 0o600)
	plainReader.must("verify")
	if out := e.must("repo", "sign-existing", "--signing-key", keyFile, "--dry-run"); !strings.Contains(out, fmt.Sprintf("would sign %d objects", len(unsigned.toSign))) {
		t.Fatalf("sign-existing --dry-run: %s (want %d objects)", out, len(unsigned.toSign))
	}
	if got := signedFlags(t, repoDir); len(got.signed) != 0 {
		t.Fatalf("--dry-run signed %v", got.signed)
	}
	if out := e.must("repo", "sign-existing", "--signing-key", keyFile); !strings.Contains(out, fmt.Sprintf("signed %d objects, 0 already signed, 0 refused", len(unsigned.toSign))) {
		t.Fatalf("sign-existing: %s", out)
	}
	if out := e.must("repo", "sign-existing", "--signing-key", keyFile); !strings.Contains(out, fmt.Sprintf("signed 0 objects, %d already signed", len(unsigned.toSign))) {
		t.Fatalf("sign-existing again: %s", out)
	}

	// Phase 3: signing on. New WAL and backups are signed; data bundles are not (the signed
	// manifest vouches for their pieces).
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "200")
	p := markPoint(t, pg, 1)
	pg.Pgbench(t, "postgres", "-n", "-c", "2", "-t", "100")
	waitArchived(t, pg)
	after := signedFlags(t, repoDir)
	if len(after.toSign) != 0 || len(after.signed) <= len(unsigned.toSign) {
		t.Fatalf("signing on: unsigned manifests or WAL %v; %d signed", after.toSign, len(after.signed))
	}
	for _, k := range after.signed {
		if strings.Contains(k, "/data/") {
			t.Fatalf("bundle %s is signed", k)
		}
	}
	if got := reader.must("verify"); !strings.Contains(got, "backup "+label+" OK") {
		t.Fatalf("verify after the upgrade: %s", got)
	}
	// The writer cannot read what it wrote.
	if r := e.run("repo", "get", "backups/"+label+"/manifest"); r.code == 0 || !strings.Contains(r.stderr, "identity") {
		t.Fatalf("writer read a manifest: exit %d, stderr %s", r.code, r.stderr)
	}

	// The normal path: the reader restores the backup signed after the fact, through WAL
	// signed after the fact and WAL signed when pushed, to the recovery point.
	if got := reader.restoreAndRead(pg, "--target-name", p.name); got != p.snap {
		t.Fatalf("restored data %s, want the snapshot at %s: %s", got, p.name, p.snap)
	}

	// Phase 4: forgeries by a host that can write to the bucket but holds no write key.
	forger, err := codec.New(codec.Config{Encryption: "age", Recipients: []string{e.recipient}})
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _, err := codec.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	otherSigner, err := codec.New(codec.Config{Encryption: "age", Recipients: []string{e.recipient}, SigningKey: otherKey})
	if err != nil {
		t.Fatal(err)
	}
	segs := segmentKeys(t, repoDir)
	if len(segs) < 3 {
		t.Fatalf("archived segments: %v", segs)
	}
	victim, donor := segs[len(segs)-1], segs[len(segs)-2]
	victimName := filepath.Base(victim)
	out := t.TempDir()
	// A spool of its own: the restore above may have prefetched the genuine segment.
	fetchSpool := t.TempDir()
	reader.must("wal", "fetch", "--spool-dir", fetchSpool, "--prefetch", "-1", victimName, filepath.Join(out, "genuine"))
	genuine := mustRead(t, filepath.Join(out, "genuine"))
	saved := mustRead(t, filepath.Join(repoDir, victim))

	forgeries := []struct {
		name, want string
		body       func() []byte
	}{
		{"unsigned", "no signature", func() []byte {
			sealed, _, err := forger.SealDigest(genuine)
			if err != nil {
				t.Fatal(err)
			}
			return sealed
		}},
		{"other key", "not a configured verify key", func() []byte {
			sealed, _, err := otherSigner.SealDigest(genuine)
			if err != nil {
				t.Fatal(err)
			}
			signed, err := otherSigner.Sign(sealed, victim)
			if err != nil {
				t.Fatal(err)
			}
			return signed
		}},
		{"another segment's signed object", "another name", func() []byte { return mustRead(t, filepath.Join(repoDir, donor)) }},
	}
	for _, f := range forgeries {
		writeRepoFile(t, filepath.Join(repoDir, victim), f.body())
		dest := filepath.Join(out, "fetched-"+strings.ReplaceAll(f.name, " ", "-"))
		r := reader.run("wal", "fetch", "--spool-dir", fetchSpool, "--prefetch", "-1", victimName, dest)
		if r.code != 126 || !strings.Contains(r.stderr, victim) || !strings.Contains(r.stderr, f.want) || !strings.Contains(r.stderr, "not authenticated") {
			t.Errorf("wal fetch of a forged segment (%s): exit %d, stderr %s; want 126 naming %s and %q", f.name, r.code, r.stderr, victim, f.want)
		}
		t.Logf("wal fetch, %s: %s", f.name, strings.TrimSpace(r.stderr))
		if _, err := os.Stat(dest); !os.IsNotExist(err) {
			t.Errorf("wal fetch of a forged segment (%s) left %s: %v", f.name, dest, err)
		}
		if left, _ := filepath.Glob(filepath.Join(out, ".pgharbor-fetch-*")); len(left) != 0 {
			t.Errorf("temp files left: %v", left)
		}
	}
	// During a restore, PostgreSQL's restore_command meets the forged segment: recovery stops
	// (exit 126 is fatal to it) instead of ending early and promoting, and the restore fails
	// with the server's log, which names the object.
	writeRepoFile(t, filepath.Join(repoDir, victim), forgeries[0].body())
	root := pgtest.MkdirOwned(t, e.cred, "pgharbor-restore-")
	c := &pgtest.Cluster{BinDir: pg.BinDir, Root: root, DataDir: filepath.Join(root, "data"), SocketDir: root, Port: pgtest.FreePort(t), Cred: e.cred}
	t.Cleanup(func() { c.Command("pg_ctl", "-D", c.DataDir, "-m", "immediate", "-w", "stop").Run() })
	r = reader.run("restore", "--pgdata", c.DataDir, "--start", "--port", strconv.Itoa(c.Port), "--socket-dir", c.SocketDir, "--archive-mode", "off")
	if r.code == 0 || !strings.Contains(r.stderr, victim) || !strings.Contains(r.stderr, "no signature") {
		t.Fatalf("restore through a forged segment: exit %d\nstderr: %s", r.code, r.stderr)
	}
	if c.Command("pg_ctl", "-D", c.DataDir, "status").Run() == nil {
		t.Fatal("the server runs after recovery met a forged segment")
	}
	writeRepoFile(t, filepath.Join(repoDir, victim), saved)
	reader.must("wal", "fetch", "--spool-dir", fetchSpool, "--prefetch", "-1", victimName, filepath.Join(out, "again"))

	// verify reads the WAL a backup needs: a forged segment in the backup's range fails it,
	// naming the object.
	var sums struct {
		Catalog struct {
			Backups []struct {
				Label    string `json:"label"`
				Timeline uint32 `json:"timeline"`
				StartLSN string `json:"start_lsn"`
			} `json:"backups"`
		} `json:"catalog"`
	}
	if err := json.Unmarshal([]byte(reader.must("info", "--output", "json")), &sums); err != nil || len(sums.Catalog.Backups) == 0 {
		t.Fatalf("info: %v %+v", err, sums)
	}
	first := sums.Catalog.Backups[0]
	startLSN, err := wal.ParseLSN(first.StartLSN)
	if err != nil {
		t.Fatal(err)
	}
	startName, err := wal.SegmentOf(startLSN, wal.TimelineID(first.Timeline), 16<<20).SegmentName(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	startPath, err := wal.ObjectPath(startName)
	if err != nil {
		t.Fatal(err)
	}
	startKey := filepath.Join(repoDir, "main", startPath)
	savedStart := mustRead(t, startKey)
	reader.must("wal", "fetch", "--spool-dir", fetchSpool, "--prefetch", "-1", startName, filepath.Join(out, "start"))
	forgedStart, _, err := forger.SealDigest(mustRead(t, filepath.Join(out, "start")))
	if err != nil {
		t.Fatal(err)
	}
	writeRepoFile(t, startKey, forgedStart)
	if r := reader.run("verify", "--backup", first.Label); r.code == 0 || !strings.Contains(r.stderr, startName) || !strings.Contains(r.stderr, "no signature") {
		t.Fatalf("verify with a forged segment in the backup's WAL: exit %d, stderr %s", r.code, r.stderr)
	} else {
		t.Logf("verify, forged segment in the backup's WAL: %s", strings.TrimSpace(r.stderr))
	}
	writeRepoFile(t, startKey, savedStart)
	reader.must("verify", "--backup", first.Label)

	// A forged manifest for the real backup: restore refuses it before writing anything.
	manifestKey := "main/backups/" + label + "/manifest"
	savedManifest := mustRead(t, filepath.Join(repoDir, manifestKey))
	plainManifest := []byte(reader.must("repo", "get", strings.TrimPrefix(manifestKey, "main/")))
	forgedManifest, err := forger.Seal(plainManifest)
	if err != nil {
		t.Fatal(err)
	}
	writeRepoFile(t, filepath.Join(repoDir, manifestKey), forgedManifest)
	pgdata := filepath.Join(t.TempDir(), "data")
	r = reader.run("restore", "--pgdata", pgdata, "--backup", label)
	if r.code == 0 || !strings.Contains(r.stderr, manifestKey) || !strings.Contains(r.stderr, "no signature") {
		t.Fatalf("restore with a forged manifest: exit %d, stderr %s", r.code, r.stderr)
	}
	t.Logf("restore, forged manifest: %s", strings.TrimSpace(r.stderr))
	if ents, _ := os.ReadDir(pgdata); len(ents) != 0 {
		t.Fatalf("restore with a forged manifest wrote %d entries into %s", len(ents), pgdata)
	}
	r = reader.run("verify", "--backup", label)
	if r.code == 0 || !strings.Contains(r.stderr, manifestKey) {
		t.Fatalf("verify with a forged manifest: exit %d, stderr %s", r.code, r.stderr)
	}
	writeRepoFile(t, filepath.Join(repoDir, manifestKey), savedManifest)

	// A whole forged backup, newer than the real one, made of the real one's content: info
	// lists it as refused, verify fails naming it, restore leaves it out and uses the real one.
	fake := "20991231T000000Z"
	for _, name := range []string{"summary", "manifest", "backup_manifest"} {
		plain := []byte(reader.must("repo", "get", "backups/"+label+"/"+name))
		sealed, err := forger.Seal([]byte(strings.ReplaceAll(string(plain), label, fake)))
		if err != nil {
			t.Fatal(err)
		}
		writeRepoFile(t, filepath.Join(repoDir, "main/backups", fake, name), sealed)
	}
	r = reader.run("info")
	if r.code != 0 || !strings.Contains(r.stdout, "REFUSED backup "+fake) || !strings.Contains(r.stdout, "main/backups/"+fake+"/summary") {
		t.Fatalf("info with a forged backup: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("info, forged backup:\n%s", r.stdout)
	r = reader.run("verify")
	t.Logf("verify, forged backup: %s", strings.TrimSpace(r.stderr))
	if r.code == 0 || !strings.Contains(r.stderr, "backup "+fake) || !strings.Contains(r.stdout+r.stderr, "backup "+label+" OK") {
		t.Fatalf("verify with a forged backup: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	r = reader.run("restore", "--pgdata", filepath.Join(t.TempDir(), "data"), "--backup", fake)
	if r.code == 0 || !strings.Contains(r.stderr, "backup "+fake+" is refused") {
		t.Fatalf("restore --backup of a forged backup: exit %d, stderr %s", r.code, r.stderr)
	}
	if got := reader.restoreAndRead(pg, "--target-name", p.name); got != p.snap {
		t.Fatalf("restore next to a forged backup: data %s, want %s", got, p.snap)
	}
}

// signedState sorts the repository's authenticated objects (manifests, summaries,
// backup_manifest, WAL) into signed and unsigned by their header flag; signed also lists
// any other object that carries the flag.
type signedState struct {
	signed, toSign []string
}

func signedFlags(t *testing.T, repoDir string) signedState {
	t.Helper()
	var s signedState
	err := filepath.WalkDir(repoDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(repoDir, p)
		// A store in progress (archive_command pushing the next segment during the walk)
		// is a temporary file, which no reader lists, until it is renamed away.
		if rel == "main/pgharbor.json" || strings.HasPrefix(d.Name(), ".pgharbor-tmp-") {
			return nil
		}
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		h, err := codec.ParseHeader(b[:min(len(b), codec.MaxHeaderSize)])
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		auth := strings.HasPrefix(rel, "main/wal/") || !strings.Contains(rel, "/data/") && strings.HasPrefix(rel, "main/backups/")
		switch {
		case h.Signed:
			s.signed = append(s.signed, rel)
		case auth:
			s.toSign = append(s.toSign, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func segmentKeys(t *testing.T, repoDir string) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(repoDir, "main", "wal", "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, p := range paths {
		if len(filepath.Base(p)) == 24 {
			rel, _ := filepath.Rel(repoDir, p)
			keys = append(keys, rel)
		}
	}
	sort.Strings(keys)
	return keys
}

func onlyBackup(t *testing.T, e *env) string {
	t.Helper()
	var info struct {
		Catalog struct {
			Backups []struct {
				Label string `json:"label"`
			} `json:"backups"`
		} `json:"catalog"`
	}
	if err := json.Unmarshal([]byte(e.must("info", "--output", "json", "--identity", e.identity)), &info); err != nil || len(info.Catalog.Backups) != 1 {
		t.Fatalf("info: %+v, %v", info, err)
	}
	return info.Catalog.Backups[0].Label
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeRepoFile replaces a file of the filesystem repository, as a bucket writer could.
func writeRepoFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The same guarantees on a real S3 server, for a host that both writes and reads (the write
// key and the verify key in one configuration): the PITR journey signs and verifies end to
// end, and a segment put into the bucket by someone holding only the recipient is refused
// by restore_command's `wal fetch`, naming it.
func TestSigningOnS3(t *testing.T) {
	parallel(t)
	srv := testserver.StartVersity(t)
	srv.CreateBucket(t, "backups")
	e := newEnv(t, "s3://backups/prod", fmt.Sprintf(`s3:
  endpoint: %s
  region: us-east-1
  path_style: true
  access_key_id: %s
  secret_access_key: %s
`, srv.Endpoint, srv.AccessKey, srv.SecretKey))
	sk, vk, err := codec.GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(e.dir, "signing.key")
	e.writeOwned(keyFile, sk+"\n", 0o600)
	conf := strings.Replace(string(mustRead(t, e.config)), "  cluster: main\n",
		fmt.Sprintf("  cluster: main\n  signing_key_file: %s\n  verify_keys: [%s]\n", keyFile, vk), 1)
	e.writeOwned(e.config, conf, 0o600)

	j := runJourney(t, e, "stream")
	p := j.points[1]
	if got := e.restoreAndRead(j.pg, "--target-time", p.time.Format(time.RFC3339Nano)); got != p.snap {
		t.Fatalf("restored %s, want %s", got, p.snap)
	}
	e.must("verify")

	ctx := context.Background()
	b, err := s3.New(ctx, s3.Config{Bucket: "backups", Prefix: "prod", Endpoint: srv.Endpoint, Region: "us-east-1", PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var segs []string
	if err := b.List(ctx, "main/wal/", func(o storage.ObjectInfo) error {
		if len(path.Base(o.Key)) == 24 {
			segs = append(segs, o.Key)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(segs)
	victim := segs[len(segs)-1]
	forger, err := codec.New(codec.Config{Encryption: "age", Recipients: []string{e.recipient}})
	if err != nil {
		t.Fatal(err)
	}
	sealed, _, err := forger.SealDigest(bytes.Repeat([]byte{0}, 16<<20))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Put(ctx, victim, bytes.NewReader(sealed), storage.PutOptions{Size: int64(len(sealed))}); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "seg")
	r := e.run("wal", "fetch", "--spool-dir", t.TempDir(), "--prefetch", "-1", path.Base(victim), dest)
	if r.code != 126 || !strings.Contains(r.stderr, victim) || !strings.Contains(r.stderr, "no signature") {
		t.Fatalf("wal fetch of a forged segment on S3: exit %d, stderr %s", r.code, r.stderr)
	}
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Fatalf("a forged segment reached %s: %v", dest, err)
	}
}
