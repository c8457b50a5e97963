package main

import "github.com/spf13/cobra"

// repoFlags are persistent flags that override the repository part of the config.
type repoFlags struct {
	url, cluster, identity, encryption, signingKey string
	verifyKeys                                     []string
}

func addRepoFlags(root *cobra.Command, a *app) {
	f := root.PersistentFlags()
	f.StringVar(&a.repoFlags.url, "repo", "", "repository URL: file:///path, s3://bucket/prefix, gs://bucket/prefix (repo.url)")
	f.StringVar(&a.repoFlags.cluster, "cluster", "", "cluster name inside the repository (repo.cluster)")
	f.StringVar(&a.repoFlags.identity, "identity", "", "age identity file for reading encrypted objects (encryption.identity_file)")
	f.StringVar(&a.repoFlags.encryption, "encryption", "", "encryption mode: age, passphrase or none (encryption.mode)")
	f.StringVar(&a.repoFlags.signingKey, "signing-key", "", "write key file: sign what this host stores (repo.signing_key_file)")
	f.StringSliceVar(&a.repoFlags.verifyKeys, "verify-key", nil, "public verify key (pgharbor-verify1…): refuse manifests and WAL it did not sign (repo.verify_keys)")
}

// applyRepoFlags lets flags that were given override the file and the environment in cfg.
func applyRepoFlags(cmd *cobra.Command, a *app, cfg *Config) {
	set := func(name string, dst *string, v string) {
		if cmd.Flags().Changed(name) {
			*dst = v
		}
	}
	set("repo", &cfg.Repo.URL, a.repoFlags.url)
	set("cluster", &cfg.Repo.Cluster, a.repoFlags.cluster)
	set("identity", &cfg.Encryption.IdentityFile, a.repoFlags.identity)
	set("encryption", &cfg.Encryption.Mode, a.repoFlags.encryption)
	set("signing-key", &cfg.Repo.SigningKeyFile, a.repoFlags.signingKey)
	if cmd.Flags().Changed("verify-key") {
		cfg.Repo.VerifyKeys = a.repoFlags.verifyKeys
	}
}
