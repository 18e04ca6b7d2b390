package harness

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestReservePortDistinct(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		p := FreePort(t, "127.0.0.1")
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}

func TestReservePortReleased(t *testing.T) {
	port, release, err := ReservePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	lock := lockPath(port)
	if b, err := os.ReadFile(lock); err != nil || string(b) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file %s: %q %v", lock, b, err)
	}
	release()
	if _, err := os.Stat(lock); !os.IsNotExist(err) {
		t.Fatalf("lock file kept after release: %v", err)
	}
}

func TestReservePortsReleasedTogether(t *testing.T) {
	ports, release, err := ReservePorts("127.0.0.1", 5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d handed out twice in %v", p, ports)
		}
		seen[p] = true
		if _, err := os.Stat(lockPath(p)); err != nil {
			t.Fatalf("port %d not reserved: %v", p, err)
		}
	}
	release()
	for _, p := range ports {
		if _, err := os.Stat(lockPath(p)); !os.IsNotExist(err) {
			t.Fatalf("port %d still reserved after release: %v", p, err)
		}
	}
}

func TestStaleLockTakenOver(t *testing.T) {
	// A PID that is not running: a finished child's.
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	path := lockPath(1) // port 1 is never picked by the kernel for :0
	if err := os.WriteFile(path, []byte(strconv.Itoa(c.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	if !lockPort(path) {
		t.Fatal("a lock of a finished process was not taken over")
	}
	if lockPort(path) {
		t.Fatal("a live process's lock was taken over")
	}
}

func TestBuildOnceByContent(t *testing.T) {
	t.Setenv(BuildDirEnv, t.TempDir())
	ctx := context.Background()
	a, err := Build(ctx, Agent, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(ctx, Agent, BuildOptions{})
	if err != nil || b != a {
		t.Fatalf("second build %q %v, want the first %q", b, err, a)
	}
	if fi2, _ := os.Stat(b); !fi2.ModTime().Equal(fi.ModTime()) {
		t.Fatal("the binary was rebuilt")
	}
	s, err := Build(ctx, Agent, Static)
	if err != nil || s == a {
		t.Fatalf("static build %q %v: want its own binary", s, err)
	}
	out, err := exec.Command(a, "version").CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) == 0 {
		t.Fatalf("built binary does not run: %v %s", err, out)
	}
}

func TestStopKillsGroup(t *testing.T) {
	// A shell that ignores SIGTERM and leaves a child behind.
	pidFile := t.TempDir() + "/child"
	p := Start(t, "sh", exec.Command("sh", "-c", `trap "" TERM; sleep 300 & echo $! > `+pidFile+`; wait`))
	var child int
	Eventually(t, 10*time.Second, "the child to start", func(context.Context) (bool, error) {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false, nil
		}
		child, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil, nil
	})
	start := time.Now()
	_ = p.Stop(200 * time.Millisecond)
	if !p.Exited() {
		t.Fatal("not exited after Stop")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Stop took %s", d)
	}
	Eventually(t, 10*time.Second, "the child to be gone", func(context.Context) (bool, error) {
		return syscall.Kill(child, 0) == syscall.ESRCH, nil
	})
}

func TestWaitHTTP(t *testing.T) {
	ready := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-ready:
		default:
			http.Error(w, "not yet", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := WaitHTTP(ctx, srv.URL); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("not-ready server: %v, want a failure naming the last status", err)
	}
	close(ready)
	WaitReady(t, 10*time.Second, srv.URL)
}

func TestAwaitRetriesErrors(t *testing.T) {
	n := 0
	Await(context.Background(), t, 10*time.Second, "the third try", func(context.Context) (bool, error) {
		n++
		if n < 3 {
			return false, os.ErrNotExist
		}
		return true, nil
	})
	if n != 3 {
		t.Fatalf("cond called %d times, want 3", n)
	}
}

func TestExamplePod(t *testing.T) {
	p := ExamplePod(t, "gloo-gateway-proxy.yaml", "ns1", "gw-1", map[string]string{"a": "b"}, map[string]string{"c": "d"})
	if p.Namespace != "ns1" || p.Name != "gw-1" || p.Labels["a"] != "b" || p.Annotations["c"] != "d" || len(p.Spec.Containers) == 0 {
		t.Fatalf("%+v", p.ObjectMeta)
	}
}

func TestStartLoggedAppendsAndTails(t *testing.T) {
	log := t.TempDir() + "/p.log"
	if err := os.WriteFile(log, []byte("before\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var also strings.Builder
	p, err := StartLogged("sh", exec.Command("sh", "-c", "echo one; echo two >&2; echo three"), log, &also)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Err(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if got := p.Output(); got != "before\none\ntwo\nthree\n" {
		t.Fatalf("log %q, want the earlier line kept and the output appended", got)
	}
	if got := p.Tail(2); got != "two\nthree" {
		t.Fatalf("Tail(2) = %q", got)
	}
	if also.String() != "one\ntwo\nthree\n" {
		t.Fatalf("copy %q", also.String())
	}
	if err := p.logFile.Close(); err == nil {
		t.Fatal("the log file is still open after the process exited")
	}
}
