package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/internal/imagebuild"
	"github.com/sds-injector/sds-injector/test/controlplane"
)

var testCreated = time.Date(2026, 12, 1, 10, 20, 30, 0, time.UTC)

func moduleDir(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatalf("not inside the module (go env GOMOD=%q)", gomod)
	}
	return filepath.Dir(gomod)
}

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error
)

func helm(t *testing.T) string {
	t.Helper()
	helmOnce.Do(func() { helmPath, helmErr = controlplane.HelmBinary(context.Background()) })
	if helmErr != nil {
		t.Fatalf("helm (built from the module proxy by test/helm/build-helm.sh): %v", helmErr)
	}
	return helmPath
}

func TestTheTreeIsOneVersion(t *testing.T) {
	mod := moduleDir(t)
	c, err := readChart(mod)
	if err != nil {
		t.Fatal(err)
	}
	rv, err := releaseVersion(mod)
	if err != nil {
		t.Fatal(err)
	}
	et, err := engineAgentTag(mod)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkVersion(c.AppVersion, c, rv, et); err != nil {
		t.Fatalf("the tree's own version is refused: %v", err)
	}
}

func TestCheckVersionRefusesMismatches(t *testing.T) {
	c := chartMeta{Name: "sds-injector", Version: "1.2.3", AppVersion: "v1.2.3"}
	if err := checkVersion("v1.2.3", c, "v1.2.3", "v1.2.3"); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		version string
		chart   chartMeta
		rv, et  string
		want    []string
	}{
		"tag ahead of the tree": {"v1.2.4", c, "v1.2.3", "v1.2.3", []string{"appVersion is \"v1.2.3\"", "version is \"1.2.3\", want \"1.2.4\"", "releaseVersion is \"v1.2.3\"", "DefaultSDSAgentImage tag is \"v1.2.3\""}},
		"releaseVersion behind": {"v1.2.3", c, "v1.2.2", "v1.2.3", []string{"releaseVersion is \"v1.2.2\""}},
		"engine default behind": {"v1.2.3", c, "v1.2.3", "v1.2.2", []string{"DefaultSDSAgentImage tag is \"v1.2.2\""}},
		"chart version behind":  {"v1.2.3", chartMeta{Version: "1.2.2", AppVersion: "v1.2.3"}, "v1.2.3", "v1.2.3", []string{"want \"1.2.3\""}},
		"not a tag":             {"1.2.3", chartMeta{Version: "1.2.3", AppVersion: "1.2.3"}, "1.2.3", "1.2.3", []string{"not a release tag"}},
		"a commit":              {"a9588f0-dirty", chartMeta{Version: "a9588f0-dirty", AppVersion: "a9588f0-dirty"}, "a9588f0-dirty", "a9588f0-dirty", []string{"not a release tag"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := checkVersion(tc.version, tc.chart, tc.rv, tc.et)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v\ndoes not say %q", err, w)
				}
			}
		})
	}
	if err := checkVersion("v2.0.0-rc.1", chartMeta{Version: "2.0.0-rc.1", AppVersion: "v2.0.0-rc.1"}, "v2.0.0-rc.1", "v2.0.0-rc.1"); err != nil {
		t.Errorf("a pre-release: %v", err)
	}
}

