package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/internal/imagebuild"
)

// CLIPlatforms are the platforms of the released sds-injector CLI.
var CLIPlatforms = []v1.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64"},
	{OS: "darwin", Architecture: "amd64"},
	{OS: "darwin", Architecture: "arm64"},
}

// ChartDir is the chart a release packages, relative to the module.
const ChartDir = "deploy/helm/sds-injector"

type options struct {
	moduleDir      string
	outDir         string
	version        string
	helm           string
	imagePlatforms []v1.Platform
	cliPlatforms   []v1.Platform
	registry       string
	// revision and created override git (tests).
	revision string
	created  time.Time
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("release", flag.ContinueOnError)
	o := options{}
	fs.StringVar(&o.outDir, "o", "_output/release", "output directory (replaced)")
	fs.StringVar(&o.version, "version", "", "release version vX.Y.Z (default: the chart's appVersion); must match the chart and releaseVersion")
	fs.StringVar(&o.helm, "helm", "", "helm binary (default: built by test/helm/build-helm.sh)")
	fs.StringVar(&o.moduleDir, "C", ".", "module directory")
	fs.StringVar(&o.registry, "registry", "ghcr.io/sds-injector", "registry and path of the image names")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o.imagePlatforms = imagebuild.ReleasePlatforms
	o.cliPlatforms = CLIPlatforms
	files, err := dryRun(ctx, o)
	if err != nil {
		return err
	}
	for _, f := range files {
		fmt.Fprintln(stdout, filepath.Join(o.outDir, f))
	}
	return nil
}

// chartMeta is what the release reads from Chart.yaml.
type chartMeta struct {
	Name       string `json:"name"`
	Version    string `json:"version"`
	AppVersion string `json:"appVersion"`
}

func readChart(moduleDir string) (chartMeta, error) {
	var c chartMeta
	b, err := os.ReadFile(filepath.Join(moduleDir, ChartDir, "Chart.yaml"))
	if err != nil {
		return c, err
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s/Chart.yaml: %w", ChartDir, err)
	}
	return c, nil
}

var releaseVersionRE = regexp.MustCompile(`(?m)^\s*releaseVersion\s*=\s*"([^"]*)"`)

// releaseVersion reads cmd/sds-injector's releaseVersion constant.
func releaseVersion(moduleDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(moduleDir, "cmd", "sds-injector", "images.go"))
	if err != nil {
		return "", err
	}
	m := releaseVersionRE.FindSubmatch(b)
	if m == nil {
		return "", errors.New("cmd/sds-injector/images.go: no releaseVersion constant")
	}
	return string(m[1]), nil
}

var defaultAgentImageRE = regexp.MustCompile(`(?m)^\s*DefaultSDSAgentImage\s*=\s*"[^"]*:([^":]*)"`)

// engineAgentTag reads the tag of webhook/inject's DefaultSDSAgentImage
// (the engine's own default, used without the CLI or the chart).
func engineAgentTag(moduleDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(moduleDir, "webhook", "inject", "config.go"))
	if err != nil {
		return "", err
	}
	m := defaultAgentImageRE.FindSubmatch(b)
	if m == nil {
		return "", errors.New("webhook/inject/config.go: no DefaultSDSAgentImage with a tag")
	}
	return string(m[1]), nil
}

var semverTag = regexp.MustCompile(`^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$`)

// checkVersion refuses a version the tree is not stamped with: every place
// a release bump touches must say the same (RELEASING.md lists them).
func checkVersion(version string, c chartMeta, rv, engineTag string) error {
	var errs []error
	if !semverTag.MatchString(version) {
		errs = append(errs, fmt.Errorf("version %q is not a release tag vMAJOR.MINOR.PATCH[-PRERELEASE]", version))
	}
	if c.AppVersion != version {
		errs = append(errs, fmt.Errorf("%s/Chart.yaml appVersion is %q", ChartDir, c.AppVersion))
	}
	if c.Version != strings.TrimPrefix(version, "v") {
		errs = append(errs, fmt.Errorf("%s/Chart.yaml version is %q, want %q", ChartDir, c.Version, strings.TrimPrefix(version, "v")))
	}
	if rv != version {
		errs = append(errs, fmt.Errorf("cmd/sds-injector/images.go releaseVersion is %q", rv))
	}
	if engineTag != version {
		errs = append(errs, fmt.Errorf("webhook/inject/config.go DefaultSDSAgentImage tag is %q", engineTag))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("the tree is not version %s (see RELEASING.md): %w", version, err)
	}
	return nil
}

func platformName(p v1.Platform) string { return p.OS + "-" + p.Architecture }

