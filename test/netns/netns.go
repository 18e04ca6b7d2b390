// Package netns runs a test binary's suite inside network and mount
// namespaces of its own, so that the suite's traffic stays on addresses the
// test created (the project's network rule): the namespace holds lo and one
// more interface with an address of the suite's choosing, and no route out.
//
// A suite's TestMain calls Main. The first (outer) run needs root: it runs
// the suite's Prepare (builds and downloads: the module proxy is reachable
// only outside), then runs the same test binary again, with the same
// arguments, in new network and mount namespaces (CLONE_NEWNET|CLONE_NEWNS).
// The inner run sets up the network, fails if any route leaves it, and runs
// the suite. Anything that cannot be set up fails the run with the reason;
// nothing is skipped.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// markerEnv marks the inner run; its value is the suite's name.
const markerEnv = "SDS_INJECTOR_NETNS_INSIDE"

// Network is a namespace's network: lo, and Link holding the address CIDR.
type Network struct {
	// CIDR is Link's address with its prefix length, e.g. "10.213.0.1/24".
	CIDR string
	// Link is a dummy link or, on kernels without the dummy driver, one end
	// of a veth pair whose other end, Peer, stays in the namespace too.
	Link, Peer string
	// Allow names further interfaces the suite creates itself, which
	// CheckNoRouteOut accepts; a trailing "*" matches a prefix.
	Allow []string
}

// IP is the address of Link, without the prefix length.
func (n Network) IP() string {
	ip, _, _ := strings.Cut(n.CIDR, "/")
	return ip
}

// Suite is what Main runs.
type Suite struct {
	// Name names the suite in messages ("node", "install").
	Name string
	// RootFor says what needs root, for the message when not run as root.
	RootFor string
	Network Network
	// Prepare runs outside the namespaces, as root, before entering them.
	// It returns environment variables (NAME=value) for the inner run and a
	// cleanup (or nil) run after the inner run ends. Nothing inside can
	// reach the module proxy (GOPROXY=off there): build and fetch here.
	Prepare func(ctx context.Context) (env []string, cleanup func(), err error)
	// PrepareTimeout bounds Prepare (default 40 minutes).
	PrepareTimeout time.Duration
	// Run runs inside, once the network is up and checked; link is the kind
	// of link that carries the address ("dummy", or "veth (...)"). Its
	// result is the test binary's exit code.
	Run func(link string) int
}

// Main runs s (see the package comment) and returns the exit code.
func Main(s Suite) int {
	if os.Getenv(markerEnv) == s.Name {
		link, err := s.Network.enter()
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: FAIL: inside the network namespace: %v\n", s.Name, err)
			return 1
		}
		return s.Run(link)
	}
	code, err := s.outer()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: FAIL: %v\n", s.Name, err)
		return 1
	}
	return code
}

func (s Suite) outer() (int, error) {
	if os.Geteuid() != 0 {
		return 1, fmt.Errorf("the %s suite needs root (%s), as CI runs it: run it as root (sudo go test)", s.Name, s.RootFor)
	}
	started := time.Now()
	timeout := s.PrepareTimeout
	if timeout == 0 {
		timeout = 40 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var env []string
	if s.Prepare != nil {
		var cleanup func()
		var err error
		env, cleanup, err = s.Prepare(ctx)
		if cleanup != nil {
			defer cleanup()
		}
		if err != nil {
			return 1, fmt.Errorf("preparing: %w", err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return 1, err
	}
	fmt.Fprintf(os.Stderr, "%s: prepared in %s; entering a new network namespace (%s on %s, no route out)\n",
		s.Name, time.Since(started).Round(time.Millisecond), s.Network.CIDR, s.Network.Link)
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(append(os.Environ(), env...), markerEnv+"="+s.Name,
		// Nothing inside can reach the module proxy.
		"GOPROXY=off", "GOFLAGS=-mod=mod")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 1, fmt.Errorf("starting the test binary in new network and mount namespaces (CLONE_NEWNET|CLONE_NEWNS): %w", err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 1, err
	}
	return 0, nil
}

// enter runs inside the new namespaces: private mounts, lo, the link and
// its address, then CheckNoRouteOut.
func (n Network) enter() (string, error) {
	// Mounts made inside stay inside.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return "", fmt.Errorf("making / a private mount: %w", err)
	}
	if _, _, err := net.ParseCIDR(n.CIDR); err != nil {
		return "", err
	}
	if err := ip("link", "set", "lo", "up"); err != nil {
		return "", err
	}
	// A dummy link is the natural home of the address; kernels without the
	// dummy driver get a veth pair whose both ends stay in this namespace.
	link := "dummy"
	if err := ip("link", "add", n.Link, "type", "dummy"); err != nil {
		link = "veth (no dummy driver: " + err.Error() + ")"
		if err := ip("link", "add", n.Link, "type", "veth", "peer", "name", n.Peer); err != nil {
			return "", fmt.Errorf("neither a dummy nor a veth link can be created: %w", err)
		}
		if err := ip("link", "set", n.Peer, "up"); err != nil {
			return "", err
		}
	}
	if err := ip("addr", "add", n.CIDR, "dev", n.Link); err != nil {
		return "", err
	}
	if err := ip("link", "set", n.Link, "up"); err != nil {
		return "", err
	}
	return link, n.CheckNoRouteOut()
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// CheckNoRouteOut fails if this network namespace has a default route, a
// route to a public or private address outside it, or an interface other
// than lo, Link, Peer and Allow.
func (n Network) CheckNoRouteOut() error {
	out, err := exec.Command("ip", "route", "show", "default").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip route show default: %w: %s", err, out)
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		return fmt.Errorf("the network namespace has a default route: %s", s)
	}
	for _, dst := range []string{"1.1.1.1", "8.8.8.8", "192.168.1.1", "172.16.0.1"} {
		out, err := exec.Command("ip", "route", "get", dst).CombinedOutput()
		if err == nil {
			return fmt.Errorf("the network namespace has a route to %s: %s", dst, strings.TrimSpace(string(out)))
		}
		if !strings.Contains(string(out), "unreachable") {
			return fmt.Errorf("ip route get %s: %v: %s", dst, err, out)
		}
	}
	// (Not /sys/class/net: that sysfs shows the namespace it was mounted in.)
	out, err = exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -o link show: %w: %s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if !n.allowed(name) {
			return fmt.Errorf("unexpected network interface %s in the network namespace", name)
		}
	}
	return nil
}

func (n Network) allowed(name string) bool {
	if name == "lo" || name == n.Link || name == n.Peer {
		return true
	}
	for _, a := range n.Allow {
		if p, ok := strings.CutSuffix(a, "*"); ok && strings.HasPrefix(name, p) || name == a {
			return true
		}
	}
	return false
}
