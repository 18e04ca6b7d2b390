package sds

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The checks behind the agent's probe, wait and wait-socket subcommands.

// reachable checks that socket is a Unix socket that accepts connections
// and returns its absolute path. A plain connect first: it reports what
// gRPC's retries would hide (permission denied, nothing listening).
func reachable(socket string) (string, error) {
	if fi, err := os.Stat(socket); err != nil {
		return "", fmt.Errorf("no SDS socket: %w", err)
	} else if fi.Mode()&os.ModeSocket == 0 {
		return "", fmt.Errorf("%s is not a socket", socket)
	}
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return "", err
	}
	_ = c.Close()
	return filepath.Abs(socket)
}

// CheckServing fetches Default over the Unix socket at socket as the
// probe subcommand does and checks it; it returns the line the probe prints.
func CheckServing(ctx context.Context, socket string) (string, error) {
	abs, err := reachable(socket)
	if err != nil {
		return "", err
	}
	secrets, err := Fetch(ctx, "unix://"+abs, ProbeNodeID, Default)
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("no valid certificate served on %s yet", socket)
		}
		return "", err
	}
	leaf, err := CheckCertificate(secrets[Default], time.Now())
	if err != nil {
		return "", err
	}
	id := ""
	if len(leaf.URIs) > 0 {
		id = leaf.URIs[0].String()
	}
	return fmt.Sprintf("ready: %s valid until %s", id, leaf.NotAfter.UTC().Format(time.RFC3339)), nil
}

// Answers asks the SDS server on the Unix socket at socket for name (ROOTCA: a SPIRE agent
// serves it to every caller, registered or not) and reports whether it came.
func Answers(ctx context.Context, socket, name string) error {
	abs, err := reachable(socket)
	if err != nil {
		return err
	}
	secrets, err := Fetch(ctx, "unix://"+abs, ProbeNodeID, name)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("the socket accepts connections but served no %s in time", name)
		}
		return err
	}
	if secrets[name] == nil {
		return fmt.Errorf("the answer holds no secret %s", name)
	}
	return nil
}
