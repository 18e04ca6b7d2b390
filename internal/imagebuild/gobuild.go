package imagebuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// GoBinary is a static Go binary to compile.
type GoBinary struct {
	// Dir is the module directory go build runs in.
	Dir string
	// Package is the main package, e.g. ./cmd/sds-agent.
	Package string
	// Platform is the target (GOOS/GOARCH; variant v7 etc. for arm sets GOARM).
	Platform v1.Platform
	// Version is stamped into main.version (empty: not stamped).
	Version string
	// Tags are build tags (go build -tags).
	Tags []string
	// Output is the path of the binary to write.
	Output string
	// Go is the go command (default "go").
	Go string
}

// GoBuildFlags are the flags of every reproducible build: no cgo (a static
// binary), no build paths (-trimpath), no build ID and no VCS stamp, so the
// same source and toolchain give the same bytes wherever they are built.
// The Dockerfile uses the same flags (a test compares them). Build tags,
// if any, go in as -tags before -ldflags.
func GoBuildFlags(version string, tags ...string) []string {
	f := []string{"-trimpath", "-buildvcs=false"}
	if len(tags) > 0 {
		f = append(f, "-tags", strings.Join(tags, ","))
	}
	return append(f, "-ldflags", LDFlags(version))
}

// LDFlags are the linker flags: strip symbols and DWARF, empty build ID,
// and the version in main.version.
func LDFlags(version string) string {
	f := "-s -w -buildid="
	if version != "" {
		f += " -X main.version=" + version
	}
	return f
}

// GoBuild compiles b. The environment is the caller's with CGO_ENABLED=0,
// GOOS, GOARCH (and GOARM) set and GOFLAGS cleared, so that nothing in the
// caller's environment changes the flags.
func GoBuild(ctx context.Context, b GoBinary) error {
	if b.Package == "" || b.Output == "" || b.Platform.OS == "" || b.Platform.Architecture == "" {
		return fmt.Errorf("imagebuild: GoBuild needs Package, Output and Platform (got %+v)", b)
	}
	goCmd := b.Go
	if goCmd == "" {
		goCmd = "go"
	}
	out, err := filepath.Abs(b.Output)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	args := append([]string{"build"}, GoBuildFlags(b.Version, b.Tags...)...)
	args = append(args, "-o", out, b.Package)
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = b.Dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOOS="+b.Platform.OS, "GOARCH="+b.Platform.Architecture)
	if b.Platform.Architecture == "arm" && strings.HasPrefix(b.Platform.Variant, "v") {
		cmd.Env = append(cmd.Env, "GOARM="+strings.TrimPrefix(b.Platform.Variant, "v"))
	}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("imagebuild: go %s (GOOS=%s GOARCH=%s): %w\n%s", strings.Join(args, " "), b.Platform.OS, b.Platform.Architecture, err, stderr.String())
	}
	return nil
}

// SourceDate is the time reproducible outputs are stamped with:
// SOURCE_DATE_EPOCH if set (https://reproducible-builds.org/specs/source-date-epoch/),
// else the committer time of HEAD in dir.
func SourceDate(ctx context.Context, dir string) (time.Time, error) {
	if s, ok := os.LookupEnv("SOURCE_DATE_EPOCH"); ok {
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil || n < 0 {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a non-negative integer", s)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	out, err := git(ctx, dir, "log", "-1", "--format=%ct", "HEAD")
	if err != nil {
		return time.Time{}, fmt.Errorf("the commit time (set SOURCE_DATE_EPOCH outside a git checkout): %w", err)
	}
	n, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("git log printed %q", out)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Revision is the commit of HEAD in dir (with "-dirty" if the work tree
// has uncommitted changes to tracked files), or SOURCE_REVISION if set.
func Revision(ctx context.Context, dir string) (string, error) {
	if s := os.Getenv("SOURCE_REVISION"); s != "" {
		return s, nil
	}
	rev, err := git(ctx, dir, "rev-parse", "HEAD")
	if err != nil {
		return "", fmt.Errorf("the revision (set SOURCE_REVISION outside a git checkout): %w", err)
	}
	status, err := git(ctx, dir, "status", "--porcelain", "--untracked-files=no")
	if err != nil {
		return "", err
	}
	if status != "" {
		rev += "-dirty"
	}
	return rev, nil
}

func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}
