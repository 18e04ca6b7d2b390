package imagebuild

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Source is the project's source repository (the images' source label).
const Source = "https://github.com/sds-injector/sds-injector"

// ReleasePlatforms are the platforms a release publishes, in index order.
var ReleasePlatforms = []v1.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64"},
}

// ReleaseImage is one of the images a release publishes.
type ReleaseImage struct {
	// Name is the image's short name: the last element of Repository, the
	// Dockerfile stage that builds it and the binary's name.
	Name string
	// Repository is where a release pushes it (the chart's default).
	Repository string
	// Package is the Go main package of the binary.
	Package string
	// Tags are the binary's build tags.
	Tags []string
	// Path is the binary's path in the image.
	Path string
	// Description is the org.opencontainers.image.description label.
	Description string
}

// ReleaseImages are the two images of a release. The repositories are the
// ones cmd/sds-injector and the chart default to (a test checks it).
var ReleaseImages = []ReleaseImage{
	{
		Name:       "sds-injector",
		Repository: "ghcr.io/sds-injector/sds-injector",
		Package:    "./cmd/sds-injector",
		// The webhook's build: without the CLI-only `check` and its
		// dependencies, ~6 MiB less resident memory (docs/performance.md);
		// the CLI binaries keep it.
		Tags:        []string{"nocheck"},
		Path:        "/usr/local/bin/sds-injector",
		Description: "sds-injector: admission webhook and CLI injecting an SDS agent into edge gateway pods",
	},
	{
		Name:        "sds-agent",
		Repository:  "ghcr.io/sds-injector/sds-agent",
		Package:     "./cmd/sds-agent",
		Path:        "/usr/local/bin/sds-agent",
		Description: "sds-agent: slim SDS agent serving an Istio workload certificate on a Unix socket",
	},
}

// Labels are the OCI labels of a release image (the Dockerfile sets the
// same, from its VERSION, REVISION and CREATED build arguments). There is
// no licenses label: the repository has no license file yet.
func (r ReleaseImage) Labels(version, revision string, created time.Time) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       r.Name,
		"org.opencontainers.image.description": r.Description,
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.revision":    revision,
		"org.opencontainers.image.source":      Source,
		"org.opencontainers.image.url":         Source,
		"org.opencontainers.image.created":     created.UTC().Format(time.RFC3339),
	}
}

// Spec is the image spec of r for one platform, given its built binary.
func (r ReleaseImage) Spec(binary string, p v1.Platform, version, revision string, created time.Time) Spec {
	return Spec{
		Binary:   binary,
		Path:     r.Path,
		User:     NonRoot,
		Labels:   r.Labels(version, revision, created),
		Platform: p,
		Created:  created,
	}
}

// Ref is the image reference for tag in repository (default r.Repository).
func (r ReleaseImage) Ref(repository, tag string) string {
	if repository == "" {
		repository = r.Repository
	}
	return repository + ":" + tag
}

// Stamp is what a reproducible build is stamped with.
type Stamp struct {
	Version  string    // main.version and the version label
	Revision string    // the revision label
	Created  time.Time // file times, created time
}

// BuildRelease compiles r's binary for each platform into workDir and
// returns the multi-platform index of its images.
func BuildRelease(ctx context.Context, moduleDir, workDir string, r ReleaseImage, platforms []v1.Platform, st Stamp) (v1.ImageIndex, error) {
	var imgs []v1.Image
	for _, p := range platforms {
		bin := filepath.Join(workDir, r.Name+"-"+strings.ReplaceAll(p.String(), "/", "-"), r.Name)
		if err := GoBuild(ctx, GoBinary{Dir: moduleDir, Package: r.Package, Tags: r.Tags, Platform: p, Version: st.Version, Output: bin}); err != nil {
			return nil, err
		}
		img, err := Build(r.Spec(bin, p, st.Version, st.Revision, st.Created))
		if err != nil {
			return nil, fmt.Errorf("%s for %s: %w", r.Name, p.String(), err)
		}
		imgs = append(imgs, img)
	}
	return Index(map[string]string{
		"org.opencontainers.image.title":    r.Name,
		"org.opencontainers.image.version":  st.Version,
		"org.opencontainers.image.revision": st.Revision,
		"org.opencontainers.image.source":   Source,
		"org.opencontainers.image.created":  st.Created.UTC().Format(time.RFC3339),
	}, imgs...)
}

