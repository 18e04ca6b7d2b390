// Command release builds every artifact a release publishes, locally and
// without pushing anything: `make release-dry-run` runs it, and so does the
// release workflow (.github/workflows/release.yml) before it publishes
// exactly these files.
//
// Output (default _output/release, replaced):
//
//	images/<name>/        OCI image layout, both platforms (crane push / skopeo copy)
//	images/<name>.tar     the same as a tar (ctr images import, kind load image-archive)
//	images/images.txt     refs and digests
//	bin/sds-injector-<os>-<arch>   the CLI, linux/darwin x amd64/arm64
//	chart/sds-injector-<chart version>.tgz   helm package of deploy/helm/sds-injector
//	SHA256SUMS            sha256sum of bin/* and chart/*.tgz (sha256sum -c format)
//
// The version defaults to the chart's appVersion; a release version
// (vX.Y.Z) must equal the chart's appVersion, the chart's version (without
// the v) and releaseVersion in cmd/sds-injector/images.go, or nothing is
// built.
//
// Usage:
//
//	go run ./internal/cmd/release [-o DIR] [-version vX.Y.Z] [-helm PATH]
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}
