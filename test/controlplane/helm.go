package controlplane

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error
)

// HelmBinary returns the helm CLI built from the Go module proxy by
// test/helm/build-helm.sh (cached outside the repository; the first build
// takes a few minutes). The suites that render charts share it.
func HelmBinary(ctx context.Context) (string, error) {
	helmOnce.Do(func() {
		script, err := LocateScript("", filepath.Join("test", "helm"), "build-helm.sh")
		if err != nil {
			helmErr = err
			return
		}
		cmd := exec.CommandContext(ctx, "bash", script)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, os.Stderr
		if err := cmd.Run(); err != nil {
			helmErr = fmt.Errorf("building helm with %s: %w", script, err)
			return
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		helmPath = strings.TrimSpace(lines[len(lines)-1])
	})
	return helmPath, helmErr
}
