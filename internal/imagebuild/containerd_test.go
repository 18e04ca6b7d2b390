package imagebuild

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sds-injector/sds-injector/test/harness"
)

// TestContainerdImportsAndRunsTheArchive imports a release archive
// (sds-agent, linux/amd64 + linux/arm64) into a private containerd with
// `ctr -n k8s.io images import`, the command the docs give for air-gapped
// nodes (and what `kind load image-archive` runs), then runs the image as a
// container with runc: the entrypoint's binary found through PATH (as the
// injected probes exec `sds-agent probe`), running as 65532:65532, with
// nothing in its root filesystem but the binary. The container has its own
// empty network namespace (ctr's default): no traffic leaves it.
//
// Needs root (containerd and runc); containerd and runc are installed with
// apt-get when missing, as the node harness does. Run as another user it is
// skipped, saying so (a listed skip: docs/install.md, "How the images are
// tested").
func TestContainerdImportsAndRunsTheArchive(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd and runc (CI runs as root; listed in docs/install.md)")
	}
	ensureContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var agent ReleaseImage
	for _, ri := range ReleaseImages {
		if ri.Name == "sds-agent" {
			agent = ri
		}
	}
	work := t.TempDir()
	start := time.Now()
	const version = "v0.0.0-ctrtest"
	idx, err := BuildRelease(ctx, moduleDir(t), filepath.Join(work, "bin"), agent, ReleasePlatforms,
		Stamp{Version: version, Revision: "ctrtest", Created: testCreated})
	if err != nil {
		t.Fatal(err)
	}
	ref := agent.Ref("", "ctrtest")
	archive := filepath.Join(work, "sds-agent.tar")
	if err := WriteArchive(archive, ref, idx); err != nil {
		t.Fatal(err)
	}
	digest, _ := idx.Digest()

	t.Logf("built %s (%s): %s", ref, digest, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	sock := startContainerd(t)
	t.Logf("containerd serving: %s", time.Since(start).Round(time.Millisecond))
	// Each call has its own deadline: the cleanups below run after ctx is
	// cancelled.
	ctr := func(ns string, args ...string) (string, error) {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
		defer ccancel()
		cmd := exec.CommandContext(cctx, "ctr", append([]string{"--address", sock, "--namespace", ns}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	// The documented import, into the kubelet's namespace.
	if out, err := ctr("k8s.io", "images", "import", archive); err != nil {
		t.Fatalf("ctr -n k8s.io images import: %v\n%s", err, out)
	}
	out, err := ctr("k8s.io", "images", "check")
	if err != nil {
		t.Fatalf("ctr images check: %v\n%s", err, out)
	}
	line := grepLine(out, ref)
	if line == "" || !strings.Contains(line, digest.String()) || !strings.Contains(line, "complete (2/2)") {
		t.Fatalf("after the import, ctr images check shows\n%s\nwant %s at %s, complete (2/2) (both platforms)", out, ref, digest)
	}

	// Run it, in a namespace of the test's own (its own runc state and
	// cgroup, removed at the end).
	ns := fmt.Sprintf("sds-imagebuild-test-%d", os.Getpid())
	t.Cleanup(func() { cleanupNamespace(t, ns) })
	if out, err := ctr(ns, "images", "import", archive); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	out, err = ctr(ns, "run", "--rm", ref, "version-check", "sds-agent", "version")
	if err != nil || strings.TrimSpace(out) != version {
		t.Fatalf("ctr run %s sds-agent version: %q, %v (want %s)", ref, out, err, version)
	}
	if out, err := ctr(ns, "run", "-d", ref, "wait-check", "sds-agent", "wait"); err != nil {
		t.Fatalf("ctr run -d: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		ctr(ns, "task", "kill", "--signal", "KILL", "wait-check")
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if _, err := ctr(ns, "task", "delete", "wait-check"); err == nil {
				break
			}
		}
		ctr(ns, "containers", "delete", "wait-check")
	})
	pid := taskPID(t, ctr, ns, "wait-check")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Uid:\t65532\t65532\t65532\t65532", "Gid:\t65532\t65532\t65532\t65532"} {
		if !strings.Contains(string(status), want) {
			t.Errorf("the container's process is not 65532:65532:\n%s", status)
		}
	}
	// The image's files: the runtime mounts /dev, /proc, /sys and /run;
	// everything else comes from the layer, which holds only the binary.
	var files []string
	root := fmt.Sprintf("/proc/%d/root/", pid) // the trailing slash follows the link
	err = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch rel {
		case "dev", "proc", "sys", "run":
			return filepath.SkipDir
		case ".":
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		files = append(files, fmt.Sprintf("%s %v %d:%d", rel, fi.Mode(), st.Uid, st.Gid))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	want := []string{"usr drwxr-xr-x 0:0", "usr/local drwxr-xr-x 0:0", "usr/local/bin drwxr-xr-x 0:0", "usr/local/bin/sds-agent -r-xr-xr-x 0:0"}
	if strings.Join(files, "\n") != strings.Join(want, "\n") {
		t.Errorf("the container's root filesystem holds\n%s\nwant\n%s", strings.Join(files, "\n"), strings.Join(want, "\n"))
	}
	ours, _ := os.Readlink("/proc/self/ns/net")
	theirs, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if ours == "" || theirs == "" || ours == theirs {
		t.Errorf("the container shares the test's network namespace (%s, %s)", ours, theirs)
	}
}

func grepLine(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix+" ") {
			return l
		}
	}
	return ""
}