// TestDryRun runs the dry run for one image platform and one CLI platform
// (the full set cross-compiles four more toolchains' worth of packages;
// `make release-dry-run` builds them all) and checks that it writes exactly
// plan's files, that they are what they claim, and that the checksums hold.
// The image builder itself is tested on both release platforms in
// internal/imagebuild (TestReleaseImages).
func TestDryRun(t *testing.T) {
	mod := moduleDir(t)
	c, err := readChart(mod)
	if err != nil {
		t.Fatal(err)
	}
	o := options{
		moduleDir: mod, outDir: filepath.Join(t.TempDir(), "release"), helm: helm(t),
		imagePlatforms: imagebuild.ReleasePlatforms[:1], cliPlatforms: CLIPlatforms[:1],
		registry: "registry.example.test/sds", revision: "0123abc", created: testCreated,
	}
	start := time.Now()
	files, err := dryRun(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dry run (images linux/amd64, CLI linux/amd64): %s", time.Since(start).Round(time.Millisecond))
	if !slices.Equal(files, plan(c, o)) {
		t.Errorf("dryRun returned %q, plan is %q", files, plan(c, o))
	}
	if got := listOutput(t, o.outDir); !slices.Equal(got, files) {
		t.Errorf("the output holds\n %q\nwant exactly\n %q", got, files)
	}

	// SHA256SUMS: every binary and the chart, each sum right.
	sums, err := os.ReadFile(filepath.Join(o.outDir, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	var summed []string
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, rel, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q", line)
		}
		got, err := fileSHA256(filepath.Join(o.outDir, rel))
		if err != nil || got != sum {
			t.Errorf("%s: sha256 %s (%v), SHA256SUMS says %s", rel, got, err, sum)
		}
		summed = append(summed, rel)
	}
	var wantSummed []string
	for _, f := range files {
		if strings.HasPrefix(f, "bin/") || strings.HasPrefix(f, "chart/") {
			wantSummed = append(wantSummed, f)
		}
	}
	if slices.Sort(summed); !slices.Equal(summed, wantSummed) {
		t.Errorf("SHA256SUMS covers %q, want %q", summed, wantSummed)
	}
	if _, err := exec.LookPath("sha256sum"); err == nil {
		cmd := exec.Command("sha256sum", "-c", "--strict", "SHA256SUMS")
		cmd.Dir = o.outDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("sha256sum -c: %v\n%s", err, out)
		}
	}

	// The CLI runs and is stamped with the release version.
	out, err := exec.Command(filepath.Join(o.outDir, "bin", "sds-injector-linux-amd64"), "version").CombinedOutput()
	if err != nil {
		t.Fatalf("sds-injector version: %v\n%s", err, out)
	}
	if !strings.HasPrefix(string(out), "sds-injector "+c.AppVersion+" ") ||
		!strings.Contains(string(out), "ghcr.io/sds-injector/sds-agent:"+c.AppVersion) {
		t.Errorf("sds-injector version printed:\n%s", out)
	}

	// The chart: the tree's chart, versions as in Chart.yaml, fixed times.
	checkChart(t, filepath.Join(o.outDir, "chart", c.Name+"-"+c.Version+".tgz"), c)

	// The images are named for the registry and tagged with the version.
	txt, err := os.ReadFile(filepath.Join(o.outDir, "images", "images.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ri := range imagebuild.ReleaseImages {
		if !strings.Contains(string(txt), "registry.example.test/sds/"+ri.Name+":"+c.AppVersion+" sha256:") {
			t.Errorf("images.txt does not list %s:\n%s", ri.Name, txt)
		}
	}

	// A version the tree does not carry builds nothing.
	bad := o
	bad.version, bad.outDir = "v9.9.9", filepath.Join(t.TempDir(), "bad")
	if _, err := dryRun(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "RELEASING.md") {
		t.Errorf("dry run of v9.9.9: %v", err)
	}
	if _, err := os.Stat(bad.outDir); !os.IsNotExist(err) {
		t.Errorf("the refused dry run wrote %s", bad.outDir)
	}
}

// listOutput lists the artifacts in dir as plan names them: files, and
// image layouts as "images/<name>/".
func listOutput(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if _, err := os.Stat(filepath.Join(p, "oci-layout")); err == nil {
				out = append(out, rel+"/")
				return filepath.SkipDir
			}
			return nil
		}
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func checkChart(t *testing.T, tgz string, c chartMeta) {
	t.Helper()
	b, err := os.ReadFile(tgz)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() && zr.ModTime.Unix() != 0 {
		t.Errorf("gzip header time %v", zr.ModTime)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(testCreated) {
			t.Errorf("%s: time %v, want %v", h.Name, h.ModTime, testCreated)
		}
		names = append(names, h.Name)
		if h.Name == c.Name+"/Chart.yaml" {
			body, _ := io.ReadAll(tr)
			var got chartMeta
			if err := yaml.Unmarshal(body, &got); err != nil {
				t.Fatal(err)
			}
			if got != c {
				t.Errorf("packaged Chart.yaml %+v, want %+v", got, c)
			}
		}
	}
	for _, want := range []string{c.Name + "/Chart.yaml", c.Name + "/values.yaml", c.Name + "/values.schema.json", c.Name + "/templates/deployment.yaml"} {
		if !slices.Contains(names, want) {
			t.Errorf("the chart package has no %s (%q)", want, names)
		}
	}
}

// TestChartPackageIsReproducible packages the chart twice: after
// normalizeTgz both are the same bytes (helm alone stamps the time).
func TestChartPackageIsReproducible(t *testing.T) {
	mod := moduleDir(t)
	var pkgs [][]byte
	for i := 0; i < 2; i++ {
		dir := t.TempDir()
		if out, err := exec.Command(helm(t), "package", filepath.Join(mod, ChartDir), "--destination", dir).CombinedOutput(); err != nil {
			t.Fatalf("helm package: %v\n%s", err, out)
		}
		m, _ := filepath.Glob(filepath.Join(dir, "*.tgz"))
		if len(m) != 1 {
			t.Fatalf("helm package wrote %q", m)
		}
		if err := normalizeTgz(m[0], testCreated); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(m[0])
		if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, b)
	}
	if !bytes.Equal(pkgs[0], pkgs[1]) {
		t.Error("two packages of one chart differ after normalizeTgz")
	}
}

