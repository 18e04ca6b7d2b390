// Package imagebuild writes container images from static binaries without
// Docker and without a registry, reproducibly: the same binary and the same
// Spec give the same bytes, hence the same digests.
//
// An image here is one layer holding one static binary (plus its parent
// directories) on no base image: no shell, no libc, no /etc, nothing else.
// The binary and its directories are owned by 0:0 and not writable; the
// process runs as a numeric non-root user, so no /etc/passwd is needed. The
// layer is a tar with sorted entries, fixed owners and fixed times (the
// Spec's Created time, normally the commit time or SOURCE_DATE_EPOCH),
// gzip-compressed; the config's created time and history use the same time.
//
// The images are assembled with github.com/google/go-containerregistry
// (empty.Image + mutate, tarball layers, the layout package), a maintained
// library that computes the OCI manifests, configs and digests, so that no
// JSON or digest is written by hand here. ko was not used: it builds from a
// base image it fetches from a registry (a "scratch" base is possible but
// its reproducibility and label handling are less direct than the few
// calls below), and the release builds must run with no network but the Go
// module proxy.
//
// Outputs:
//   - WriteLayout: an OCI image layout directory holding one image or one
//     multi-platform index, which `crane push DIR REF` and
//     `skopeo copy --all oci:DIR docker://REF` publish;
//   - WriteArchive: the same layout as one tar, whose index.json names the
//     image with io.containerd.image.name, the form containerd's
//     `ctr -n k8s.io images import` (and so `kind load image-archive`)
//     accepts;
//   - GoBuild compiles a static Go binary reproducibly for a platform
//     (CGO_ENABLED=0, -trimpath, -buildid=, -buildvcs=false).
//
// Release defines the project's two release images (sds-injector and
// sds-agent) in one place; internal/cmd/build-images (make images) builds
// them and the Dockerfile is checked against the same definitions.
package imagebuild
