package main

import "github.com/spf13/cobra"

// repoFlags are persistent flags that override the repository part of the config.
type repoFlags struct {
	url, cluster, identity, encryption string
}

func addRepoFlags(root *cobra.Command, a *app) {
	f := root.PersistentFlags()
	f.StringVar(&a.repoFlags.url, "repo", "", "repository URL: file:///path, s3://bucket/prefix, gs://bucket/prefix (repo.url)")
	f.StringVar(&a.repoFlags.cluster, "cluster", "", "cluster name inside the repository (repo.cluster)")
	f.StringVar(&a.repoFlags.identity, "identity", "", "age identity file for reading encrypted objects (encryption.identity_file)")
	f.StringVar(&a.repoFlags.encryption, "encryption", "", "encryption mode: age, passphrase or none (encryption.mode)")
}

// applyRepoFlags lets flags that were given override the file and the environment.
func applyRepoFlags(cmd *cobra.Command, a *app) error {
	set := func(name string, dst *string, v string) {
		if cmd.Flags().Changed(name) {
			*dst = v
		}
	}
	set("repo", &a.cfg.Repo.URL, a.repoFlags.url)
	set("cluster", &a.cfg.Repo.Cluster, a.repoFlags.cluster)
	set("identity", &a.cfg.Encryption.IdentityFile, a.repoFlags.identity)
	set("encryption", &a.cfg.Encryption.Mode, a.repoFlags.encryption)
	return nil
}
