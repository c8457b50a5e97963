// Command expire-bench measures `pgharbor expire` on the Versity S3 gateway: a repository
// with many WAL objects and backups is seeded directly, then the real pgharbor binary
// expires it through a counting reverse proxy, which tallies the S3 requests by kind (and,
// for DeleteObjects, the keys of each request). Run it with bench/expire/run.sh.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pgharbor/pgharbor/backup"
	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage/codec"
	"github.com/pgharbor/pgharbor/storage/s3"
	"github.com/pgharbor/pgharbor/wal"
)

const (
	accessKey = "pgharbor-bench-access"
	secretKey = "pgharbor-bench-secret-key"
	bucket    = "bench"
	segSize   = 16 << 20
)

func main() {
	var (
		gw       = flag.String("versitygw", "versitygw", "versitygw binary")
		pgharbor = flag.String("pgharbor", "bin/pgharbor", "pgharbor binary")
		walN     = flag.Int("wal", 20000, "WAL segment objects")
		backups  = flag.Int("backups", 30, "backups")
		bundles  = flag.Int("bundles", 20, "bundles per backup")
		keep     = flag.Int("full-count", 1, "retention.full_count for the expire")
		jsonOut  = flag.String("json", "", "also write the results as JSON to this file")
	)
	flag.Parse()
	if err := run(*gw, *pgharbor, *walN, *backups, *bundles, *keep, *jsonOut); err != nil {
		fmt.Fprintln(os.Stderr, "expire-bench:", err)
		os.Exit(1)
	}
}

// counter tallies S3 requests by kind.
type counter struct {
	mu     sync.Mutex
	counts map[string]int
	keys   map[string]int // keys in DeleteObjects requests, by "wal" or "backups"
	batchW int            // DeleteObjects requests whose keys are WAL
	batchB int            // DeleteObjects requests whose keys are backup objects
}

var keyRE = regexp.MustCompile(`<Key>([^<]*)</Key>`)

