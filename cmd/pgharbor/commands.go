package main

import "github.com/spf13/cobra"

// extraCommands lists the subcommands of the larger capabilities (backup, wal, restore,
// pool …); each lives in its own file.
func extraCommands(a *app) []*cobra.Command {
	return []*cobra.Command{newBackupCmd(a), newRestoreCmd(a), newInfoCmd(a), newVerifyCmd(a), newWALCmd(a), newPoolCmd(a), newExpireCmd(a), newReplicaCmd(a), newRefreshCmd(a), newMonitorCmd(a), newSwitchoverCmd(a), newNodeCmd(a), newCheckCmd(a)}
}
