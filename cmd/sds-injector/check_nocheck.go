//go:build nocheck

package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// The release image's build (-tags nocheck, internal/imagebuild and the
// Dockerfile): `check` is a command for people at a workstation, and its
// dependencies (internal/check with cert-manager's API types, the API
// server's CEL libraries) cost the webhook about 6 MiB of resident memory
// for nothing (docs/performance.md). The CLI binaries (release assets,
// go install, make build) keep it.
func newCheckCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "check",
		Short:              "Check a live installation (not in this build: use the sds-injector CLI)",
		DisableFlagParsing: true,
		RunE: func(*cobra.Command, []string) error {
			return errors.New("this sds-injector is the webhook image's build, without check (build tag nocheck): " +
				"run `sds-injector check` from the CLI (release binaries, go install github.com/sds-injector/sds-injector/cmd/sds-injector, or make build)")
		},
	}
}
