package sds

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// SocketModeAuto picks the socket's mode from its directory; see SocketMode.
const SocketModeAuto = "auto"

// SocketMode resolves a socket mode setting: an octal mode ("0660"), or
// SocketModeAuto, which gives 0660 when the socket's directory is shared
// through the pod's fsGroup (setgid, owned by a group this process is in, so
// the socket inherits that group and every container of the pod is in it),
// and 0666 otherwise (the gateway may run as any UID, and only the
// containers that mount the pod-private emptyDir can reach the socket).
func SocketMode(setting, dir string) (os.FileMode, error) {
	mode, auto, err := ParseSocketMode(setting)
	if err != nil || !auto {
		return mode, err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, err
	}
	if fi.Mode()&fs.ModeSetgid != 0 {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && inGroup(int(st.Gid)) {
			return 0o660, nil
		}
	}
	return 0o666, nil
}

// ParseSocketMode checks a socket mode setting; auto is true for
// SocketModeAuto (or empty).
func ParseSocketMode(setting string) (mode os.FileMode, auto bool, err error) {
	if setting == SocketModeAuto || setting == "" {
		return 0, true, nil
	}
	m, err := strconv.ParseUint(setting, 8, 32)
	if err != nil || m > 0o777 {
		return 0, false, fmt.Errorf("socket mode %q: want an octal permission such as 0660, or %q", setting, SocketModeAuto)
	}
	if m&0o600 != 0o600 {
		return 0, false, fmt.Errorf("socket mode %q: the owner (the agent) needs read and write", setting)
	}
	return os.FileMode(m), false, nil
}

func inGroup(gid int) bool {
	if os.Getegid() == gid {
		return true
	}
	groups, err := os.Getgroups()
	return err == nil && slices.Contains(groups, gid)
}

// ListenUnix listens on the Unix socket path with the given mode. A socket
// left behind by an earlier run (the emptyDir outlives a container restart)
// is removed; a socket something still answers on, or a file that is not a
// socket, is an error.
func ListenUnix(path string, mode os.FileMode) (*net.UnixListener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("setting the socket's mode: %w", err)
	}
	return l, nil
}

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		_ = c.Close()
		return fmt.Errorf("another process is serving on %s", path)
	}
	return os.Remove(path)
}

// CheckLoopback verifies that addr (host:port) names a loopback address
// (or "localhost") and returns it with "localhost" resolved to 127.0.0.1.
// The private key is served without authentication, so a TCP listener must
// never be reachable on the pod IP.
func CheckLoopback(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("%s: only a loopback address (127.0.0.1, [::1]) is allowed", addr)
	}
	return net.JoinHostPort(host, port), nil
}

// ListenLoopback listens on a loopback TCP address (see CheckLoopback).
func ListenLoopback(addr string) (net.Listener, error) {
	addr, err := CheckLoopback(addr)
	if err != nil {
		return nil, err
	}
	return net.Listen("tcp", addr)
}
