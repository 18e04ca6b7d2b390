package controlplane

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"
)

// SuiteTimeout bounds a suite's setup and run (RunSuite).
const SuiteTimeout = 40 * time.Minute

// RunSuite is a suite's TestMain body: unless -short, it starts a control
// plane with opts into *cp, runs setup (if any) against it, then the tests,
// and stops the control plane. A control plane or setup that fails fails
// the whole suite (exit 1) with the reason; under -short *cp stays nil and
// the tests that need it skip (test/harness.NeedControlPlane). Use it as
// os.Exit(controlplane.RunSuite(m, &cp, opts, setup)).
func RunSuite(m *testing.M, cp **ControlPlane, opts Options, setup func(ctx context.Context, cp *ControlPlane) error) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), SuiteTimeout)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the local control plane:", err)
		return 1
	}
	*cp = c
	defer func() {
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the control plane:", err)
		}
	}()
	if setup != nil {
		if err := setup(ctx, c); err != nil {
			fmt.Fprintln(os.Stderr, "setting up the suite:", err)
			return 1
		}
	}
	return m.Run()
}

// MustStart is Start for one test: a control plane that cannot start fails
// tb, and the control plane is stopped when tb ends (a failed stop fails
// tb too).
func MustStart(ctx context.Context, tb testing.TB, opts Options) *ControlPlane {
	tb.Helper()
	c, err := Start(ctx, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := c.Stop(); err != nil {
			tb.Error(err)
		}
	})
	return c
}
