package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgharbor/pgharbor/internal/testserver"
)

// The PITR journey against a real S3 server: archive_command pushes to it, backup and
// restore stream through it, restore_command fetches from it.
func TestPITROnS3(t *testing.T) {
	srv := testserver.StartVersity(t)
	srv.CreateBucket(t, "backups")
	e := newEnv(t, "s3://backups/prod/eu", fmt.Sprintf(`s3:
  endpoint: %s
  region: us-east-1
  path_style: true
  access_key_id: %s
  secret_access_key: %s
`, srv.Endpoint, srv.AccessKey, srv.SecretKey))
	j := runJourney(t, e, "stream")
	p := j.points[1]
	if got := e.restoreAndRead(j.pg, "--target-time", p.time.Format(time.RFC3339Nano)); got != p.snap {
		t.Fatalf("restored %s, want %s", got, p.snap)
	}
	if got := e.restoreAndRead(j.pg); got != j.final {
		t.Fatalf("latest: restored %s, want %s", got, j.final)
	}
	out := e.must("repo", "ls")
	if !strings.Contains(out, "main/backups/"+j.label+"/manifest") || !strings.Contains(out, "main/wal/") {
		t.Fatalf("repo ls on S3 shows:\n%s", out)
	}
}

func TestPITROnGCS(t *testing.T) {
	srv := testserver.StartFakeGCS(t)
	srv.CreateBucket(t, "backups")
	e := newEnv(t, "gs://backups/prod", fmt.Sprintf("gcs:\n  endpoint: %s\n", srv.Endpoint))
	j := runJourney(t, e, "auto")
	p := j.points[0]
	if got := e.restoreAndRead(j.pg, "--target-lsn", p.lsn); got != p.snap {
		t.Fatalf("restored %s, want %s", got, p.snap)
	}
	e.must("verify")
}
