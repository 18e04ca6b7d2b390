// Command sds-agent is sds-injector's slim SDS agent: one small container
// that obtains the workload certificate from istiod's CA and serves it to a
// gateway's Envoy over SDS on a Unix socket shared through an emptyDir. It
// binds no TCP port unless asked to. See docs/sds-agent.md.
//
//	sds-agent [flags]        run the agent (the image's entrypoint, no arguments)
//	sds-agent probe          exit 0 if the agent serves a valid certificate (readiness/startup probe)
//	sds-agent wait           block until probe succeeds (classic placement's postStart hook)
//	sds-agent wait-socket    block until an SDS socket (a SPIRE agent's) serves ROOTCA (spire flavor's init container)
//	sds-agent version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sds-injector/sds-injector/internal/agent"
	"github.com/sds-injector/sds-injector/internal/agent/sds"

	"github.com/sds-injector/sds-injector/internal/agentcontract"
)

var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cmd := ""
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "":
		return serve(args, getenv, stderr)
	case agentcontract.CmdProbe:
		return probe(args, getenv, stdout, stderr)
	case agentcontract.CmdWait:
		return wait(args, getenv, stdout, stderr)
	case agentcontract.CmdWaitSocket:
		return waitSocket(args, getenv, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version)
		return 0
	case "help":
		usage(stderr)
		return 0
	}
	fmt.Fprintf(stderr, "sds-agent: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  sds-agent [flags]   run the agent (flags: sds-agent -h)
  sds-agent probe     exit 0 if the agent serves a valid certificate on its socket
  sds-agent wait      wait until probe succeeds
  sds-agent wait-socket
                      wait until an SDS socket (e.g. a SPIRE agent's) answers: serves ROOTCA
  sds-agent version
`)
}

func serve(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("sds-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		usage(stderr)
		fmt.Fprintln(stderr, "\nflags of the agent (each also read from the environment variable named):")
		fs.PrintDefaults()
	}
	cfg, err := agent.Load(fs, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "sds-agent: %v\n", err)
		return 2
	}
	level, _ := cfg.Level()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	log.Info("starting sds-agent", "version", version, "ca", cfg.CAAddr, "cluster_id", cfg.ClusterID, "key", cfg.KeyAlgorithm, "ttl", cfg.CertTTL)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		// A second signal ends the process at once.
		stop()
	}()
	if err := agent.New(cfg, log).Run(ctx); err != nil {
		log.Error("sds-agent failed", "error", err)
		return 1
	}
	return 0
}

// probeFlags are shared by probe and wait.
func probeFlags(name string, getenv func(string) string, stderr io.Writer, timeout time.Duration) (*flag.FlagSet, *string, *time.Duration) {
	fs := flag.NewFlagSet("sds-agent "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := getenv(agentcontract.EnvSocketPath)
	if socket == "" {
		socket = agent.DefaultSocketPath
	}
	sp := fs.String("socket-path", socket, "the agent's SDS socket (env SDS_SOCKET_PATH)")
	tp := fs.Duration("timeout", timeout, "give up after this long")
	return fs, sp, tp
}

func probe(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs, socket, timeout := probeFlags("probe", getenv, stderr, 2*time.Second)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	msg, err := sds.CheckServing(ctx, *socket)
	if err != nil {
		fmt.Fprintf(stderr, "not ready: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, msg)
	return 0
}

func wait(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs, socket, timeout := probeFlags("wait", getenv, stderr, 60*time.Second)
	period := fs.Duration("period", 500*time.Millisecond, "time between attempts")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	deadline := time.Now().Add(*timeout)
	var lastErr error
	for {
		attempt := time.Now().Add(2 * time.Second)
		if attempt.After(deadline) {
			attempt = deadline
		}
		ctx, cancel := context.WithDeadline(context.Background(), attempt)
		msg, err := sds.CheckServing(ctx, *socket)
		cancel()
		if err == nil {
			fmt.Fprintln(stdout, msg)
			return 0
		}
		lastErr = err
		if time.Now().Add(*period).After(deadline) {
			break
		}
		time.Sleep(*period)
	}
	fmt.Fprintf(stderr, "sds-agent wait: gave up after %s: %v\n", *timeout, lastErr)
	return 1
}

// waitSocket holds the spire flavor's gateway back (as its init container)
// until the identity provider's socket answers SDS, or fails after the
// timeout with a line saying what it waited for.
func waitSocket(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs, socket, timeout := probeFlags("wait-socket", getenv, stderr, 60*time.Second)
	period := fs.Duration("period", 500*time.Millisecond, "time between attempts")
	name := fs.String("secret", sds.RootCA, "the SDS secret whose arrival counts as an answer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sds-agent wait-socket: unexpected arguments %v\n", fs.Args())
		return 2
	}
	start := time.Now()
	deadline := start.Add(*timeout)
	fmt.Fprintf(stderr, "sds-agent wait-socket: waiting up to %s for the SDS socket %s to serve %s\n", *timeout, *socket, *name)
	var lastErr error
	for {
		attempt := time.Now().Add(2 * time.Second)
		if attempt.After(deadline) {
			attempt = deadline
		}
		ctx, cancel := context.WithDeadline(context.Background(), attempt)
		err := sds.Answers(ctx, *socket, *name)
		cancel()
		if err == nil {
			fmt.Fprintf(stdout, "sds-agent wait-socket: %s answers: served %s after %s\n", *socket, *name, time.Since(start).Round(time.Millisecond))
			return 0
		}
		if lastErr == nil || err.Error() != lastErr.Error() {
			fmt.Fprintf(stderr, "sds-agent wait-socket: not yet: %v\n", err)
		}
		lastErr = err
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		time.Sleep(min(*period, left))
	}
	fmt.Fprintf(stderr, "sds-agent wait-socket: timed out after %s: the SDS socket %s never served %s (last error: %v); "+
		"is the SPIRE agent running on this node and its socket directory mounted?\n", *timeout, *socket, *name, lastErr)
	return 1
}