// ReleaseOptions say where and how BuildReleaseImages builds.
type ReleaseOptions struct {
	ModuleDir string // the module's directory (go build and git run there)
	OutDir    string // replaced by the output
	Version   string // stamped into main.version and the version label
	Tag       string // the image tag (default Version)
	Registry  string // names are Registry/<name> (default: each image's Repository)
	Platforms []v1.Platform
	// Stamp overrides the revision and time read from git / SOURCE_DATE_EPOCH
	// (Version is taken from the field above).
	Revision string
	Created  time.Time
}

// ReleaseResult is one built image.
type ReleaseResult struct {
	Image     ReleaseImage
	Ref       string             // repository:tag
	Digest    v1.Hash            // of the index
	Manifests map[string]v1.Hash // platform -> manifest digest
	Layout    string             // OCI layout directory
	Archive   string             // OCI layout tar for ctr import / kind load
}

// BuildReleaseImages builds every ReleaseImages entry for o.Platforms into
// o.OutDir: <name>/ (OCI layout), <name>.tar (its tar, named for
// containerd) and images.txt (refs and digests). Binaries are compiled in
// o.OutDir/.work, removed at the end. On error nothing is left in OutDir.
func BuildReleaseImages(ctx context.Context, o ReleaseOptions) (res []ReleaseResult, err error) {
	if o.Version == "" {
		return nil, fmt.Errorf("imagebuild: no version")
	}
	if len(o.Platforms) == 0 {
		return nil, fmt.Errorf("imagebuild: no platform")
	}
	if o.Tag == "" {
		o.Tag = o.Version
	}
	if o.Revision == "" {
		if o.Revision, err = Revision(ctx, o.ModuleDir); err != nil {
			return nil, err
		}
	}
	if o.Created.IsZero() {
		if o.Created, err = SourceDate(ctx, o.ModuleDir); err != nil {
			return nil, err
		}
	}
	st := Stamp{Version: o.Version, Revision: o.Revision, Created: o.Created}
	if err := os.RemoveAll(o.OutDir); err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	if err := ensureDir(o.OutDir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(o.OutDir)
		}
	}()
	work := filepath.Join(o.OutDir, ".work")
	defer os.RemoveAll(work)
	var summary strings.Builder
	for _, r := range ReleaseImages {
		idx, err := BuildRelease(ctx, o.ModuleDir, work, r, o.Platforms, st)
		if err != nil {
			return nil, err
		}
		repo := r.Repository
		if o.Registry != "" {
			repo = o.Registry + "/" + r.Name
		}
		rr := ReleaseResult{
			Image:     r,
			Ref:       r.Ref(repo, o.Tag),
			Layout:    filepath.Join(o.OutDir, r.Name),
			Archive:   filepath.Join(o.OutDir, r.Name+".tar"),
			Manifests: map[string]v1.Hash{},
		}
		if rr.Digest, err = idx.Digest(); err != nil {
			return nil, fmt.Errorf("imagebuild: %w", err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, fmt.Errorf("imagebuild: %w", err)
		}
		fmt.Fprintf(&summary, "%s %s\n", rr.Ref, rr.Digest)
		for _, m := range im.Manifests {
			rr.Manifests[m.Platform.String()] = m.Digest
			fmt.Fprintf(&summary, "  %s %s\n", m.Platform.String(), m.Digest)
		}
		if err := WriteLayout(rr.Layout, rr.Ref, idx); err != nil {
			return nil, err
		}
		if err := WriteArchive(rr.Archive, rr.Ref, idx); err != nil {
			return nil, err
		}
		res = append(res, rr)
	}
	if err := os.WriteFile(filepath.Join(o.OutDir, "images.txt"), []byte(summary.String()), 0o644); err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	return res, nil
}

// ensureDir is os.MkdirAll with the error named.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("imagebuild: %w", err)
	}
	return nil
}