// workflow is the part of a GitHub workflow the test reads.
type workflow struct {
	On   map[string]map[string][]string `json:"on"`
	Jobs map[string]struct {
		Needs       any               `json:"needs"`
		Permissions map[string]string `json:"permissions"`
		Env         map[string]string `json:"env"`
		Steps       []struct {
			Uses string            `json:"uses"`
			Run  string            `json:"run"`
			With map[string]string `json:"with"`
		} `json:"steps"`
	} `json:"jobs"`
}

var pinnedUses = regexp.MustCompile(`^\s*(?:- )?uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$`)

// TestWorkflowPublishesTheDryRun reads .github/workflows/release.yml: it
// builds with make release-dry-run and publishes every artifact plan lists
// for the full platform set, and nothing it did not build or sign itself.
func TestWorkflowPublishesTheDryRun(t *testing.T) {
	mod := moduleDir(t)
	raw, err := os.ReadFile(filepath.Join(mod, ".github", "workflows", "release.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, "uses:") && !pinnedUses.MatchString(line) {
			t.Errorf("release.yml:%d: %q is not pinned by commit with its version in a comment", i+1, strings.TrimSpace(line))
		}
	}
	var wf workflow
	// YAML 1.1 reads a bare `on` key as true; quote it for the decoder.
	quoted := regexp.MustCompile(`(?m)^on:`).ReplaceAll(raw, []byte(`"on":`))
	if err := yaml.Unmarshal(quoted, &wf); err != nil {
		t.Fatal(err)
	}
	if tags := wf.On["push"]["tags"]; !slices.Equal(tags, []string{"v*"}) {
		t.Errorf("on.push.tags %q", tags)
	}
	job, ok := wf.Jobs["release"]
	if !ok {
		t.Fatal("no release job")
	}
	if job.Needs != "test" {
		t.Errorf("the release job needs %v, want the test job", job.Needs)
	}
	for k, v := range map[string]string{"contents": "write", "packages": "write", "id-token": "write"} {
		if job.Permissions[k] != v {
			t.Errorf("permissions.%s = %q, want %q", k, job.Permissions[k], v)
		}
	}
	if job.Env["OUT"] != "_output/release" {
		t.Errorf("env.OUT %q: the dry run writes _output/release", job.Env["OUT"])
	}
	var script strings.Builder
	for _, s := range job.Steps {
		script.WriteString(s.Run + "\n")
	}
	sh := script.String()
	for _, want := range []string{
		`make release-dry-run RELEASE_VERSION="$TAG"`,
		`for name in ` + strings.Join(imageNames(), " ") + `; do`,
		`crane push "$OUT/images/$name" "$REGISTRY/$name:$TAG"`,
		`"$OUT/images/images.txt"`, // the pushed digest is checked against it
		`cosign sign --yes "$ref"`,
		`cosign attest --yes --type spdxjson`,
		`"$HELM" push "$chart" "oci://$REGISTRY/charts"`,
		`chart=$(ls "$OUT"/chart/sds-injector-*.tgz)`,
		`cosign sign-blob --yes --bundle "$OUT/SHA256SUMS.sigstore.json" "$OUT/SHA256SUMS"`,
		`sha256sum -c SHA256SUMS`,
	} {
		if !strings.Contains(sh, want) {
			t.Errorf("the release job does not run %q", want)
		}
	}
	if !strings.Contains(sh, "go install github.com/google/go-containerregistry/cmd/crane@"+goContainerregistryVersion(t, mod)) {
		t.Errorf("crane is not installed at go.mod's go-containerregistry version %s", goContainerregistryVersion(t, mod))
	}

	// The release assets: every file of the full plan but the layouts
	// (pushed above) is uploaded, and every upload is a planned file or a
	// file the workflow makes (SBOMs, the checksums' signature).
	c, err := readChart(mod)
	if err != nil {
		t.Fatal(err)
	}
	full := plan(c, options{imagePlatforms: imagebuild.ReleasePlatforms, cliPlatforms: CLIPlatforms})
	assets := releaseAssets(t, sh)
	made := []string{"SHA256SUMS.sigstore.json", "sds-injector.spdx.json", "sds-agent.spdx.json"}
	for _, f := range full {
		if strings.HasSuffix(f, "/") {
			continue
		}
		if !slices.ContainsFunc(assets, func(g string) bool { ok, _ := path.Match(g, f); return ok }) {
			t.Errorf("%s is built but not uploaded (assets %q)", f, assets)
		}
	}
	for _, g := range assets {
		n := 0
		for _, f := range append(slices.Clone(full), made...) {
			if ok, _ := path.Match(g, f); ok {
				n++
			}
		}
		if n == 0 {
			t.Errorf("asset %q matches nothing the dry run or the workflow makes", g)
		}
	}
	var bins int
	for _, f := range full {
		if strings.HasPrefix(f, "bin/") {
			bins++
		}
	}
	if bins != 4 {
		t.Errorf("%d CLI binaries planned, want linux/darwin x amd64/arm64", bins)
	}
}