// plan is every artifact dryRun writes, relative to the output directory:
// what the release workflow publishes.
func plan(c chartMeta, o options) []string {
	var out []string
	for _, ri := range imagebuild.ReleaseImages {
		out = append(out, "images/"+ri.Name+"/", "images/"+ri.Name+".tar")
	}
	out = append(out, "images/images.txt")
	for _, p := range o.cliPlatforms {
		out = append(out, "bin/sds-injector-"+platformName(p))
	}
	out = append(out, "chart/"+c.Name+"-"+c.Version+".tgz", "SHA256SUMS")
	slices.Sort(out)
	return out
}

// dryRun writes every artifact into o.outDir and returns plan's list.
func dryRun(ctx context.Context, o options) (files []string, err error) {
	c, err := readChart(o.moduleDir)
	if err != nil {
		return nil, err
	}
	rv, err := releaseVersion(o.moduleDir)
	if err != nil {
		return nil, err
	}
	et, err := engineAgentTag(o.moduleDir)
	if err != nil {
		return nil, err
	}
	if o.version == "" {
		o.version = c.AppVersion
	}
	if err := checkVersion(o.version, c, rv, et); err != nil {
		return nil, err
	}
	if o.revision == "" {
		if o.revision, err = imagebuild.Revision(ctx, o.moduleDir); err != nil {
			return nil, err
		}
	}
	if o.created.IsZero() {
		if o.created, err = imagebuild.SourceDate(ctx, o.moduleDir); err != nil {
			return nil, err
		}
	}
	if o.helm == "" {
		if o.helm, err = buildHelm(ctx, o.moduleDir); err != nil {
			return nil, err
		}
	}
	if err := os.RemoveAll(o.outDir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(o.outDir)
		}
	}()

	// Images.
	if _, err := imagebuild.BuildReleaseImages(ctx, imagebuild.ReleaseOptions{
		ModuleDir: o.moduleDir, OutDir: filepath.Join(o.outDir, "images"),
		Version: o.version, Registry: o.registry, Platforms: o.imagePlatforms,
		Revision: o.revision, Created: o.created,
	}); err != nil {
		return nil, err
	}

	// The CLI.
	var sums []string
	for _, p := range o.cliPlatforms {
		rel := "bin/sds-injector-" + platformName(p)
		if err := imagebuild.GoBuild(ctx, imagebuild.GoBinary{
			Dir: o.moduleDir, Package: "./cmd/sds-injector", Platform: p, Version: o.version,
			Output: filepath.Join(o.outDir, rel),
		}); err != nil {
			return nil, err
		}
		sums = append(sums, rel)
	}

	// The chart: linted, packaged, re-written with fixed times.
	chartOut := filepath.Join(o.outDir, "chart")
	if err := os.MkdirAll(chartOut, 0o755); err != nil {
		return nil, err
	}
	chartSrc := filepath.Join(o.moduleDir, ChartDir)
	if out, err := exec.CommandContext(ctx, o.helm, "lint", "--strict", chartSrc).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("helm lint %s: %w\n%s", ChartDir, err, out)
	}
	if out, err := exec.CommandContext(ctx, o.helm, "package", chartSrc, "--destination", chartOut).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("helm package %s: %w\n%s", ChartDir, err, out)
	}
	tgzRel := "chart/" + c.Name + "-" + c.Version + ".tgz"
	if err := normalizeTgz(filepath.Join(o.outDir, tgzRel), o.created); err != nil {
		return nil, fmt.Errorf("%s: %w", tgzRel, err)
	}
	sums = append(sums, tgzRel)

	// Checksums, in `sha256sum -c` format, paths relative to o.outDir.
	var b strings.Builder
	for _, rel := range sums {
		h, err := fileSHA256(filepath.Join(o.outDir, rel))
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "%s  %s\n", h, rel)
	}
	if err := os.WriteFile(filepath.Join(o.outDir, "SHA256SUMS"), []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	return plan(c, o), nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// normalizeTgz rewrites a .tgz with every entry's time set to mtime and
// no gzip header time, keeping order and content: helm package stamps the
// current time, which would make the chart differ between two builds of
// one commit.
func normalizeTgz(path string, mtime time.Time) error {
	in, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	zr, err := gzip.NewReader(bytes.NewReader(in))
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	var out bytes.Buffer
	zw, err := gzip.NewWriterLevel(&out, gzip.BestCompression)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		h.ModTime, h.AccessTime, h.ChangeTime = mtime.UTC().Truncate(time.Second), time.Time{}, time.Time{}
		h.Format = tar.FormatPAX
		h.PAXRecords = nil
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// buildHelm returns the helm CLI test/helm/build-helm.sh builds from the
// Go module proxy (cached in ~/.cache/sds-injector/bin).
func buildHelm(ctx context.Context, moduleDir string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(moduleDir, "test", "helm", "build-helm.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("building helm with test/helm/build-helm.sh: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1]), nil
}
