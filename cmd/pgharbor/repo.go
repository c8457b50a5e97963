package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/internal/repo"
	"github.com/pgharbor/pgharbor/storage"
	"github.com/pgharbor/pgharbor/storage/codec"
)

func newKeygenCmd(a *app) *cobra.Command {
	var (
		out     string
		signing bool
	)
	cmd := &cobra.Command{
		Use:   "keygen --out FILE [--signing]",
		Short: "Create an age identity; prints its public recipient",
		Long: `keygen writes a new age X25519 identity (secret key) to FILE with mode 0600 and prints
the matching public recipient. Put the recipient in encryption.recipients on every host that
writes backups; keep the identity only where restores run.

With --signing it writes the repository's write key instead and prints its public verify key
(pgharbor-verify1…): put the file in repo.signing_key_file on the hosts that take backups and
push WAL, and the verify key in repo.verify_keys wherever backups are restored, WAL is fetched
or the repository is checked (docs/security.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return errors.New("--out FILE is required (the key is a secret: it is never printed)")
			}
			if signing {
				return writeSigningKey(a, out)
			}
			identity, recipient, err := codec.GenerateIdentity()
			if err != nil {
				return err
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				if errors.Is(err, os.ErrExist) {
					return fmt.Errorf("%s exists: keygen never overwrites an identity (losing it loses the backups)", out)
				}
				return err
			}
			_, err = fmt.Fprintf(f, "# created: %s\n# public key: %s\n%s\n", time.Now().UTC().Format(time.RFC3339), recipient, identity)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				os.Remove(out)
				return fmt.Errorf("write %s: %w", out, err)
			}
			return a.print(map[string]string{"identity_file": out, "recipient": recipient}, func() {
				fmt.Fprintln(a.stdout, recipient)
			})
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write the identity to (must not exist)")
	cmd.Flags().BoolVar(&signing, "signing", false, "write a repository write key (Ed25519) instead of an age identity")
	return cmd
}

// writeSigningKey creates a write key file and prints its verify key.
func writeSigningKey(a *app, out string) error {
	signing, verify, err := codec.GenerateSigningKey()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s exists: keygen never overwrites a key", out)
		}
		return err
	}
	_, err = fmt.Fprintf(f, "# pgharbor repository write key, created: %s\n# verify key: %s\n%s\n", time.Now().UTC().Format(time.RFC3339), verify, signing)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out)
		return fmt.Errorf("write %s: %w", out, err)
	}
	return a.print(map[string]string{"signing_key_file": out, "verify_key": verify}, func() {
		fmt.Fprintln(a.stdout, verify)
	})
}

func newRepoCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repo",
		Short: "Initialise and inspect a repository",
	}
	cmd.AddCommand(newRepoInitCmd(a), newRepoLsCmd(a), newRepoGetCmd(a), newRepoSignExistingCmd(a))
	return cmd
}

func newRepoInitCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "Create the cluster's identity (pgharbor.json) in the repository",
		Long: `init creates <cluster>/pgharbor.json in the repository. Running it again with the same
settings is harmless; running it where the identity says another encryption mode or other
recipients is refused. The first backup or WAL push records the server's system identifier,
version and WAL segment size, and from then on another server is refused.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := a.openRepoInit(ctx, false, true)
			if err != nil {
				return err
			}
			defer r.Backend().Close()
			existed, err := storage.Exists(ctx, r.Backend(), r.Key(repo.IdentityKey))
			if err != nil {
				return fmt.Errorf("check %s: %w", r.Location(r.Key(repo.IdentityKey)), err)
			}
			if err := ensureDataKey(ctx, r); err != nil {
				return err
			}
			id, err := r.Init(ctx, repo.Identity{})
			if err != nil {
				return err
			}
			a.logger.Info("repository ready", "location", r.Location(r.Cluster()), "already_initialised", existed)
			return a.print(id, func() {
				state := "initialised"
				if existed {
					state = "already initialised"
				}
				fmt.Fprintf(a.stdout, "%s %s (format %d, encryption %s, recipients %s)\n", r.Location(r.Cluster()), state,
					id.Format, id.Encryption, strings.Join(id.Recipients, ","))
			})
		},
	}
}

func newRepoLsCmd(a *app) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "ls [PREFIX]",
		Short: "List objects of the cluster (or of the whole repository with --all)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, prefix, err := a.repoPrefix(ctx, all, args)
			if err != nil {
				return err
			}
			defer b.Close()
			var infos []storage.ObjectInfo
			if err := b.List(ctx, prefix, func(i storage.ObjectInfo) error { infos = append(infos, i); return nil }); err != nil {
				return err
			}
			if infos == nil {
				infos = []storage.ObjectInfo{}
			}
			return a.print(infos, func() {
				tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				for _, i := range infos {
					fmt.Fprintf(tw, "%s\t%d\t%s\n", i.Key, i.Size, i.ModTime.UTC().Format(time.RFC3339))
				}
				tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "list the whole repository, not only --cluster")
	return cmd
}

// repoPrefix returns the backend and the listing prefix for the cluster (or everything).
func (a *app) repoPrefix(ctx context.Context, all bool, args []string) (storage.Backend, string, error) {
	b, err := a.openBackend(ctx)
	if err != nil {
		return nil, "", err
	}
	prefix := ""
	if !all {
		if a.cfg.Repo.Cluster == "" {
			b.Close()
			return nil, "", errors.New("no cluster name: set --cluster (or use --all)")
		}
		prefix = a.cfg.Repo.Cluster + "/"
	}
	if len(args) == 1 {
		prefix += strings.TrimPrefix(args[0], "/")
	}
	return b, prefix, nil
}

func newRepoGetCmd(a *app) *cobra.Command {
	var raw bool
	var out string
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Print an object's decoded content (KEY relative to the cluster, e.g. pgharbor.json)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var w io.Writer = a.stdout
			if out != "" {
				f, err := os.Create(out)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			key := strings.TrimPrefix(args[0], "/")
			if raw {
				b, prefix, err := a.repoPrefix(ctx, false, []string{key})
				if err != nil {
					return err
				}
				defer b.Close()
				rc, err := b.Get(ctx, prefix, 0, -1)
				if err != nil {
					return err
				}
				defer rc.Close()
				_, err = io.Copy(w, rc)
				return err
			}
			// Decoding needs an identity only when the object is encrypted; the codec says so
			// clearly when it is and none was given.
			if a.cfg.Encryption.Mode == "" {
				a.cfg.Encryption.Mode = "none"
			}
			r, err := a.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Backend().Close()
			rc, err := r.GetStream(ctx, r.Key(key))
			if err != nil {
				return err
			}
			defer rc.Close()
			if _, err := io.Copy(w, rc); err != nil {
				return err
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&raw, "raw", false, "print the stored bytes without decoding")
	cmd.Flags().StringVar(&out, "out", "", "write to FILE instead of standard output")
	return cmd
}

// ensureDataKey makes the data key of a passphrase cluster before its identity is written,
// so that every process that finds the cluster initialised also finds the key (and never
// seals an object with a scrypt of its own). A cluster whose identity says another mode is
// left alone: Init refuses it.
func ensureDataKey(ctx context.Context, r *repo.Repo) error {
	if repo.EncryptionMode(r.Codec()) != "passphrase" {
		return nil
	}
	have, err := r.ReadIdentity(ctx)
	switch {
	case errors.Is(err, repo.ErrNotInitialized):
	case err != nil:
		return err
	case have.Encryption != "passphrase":
		return nil
	}
	_, err = r.DataKey(ctx, true)
	return err
}
