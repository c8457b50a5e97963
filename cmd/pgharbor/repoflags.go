package main

import "github.com/spf13/cobra"

// repoFlags are the persistent flags that override the repository part of the config.
type repoFlags struct {
	url, cluster, identity string
}

func addRepoFlags(root *cobra.Command, a *app) {
	// defined in repo.go once the repository layer exists
}

func applyRepoFlags(cmd *cobra.Command, a *app) error { return nil }
