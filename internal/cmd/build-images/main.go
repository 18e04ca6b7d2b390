// Command build-images builds the release images (sds-injector and
// sds-agent, see internal/imagebuild) without Docker and without a
// registry, reproducibly, for each platform into one multi-platform index
// per image. `make images` runs it.
//
// Output (default _output/images):
//
//	<name>/      OCI image layout (one entry: the multi-platform index), for
//	             crane push <name> REF / skopeo copy --all oci:<name> docker://REF
//	<name>.tar   the same layout as a tar, for ctr -n k8s.io images import /
//	             kind load image-archive (named by io.containerd.image.name)
//	images.txt   one line per image: <ref> <index digest>, then the
//	             per-platform manifest digests
//
// Usage:
//
//	go run ./internal/cmd/build-images [-o DIR] [-version V] [-tag T] [-registry R] [-platforms linux/amd64,linux/arm64]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sds-injector/sds-injector/internal/imagebuild"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "build-images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("build-images", flag.ContinueOnError)
	out := fs.String("o", "_output/images", "output directory (replaced)")
	version := fs.String("version", "", "version stamped into the binaries and labels (required)")
	tag := fs.String("tag", "", "image tag (default: -version)")
	registry := fs.String("registry", "ghcr.io/sds-injector", "registry and path the image names start with")
	platforms := fs.String("platforms", "linux/amd64,linux/arm64", "comma-separated platforms")
	module := fs.String("C", ".", "module directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *version == "" {
		return errors.New("-version is required (make images passes VERSION)")
	}
	if *tag == "" {
		*tag = *version
	}
	plats, err := parsePlatforms(*platforms)
	if err != nil {
		return err
	}
	res, err := imagebuild.BuildReleaseImages(ctx, imagebuild.ReleaseOptions{
		ModuleDir: *module,
		OutDir:    *out,
		Version:   *version,
		Tag:       *tag,
		Registry:  strings.TrimSuffix(*registry, "/"),
		Platforms: plats,
	})
	if err != nil {
		return err
	}
	for _, r := range res {
		fmt.Fprintf(stdout, "%s@%s\n  layout  %s\n  archive %s\n", r.Ref, r.Digest, r.Layout, r.Archive)
	}
	return nil
}

func parsePlatforms(s string) ([]v1.Platform, error) {
	var ps []v1.Platform
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := v1.ParsePlatform(f)
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", f, err)
		}
		if p.OS == "" || p.Architecture == "" {
			return nil, fmt.Errorf("platform %q: want os/arch", f)
		}
		ps = append(ps, *p)
	}
	if len(ps) == 0 {
		return nil, errors.New("-platforms is empty")
	}
	return ps, nil
}
