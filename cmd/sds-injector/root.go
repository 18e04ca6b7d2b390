package main

import (
	"errors"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func newRootCommand(stdin io.Reader, stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "sds-injector",
		Short:         "Inject an Istio certificate (SDS) agent into edge gateway pods",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newInjectCommand(), newUninjectCommand(), newServeCommand(), newVersionCommand(), newCheckCommand())
	return root
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and the images of this release",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			commit := ""
			if info, ok := debug.ReadBuildInfo(); ok {
				for _, s := range info.Settings {
					if s.Key == "vcs.revision" {
						commit = " commit " + s.Value
					}
				}
			}
			cmd.Printf("sds-injector %s%s (%s)\n", version, commit, runtime.Version())
			cmd.Printf("injector image: %s\n", defaultInjectorImage())
			cmd.Printf("agent image:    %s\n", defaultAgentImage())
			return nil
		},
	}
}

// partialError reports that output was written but some objects could not
// be processed; it exits with status 2 so scripts can tell it from a hard
// failure (1).
type partialError struct{ msg string }

func (e *partialError) Error() string { return e.msg }

func exitCode(err error) int {
	var p *partialError
	if errors.As(err, &p) {
		return 2
	}
	return 1
}