func taskPID(t *testing.T, ctr func(string, ...string) (string, error), ns, id string) int {
	t.Helper()
	var pid int
	harness.Await(context.Background(), t, 30*time.Second, "task "+id+" running", func(context.Context) (bool, error) {
		out, err := ctr(ns, "task", "ls")
		if err != nil {
			return false, fmt.Errorf("ctr task ls: %v: %s", err, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
				pid, err = strconv.Atoi(f[1])
				return err == nil, err
			}
		}
		return false, fmt.Errorf("not running: %s", out)
	})
	return pid
}

// ensureContainerd installs containerd and runc with apt-get when missing.
func ensureContainerd(t *testing.T) {
	t.Helper()
	_, e1 := exec.LookPath("containerd")
	_, e2 := exec.LookPath("ctr")
	_, e3 := os.Stat("/usr/sbin/runc")
	if e1 == nil && e2 == nil && e3 == nil {
		return
	}
	t.Log("containerd/ctr/runc missing: installing containerd and runc with apt-get")
	install := func() ([]byte, error) {
		cmd := exec.Command("apt-get", "install", "-y", "--no-install-recommends", "containerd", "runc")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if _, err := install(); err != nil {
		if uout, uerr := exec.Command("apt-get", "update").CombinedOutput(); uerr != nil {
			t.Fatalf("apt-get update: %v\n%s", uerr, uout)
		}
		if out, err := install(); err != nil {
			t.Fatalf("apt-get install containerd runc: %v\n%s", err, out)
		}
	}
}

// startContainerd runs a containerd of the test's own (private root, state
// and sockets; no CRI plugin) and stops it by its PID at the end.
func startContainerd(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "c.sock")
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = %[5]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[6]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc", filepath.Join(dir, "debug.sock"), filepath.Join(dir, "opt"))
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("containerd log:\n%s", b)
		}
		// A task containerd could not delete leaves its rootfs mounted.
		if mounts, err := os.ReadFile("/proc/mounts"); err == nil {
			for _, l := range strings.Split(string(mounts), "\n") {
				if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
					t.Errorf("left mounted after the test: %s", f[1])
					syscall.Unmount(f[1], 0)
				}
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing containerd's directory: %v", err)
		}
	})
	harness.Await(context.Background(), t, 30*time.Second, "containerd serving", func(context.Context) (bool, error) {
		select {
		case err := <-done:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("containerd exited: %v\n%s", err, b)
		default:
		}
		if out, err := exec.Command("ctr", "--address", sock, "version").CombinedOutput(); err != nil {
			return false, fmt.Errorf("ctr version: %v: %s", err, out)
		}
		return true, nil
	})
	return sock
}

// cleanupNamespace removes what running containers in ns left on the
// host: runc's state directory and the cgroup /<ns> in every hierarchy.
func cleanupNamespace(t *testing.T, ns string) {
	os.RemoveAll(filepath.Join("/run/containerd/runc", ns))
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", ns))
	if d := filepath.Join("/sys/fs/cgroup", ns); dirExists(d) {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		// children first
		var sub []string
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				sub = append(sub, p)
			}
			return nil
		})
		for i := len(sub) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(sub[i]); err != nil {
				t.Logf("rmdir %s: %v", sub[i], err)
			}
		}
	}
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