func imageNames() []string {
	var n []string
	for _, ri := range imagebuild.ReleaseImages {
		n = append(n, ri.Name)
	}
	return n
}

// releaseAssets are the file arguments of `gh release create`.
func releaseAssets(t *testing.T, sh string) []string {
	t.Helper()
	i := strings.Index(sh, "gh release create")
	if i < 0 {
		t.Fatal("no gh release create")
	}
	cmd := sh[i:]
	if j := strings.Index(cmd, "\n"); j >= 0 {
		// join continuation lines
		var b strings.Builder
		for _, l := range strings.Split(cmd, "\n") {
			b.WriteString(strings.TrimSuffix(strings.TrimSpace(l), "\\") + " ")
			if !strings.HasSuffix(strings.TrimSpace(l), "\\") {
				break
			}
		}
		cmd = b.String()
	}
	f := strings.Fields(cmd)[3:] // after gh release create "$TAG"
	var out []string
	for k := 1; k < len(f); k++ {
		switch {
		case f[k] == "--title" || f[k] == "--notes" || f[k] == "--target":
			k++
		case strings.HasPrefix(f[k], "--"):
		default:
			out = append(out, f[k])
		}
	}
	if len(out) == 0 {
		t.Fatalf("no assets in %q", cmd)
	}
	return out
}

func goContainerregistryVersion(t *testing.T, mod string) string {
	b, err := os.ReadFile(filepath.Join(mod, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`github.com/google/go-containerregistry (v\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod does not require go-containerregistry")
	}
	return string(m[1])
}
