package main

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"sync"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
)

// signExistingResult is the report of `repo sign-existing`.
type signExistingResult struct {
	DryRun        bool            `json:"dry_run"`
	Signed        int             `json:"signed"`
	AlreadySigned int             `json:"already_signed"`
	Refused       []refusedObject `json:"refused"`
}

type refusedObject struct {
	Key    string `json:"key"`
	Reason string `json:"reason"`
}

func newRepoSignExistingCmd(a *app) *cobra.Command {
	var (
		dryRun   bool
		parallel int
	)
	cmd := &cobra.Command{
		Use:   "sign-existing",
		Short: "Sign the manifests, summaries and WAL stored before signing was turned on",
		Long: `sign-existing signs, with the write key (repo.signing_key_file or --signing-key), every
backup manifest, summary and backup_manifest, every archived WAL file and the data key of a
passphrase repository that carries no signature yet, so that readers can then be given
repo.verify_keys. Only the header's signed flag and the signature trailer are added: no
identity is needed, and recipients stay as they are. When an identity (or the passphrase)
is configured, each object is decoded first and a damaged one is refused, not signed.

Signing vouches for the objects: check the repository first (pgharbor verify, on a host
with the identity), and run this before anyone else could have written to the bucket's
unsigned objects. Objects whose signature does not verify are reported and left alone.
Objects already signed are skipped, so running it again is harmless.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if a.cfg.Repo.SigningKeyFile == "" {
				return errors.New("sign-existing needs the write key: set repo.signing_key_file or pass --signing-key FILE")
			}
			// The objects are not trusted yet: open the repository without verify keys (the data
			// key of a passphrase repository is one of the objects to sign).
			a.cfg.Repo.VerifyKeys = nil
			r, err := a.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Backend().Close()
			keys, err := objectsToSign(ctx, r)
			if err != nil {
				return err
			}
			res := signExistingResult{DryRun: dryRun, Refused: []refusedObject{}}
			var mu sync.Mutex
			g, gctx := errgroup.WithContext(ctx)
			g.SetLimit(max(parallel, 1))
			for _, k := range keys {
				g.Go(func() error {
					out, err := r.SignStored(gctx, k, dryRun)
					if err != nil && gctx.Err() != nil {
						return gctx.Err()
					}
					mu.Lock()
					defer mu.Unlock()
					switch out {
					case repo.SignedNow:
						res.Signed++
						a.logger.Info("signed", "key", k, "dry_run", dryRun)
					case repo.AlreadySigned:
						res.AlreadySigned++
					default:
						res.Refused = append(res.Refused, refusedObject{Key: k, Reason: err.Error()})
						a.logger.Warn("not signed", "key", k, "reason", err)
					}
					return nil
				})
			}
			if err := g.Wait(); err != nil {
				return err
			}
			sort.Slice(res.Refused, func(i, j int) bool { return res.Refused[i].Key < res.Refused[j].Key })
			if err := a.print(res, func() {
				verb := "signed"
				if dryRun {
					verb = "would sign"
				}
				fmt.Fprintf(a.stdout, "%s %d objects, %d already signed, %d refused\n", verb, res.Signed, res.AlreadySigned, len(res.Refused))
				for _, rf := range res.Refused {
					fmt.Fprintf(a.stdout, "refused %s: %s\n", rf.Key, rf.Reason)
				}
			}); err != nil {
				return err
			}
			if len(res.Refused) > 0 {
				return fmt.Errorf("%d objects were not signed (listed above): check them before giving readers the verify key", len(res.Refused))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "report what would be signed, change nothing")
	cmd.Flags().IntVar(&parallel, "parallel", 4, "objects signed at once")
	return cmd
}

// objectsToSign lists the objects readers authenticate: backup manifests and summaries,
// PostgreSQL's backup_manifest, everything in the WAL archive, and the data key. Backup
// data bundles are not signed: the manifest authenticates their pieces by SHA-256.
func objectsToSign(ctx context.Context, r *repo.Repo) ([]string, error) {
	var keys []string
	collect := func(prefix string, keep func(string) bool) error {
		err := r.Backend().List(ctx, prefix, func(o storage.ObjectInfo) error {
			if keep(o.Key) {
				keys = append(keys, o.Key)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("list %s: %w", r.Location(prefix), err)
		}
		return nil
	}
	if err := collect(r.Key("backups")+"/", func(k string) bool {
		switch path.Base(k) {
		case "manifest", "summary", "backup_manifest":
			return path.Base(path.Dir(path.Dir(k))) == "backups"
		}
		return false
	}); err != nil {
		return nil, err
	}
	if err := collect(r.Key("wal")+"/", func(string) bool { return true }); err != nil {
		return nil, err
	}
	if err := collect(r.Key(repo.DataKeyKey), func(k string) bool { return k == r.Key(repo.DataKeyKey) }); err != nil {
		return nil, err
	}
	sort.Strings(keys)
	return keys, nil
}
