package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
)

// Listen opens a TCP listener on host (e.g. "127.0.0.1") at a port the
// kernel picks, closed when t ends. Hand it to an in-process server: the
// port is held from the start, so nothing can take it in between.
func Listen(t testing.TB, host string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

var reserved = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// ReservePort returns a TCP port on host for a process that binds it by
// number itself (a subprocess). The port was free when picked and is
// reserved for this run: no other ReservePort of this process, and none of
// another test process of the same user (a lock file in the system temp
// dir, taken over only from a process that no longer runs), hands it out
// again until release is called (once or more).
func ReservePort(host string) (port int, release func(), err error) {
	if err := os.MkdirAll(filepath.Dir(lockPath(0)), 0o755); err != nil {
		return 0, nil, err
	}
	for range 100 {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, nil, err
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		reserved.Lock()
		taken := reserved.ports[port]
		if !taken {
			reserved.ports[port] = true
		}
		reserved.Unlock()
		if taken {
			continue
		}
		lock := lockPath(port)
		if lockPort(lock) {
			var once sync.Once
			return port, func() {
				once.Do(func() {
					_ = os.Remove(lock)
					reserved.Lock()
					delete(reserved.ports, port)
					reserved.Unlock()
				})
			}, nil
		}
		// Another test process holds it; keep it marked here too.
	}
	return 0, nil, errors.New("no free port after 100 tries")
}

func lockPath(port int) string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("sds-injector-test-ports-%d", os.Getuid()), strconv.Itoa(port))
}

// lockPort creates the lock file holding this PID, or takes it over from a
// PID that no longer runs.
func lockPort(path string) bool {
	for range 2 {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			_, _ = f.WriteString(strconv.Itoa(os.Getpid()))
			f.Close()
			return true
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err := strconv.Atoi(string(b))
		if err == nil && pid > 0 && errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			_ = os.Remove(path) // stale: its process is gone
			continue
		}
		return false
	}
	return false
}

// FreePort is ReservePort failing t, released when t ends.
func FreePort(t testing.TB, host string) int {
	t.Helper()
	port, release, err := ReservePort(host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	return port
}

// ReservePorts is ReservePort n times: n distinct ports on host, released
// together by release.
func ReservePorts(host string, n int) (ports []int, release func(), err error) {
	var releases []func()
	release = func() {
		for _, r := range releases {
			r()
		}
	}
	for range n {
		port, r, err := ReservePort(host)
		if err != nil {
			release()
			return nil, nil, err
		}
		ports, releases = append(ports, port), append(releases, r)
	}
	return ports, release, nil
}