func (c *counter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := r.Method
		q := r.URL.Query()
		switch {
		case r.Method == http.MethodPost && q.Has("delete"):
			kind = "DeleteObjects"
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			var walKeys, other int
			for _, m := range keyRE.FindAllSubmatch(body, -1) {
				if strings.Contains(string(m[1]), "/wal/") {
					walKeys++
				} else {
					other++
				}
			}
			c.mu.Lock()
			c.keys["wal"] += walKeys
			c.keys["backups"] += other
			if walKeys > 0 {
				c.batchW++
			}
			if other > 0 {
				c.batchB++
			}
			c.mu.Unlock()
		case r.Method == http.MethodDelete:
			kind = "DeleteObject"
		case r.Method == http.MethodGet && q.Get("list-type") == "2":
			kind = "ListObjectsV2"
		case r.Method == http.MethodGet:
			kind = "GetObject"
		case r.Method == http.MethodHead:
			kind = "HeadObject"
		case r.Method == http.MethodPut:
			kind = "PutObject"
		}
		c.mu.Lock()
		c.counts[kind]++
		c.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func waitTCP(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type results struct {
	WALObjects        int            `json:"wal_objects"`
	Backups           int            `json:"backups"`
	ObjectsPerBackup  int            `json:"objects_per_backup"`
	SeedSeconds       float64        `json:"seed_seconds"`
	ExpireSeconds     float64        `json:"expire_seconds"`
	DeletedBackups    int            `json:"deleted_backups"`
	DeletedWAL        int            `json:"deleted_wal"`
	DeletedObjects    int            `json:"deleted_objects"`
	Requests          map[string]int `json:"requests"`
	WALDeleteRequests int            `json:"wal_delete_requests"`
	BackupBatchReqs   int            `json:"backup_delete_objects_requests"`
	KeysInBatches     map[string]int `json:"keys_in_delete_objects"`
	WALLeft           int            `json:"wal_left"`
}

func run(gw, pgharbor string, walN, nBackups, nBundles, keep int, jsonOut string) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "pgharbor-expire-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	posix := filepath.Join(dir, "posix")
	if err := os.MkdirAll(filepath.Join(posix, bucket), 0o755); err != nil {
		return err
	}
	gwAddr, err := freeAddr()
	if err != nil {
		return err
	}
	cmd := exec.Command(gw, "--port", gwAddr, "--quiet", "posix", posix)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+accessKey, "ROOT_SECRET_KEY="+secretKey)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := waitTCP(gwAddr); err != nil {
		return fmt.Errorf("versitygw did not come up: %w", err)
	}

	// The counting proxy in front of the gateway; only the expire goes through it.
	target, _ := url.Parse("http://" + gwAddr)
	cnt := &counter{counts: map[string]int{}, keys: map[string]int{}}
	proxyAddr, err := freeAddr()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", proxyAddr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: cnt.wrap(httputil.NewSingleHostReverseProxy(target))}
	go srv.Serve(ln)
	defer srv.Close()

	b, err := s3.New(ctx, s3.Config{Bucket: bucket, Prefix: "prod", Endpoint: "http://" + gwAddr, Region: "us-east-1", PathStyle: true,
		AccessKeyID: accessKey, SecretAccessKey: secretKey})
	if err != nil {
		return err
	}
	c, err := codec.New(codec.Config{Compression: "zstd", Encryption: "none"})
	if err != nil {
		return err
	}
	r, err := repo.New(b, c, "main")
	if err != nil {
		return err
	}
	began := time.Now()
	if _, err := r.Init(ctx, repo.Identity{SystemIdentifier: "7400000000000000001", PGVersion: 150000, WALSegmentSize: segSize}); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(64)
	body := bytes.Repeat([]byte("wal record "), 100)
	for n := 1; n <= walN; n++ {
		name, _ := wal.Segment{TLI: 1, No: uint64(n)}.SegmentName(segSize)
		k, _ := wal.ObjectPath(name)
		g.Go(func() error { return r.PutBytes(gctx, r.Key(k), body, true) })
	}
	// Backups spread evenly over the WAL, one an hour, the last an hour ago.
	step := walN / nBackups
	now := time.Now().UTC()
	for i := 0; i < nBackups; i++ {
		start := uint64(i*step + 5)
		label := backup.NewLabel(now.Add(-time.Duration(nBackups-i) * time.Hour))
		stop := now.Add(-time.Duration(nBackups-i)*time.Hour + 10*time.Minute)
		sum := backup.Summary{Format: backup.ManifestFormat, Label: label, Type: "full", Timeline: 1, StopTimeline: 1,
			StartLSN: wal.LSN(start*segSize + 0x28).String(), StopLSN: wal.LSN(start*segSize + 0x2000).String(),
			StartTime: stop.Add(-10 * time.Minute), StopTime: stop, WALSegmentSize: segSize, Bundles: nBundles, Encryption: "none"}
		for n := 0; n < nBundles; n++ {
			g.Go(func() error { return r.PutBytes(gctx, backup.BundleKey(r, label, n), body, true) })
		}
		g.Go(func() error {
			prefix := backup.BackupPrefix(r, label)
			if err := r.PutBytes(gctx, path.Join(prefix, "backup_manifest"), []byte("{}"), true); err != nil {
				return err
			}
			if err := r.PutJSON(gctx, path.Join(prefix, "summary"), sum, true); err != nil {
				return err
			}
			return r.PutJSON(gctx, backup.ManifestKey(r, label), backup.Manifest{Summary: sum}, true)
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	res := results{WALObjects: walN, Backups: nBackups, ObjectsPerBackup: nBundles + 3, SeedSeconds: time.Since(began).Seconds()}
	fmt.Fprintf(os.Stderr, "seeded %d WAL objects and %d backups of %d objects in %.1f s\n", walN, nBackups, nBundles+3, res.SeedSeconds)

	cfg := filepath.Join(dir, "pgharbor.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`repo:
  url: s3://%s/prod
  cluster: main
s3:
  endpoint: http://%s
  region: us-east-1
  path_style: true
  access_key_id: %s
  secret_access_key: %s
encryption:
  mode: none
retention:
  full_count: %d
`, bucket, proxyAddr, accessKey, secretKey, keep)), 0o600)
	began = time.Now()
	ex := exec.Command(pgharbor, "--config", cfg, "expire", "--output", "json")
	ex.Stderr = os.Stderr
	out, err := ex.Output()
	res.ExpireSeconds = time.Since(began).Seconds()
	if err != nil {
		return fmt.Errorf("pgharbor expire: %w", err)
	}
	var rep struct {
		DeletedBackups int `json:"deleted_backups"`
		DeletedWAL     int `json:"deleted_wal"`
		DeletedObjects int `json:"deleted_objects"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return fmt.Errorf("expire output: %w", err)
	}
	res.DeletedBackups, res.DeletedWAL, res.DeletedObjects = rep.DeletedBackups, rep.DeletedWAL, rep.DeletedObjects
	cnt.mu.Lock()
	res.Requests, res.KeysInBatches, res.WALDeleteRequests, res.BackupBatchReqs = cnt.counts, cnt.keys, cnt.batchW, cnt.batchB
	cnt.mu.Unlock()
	entries, _ := filepath.Glob(filepath.Join(posix, bucket, "prod", "main", "wal", "*", "*"))
	res.WALLeft = len(entries)

	kinds := make([]string, 0, len(res.Requests))
	for k := range res.Requests {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	fmt.Printf("expire of %d WAL objects and %d backups (%d objects each), full_count=%d, on the Versity S3 gateway\n", walN, nBackups, nBundles+3, keep)
	fmt.Printf("  deleted: %d backups, %d WAL objects, %d objects in all; WAL left: %d\n", res.DeletedBackups, res.DeletedWAL, res.DeletedObjects, res.WALLeft)
	fmt.Printf("  time: %.2f s (whole pgharbor process)\n", res.ExpireSeconds)
	fmt.Printf("  WAL delete requests: %d DeleteObjects carrying %d keys\n", res.WALDeleteRequests, res.KeysInBatches["wal"])
	fmt.Printf("  backup delete requests: %d DeleteObjects carrying %d keys, %d DeleteObject (manifests, markers, lock)\n", res.BackupBatchReqs, res.KeysInBatches["backups"], res.Requests["DeleteObject"])
	for _, k := range kinds {
		fmt.Printf("  %-14s %d\n", k, res.Requests[k])
	}
	if jsonOut != "" {
		data, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(jsonOut, append(data, '\n'), 0o644); err != nil {
			return err
		}
	}
	if res.WALDeleteRequests > 20 {
		return fmt.Errorf("%d delete requests for the WAL, the target is at most 20", res.WALDeleteRequests)
	}
	return nil
}
