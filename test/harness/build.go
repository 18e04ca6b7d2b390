// Package harness is the scaffolding every suite under test/ shares:
// building this tree's binaries once per run, waiting on conditions
// (Eventually, WaitHTTP), loopback ports that cannot collide (Listen,
// FreePort), processes run in their own process group and stopped by PID
// (Start), and the control plane's presence check (NeedControlPlane).
package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// Module is this repository's module path.
const Module = "github.com/sds-injector/sds-injector"

// Binary packages of this tree.
const (
	Injector = Module + "/cmd/sds-injector"
	Agent    = Module + "/cmd/sds-agent"
)

// BuildDirEnv names a directory shared by every test binary of a run
// (make test sets it); binaries are built there once per content hash.
// Unset, a directory under the system temp dir is used.
const BuildDirEnv = "SDS_INJECTOR_TEST_BUILD_DIR"

// Static builds as the release images do: CGO off, -trimpath, stripped.
var Static = BuildOptions{Env: []string{"CGO_ENABLED=0"}, Flags: []string{"-trimpath", "-ldflags=-s -w"}}

// BuildOptions are extra go build settings; they are part of the cache key.
type BuildOptions struct {
	Env   []string
	Flags []string
}

var builds sync.Map // key → *buildResult

type buildResult struct {
	once sync.Once
	path string
	err  error
}

// Build returns the path of pkg (a main package of this module) built from
// the tree as it is now. The binary is named after the package and kept in
// the run's build directory under the hash of every source file of this
// module it depends on (plus go.mod, go.sum, the Go version and opts), so
// the suites of one run build each binary once and a changed source builds
// anew.
func Build(ctx context.Context, pkg string, opts BuildOptions) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	key, err := sourceHash(ctx, root, pkg, opts)
	if err != nil {
		return "", err
	}
	dir, err := buildDir()
	if err != nil {
		return "", err
	}
	v, _ := builds.LoadOrStore(dir+"\x00"+key, &buildResult{})
	r := v.(*buildResult)
	r.once.Do(func() { r.path, r.err = build(ctx, root, dir, pkg, key, opts) })
	return r.path, r.err
}

// MustBuild is Build failing t.
func MustBuild(t testing.TB, pkg string, opts BuildOptions) string {
	t.Helper()
	bin, err := Build(context.Background(), pkg, opts)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func buildDir() (string, error) {
	dir := os.Getenv(BuildDirEnv)
	if dir == "" {
		dir = filepath.Join(os.TempDir(), fmt.Sprintf("sds-injector-test-bin-%d", os.Getuid()))
	}
	return dir, os.MkdirAll(dir, 0o755)
}

func build(ctx context.Context, root, dir, pkg, key string, opts BuildOptions) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg)+"-"+key[:16], filepath.Base(pkg))
	if fi, err := os.Stat(out); err == nil && fi.Mode().IsRegular() {
		return out, nil
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	// Build beside the final path and rename, so that a concurrent run
	// never sees half a binary.
	tmp, err := os.CreateTemp(filepath.Dir(out), ".build-*")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	args := append(append([]string{"build"}, opts.Flags...), "-o", tmp.Name(), pkg)
	// One retry: a build cache shared with concurrent builds has been seen
	// to fail transiently ("could not import net (open : no such file or
	// directory)"); a real compile error fails twice.
	for attempt := 1; ; attempt++ {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir, cmd.Env = root, append(os.Environ(), opts.Env...)
		b, err := cmd.CombinedOutput()
		if err == nil {
			break
		}
		if attempt == 2 || ctx.Err() != nil {
			return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
		}
	}
	// Runnable by the unprivileged users tests run processes as.
	if err := os.Chmod(tmp.Name(), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", err
	}
	pruneOld(dir, filepath.Base(pkg), filepath.Dir(out))
	return out, nil
}

// pruneOld removes builds of name other than keep that were made more than
// a week ago, so that the shared directory does not grow without bound.
func pruneOld(dir, name, keep string) {
	old, _ := filepath.Glob(filepath.Join(dir, name+"-*"))
	for _, d := range old {
		if fi, err := os.Stat(d); err == nil && d != keep && time.Since(fi.ModTime()) > 7*24*time.Hour {
			_ = os.RemoveAll(d)
		}
	}
}

// sourceHash hashes the sources of pkg's dependencies inside this module.
func sourceHash(ctx context.Context, root, pkg string, opts BuildOptions) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-deps", "-f",
		`{{if .Module}}{{if .Module.Main}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{range .CgoFiles}} {{.}}{{end}}{{range .SFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}{{end}}`, pkg)
	cmd.Dir, cmd.Env = root, append(os.Environ(), opts.Env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	list, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list -deps %s: %w\n%s", pkg, err, stderr.String())
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%q\n%q\n", runtime.Version(), pkg, opts.Env, opts.Flags)
	files := []string{filepath.Join(root, "go.mod"), filepath.Join(root, "go.sum")}
	for _, line := range strings.Split(strings.TrimSpace(string(list)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		for _, name := range f[1:] {
			files = append(files, filepath.Join(f[0], name))
		}
	}
	for _, f := range files {
		if err := hashFile(h, f); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashFile(h io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(h, "%s\n", path)
	_, err = io.Copy(h, f)
	return err
}

var rootOnce struct {
	sync.Once
	dir string
	err error
}

// RepoRoot is the directory of this module's go.mod, found from the
// working directory (a test runs in its package's directory).
func RepoRoot() (string, error) {
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			rootOnce.err = err
			return
		}
		for {
			if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module "+Module+"\n") {
				rootOnce.dir = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				rootOnce.err = errors.New("not inside the sds-injector module (no go.mod naming " + Module + " above the working directory)")
				return
			}
			dir = parent
		}
	})
	return rootOnce.dir, rootOnce.err
}
