package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/pgharbor/pgharbor/storage/codec"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev" // set by the linker, never changed at run time

func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			rev := ""
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" && len(s.Value) >= 12 {
						rev = " (" + s.Value[:12] + ")"
					}
				}
			}
			enc := codec.AutoEncoder()
			return a.print(map[string]string{"version": version, "go": runtime.Version(), "zstd_encoder": enc},
				func() {
					fmt.Fprintf(a.stdout, "pgharbor %s%s %s, zstd encoder %s\n", version, rev, runtime.Version(), enc)
				})
		},
	}
}
