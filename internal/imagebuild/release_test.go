package imagebuild

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestReleaseImages builds the two release images for both release
// platforms, as `make images` does, and inspects every part of them; then
// builds them again elsewhere and compares digests and bytes.
func TestReleaseImages(t *testing.T) {
	ctx := context.Background()
	mod := moduleDir(t)
	const version, tag, registry, revision = "v0.0.0-imagetest", "imagetest", "registry.example.test/sds", "0123456789abcdef0123456789abcdef01234567"
	opts := ReleaseOptions{
		ModuleDir: mod, OutDir: filepath.Join(t.TempDir(), "images"),
		Version: version, Tag: tag, Registry: registry, Platforms: ReleasePlatforms,
		Revision: revision, Created: testCreated,
	}
	start := time.Now()
	res, err := BuildReleaseImages(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first build (both images, %d platforms): %s", len(opts.Platforms), time.Since(start).Round(time.Millisecond))
	if len(res) != len(ReleaseImages) {
		t.Fatalf("%d results", len(res))
	}
	var summary strings.Builder
	for i, r := range res {
		ri := ReleaseImages[i]
		t.Run(ri.Name, func(t *testing.T) {
			checkReleaseImage(t, r, ri, registry+"/"+ri.Name+":"+tag, version, revision)
		})
		fmt.Fprintf(&summary, "%s %s\n", r.Ref, r.Digest)
		for _, p := range ReleasePlatforms {
			fmt.Fprintf(&summary, "  %s %s\n", p.String(), r.Manifests[p.String()])
		}
	}
	got, err := os.ReadFile(filepath.Join(opts.OutDir, "images.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != summary.String() {
		t.Errorf("images.txt:\n%s\nwant:\n%s", got, summary.String())
	}
	if _, err := os.Stat(filepath.Join(opts.OutDir, ".work")); !os.IsNotExist(err) {
		t.Errorf("the build's work directory is left behind: %v", err)
	}

	// Reproducible: a second build, into another directory, from a copy of
	// the sources at another path (-trimpath), gives the same bytes.
	copyDir := filepath.Join(t.TempDir(), "src", "elsewhere")
	copyTracked(t, mod, copyDir)
	opts2 := opts
	opts2.ModuleDir = copyDir
	opts2.OutDir = filepath.Join(t.TempDir(), "again")
	start = time.Now()
	res2, err := BuildReleaseImages(ctx, opts2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second build from %s: %s", copyDir, time.Since(start).Round(time.Millisecond))
	for i := range res {
		if res[i].Digest != res2[i].Digest {
			t.Errorf("%s: index digest %s, then %s", res[i].Ref, res[i].Digest, res2[i].Digest)
		}
		for p, d := range res[i].Manifests {
			if res2[i].Manifests[p] != d {
				t.Errorf("%s %s: manifest %s, then %s", res[i].Ref, p, d, res2[i].Manifests[p])
			}
		}
		a, _ := os.ReadFile(res[i].Archive)
		b, _ := os.ReadFile(res2[i].Archive)
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Errorf("%s: the archives differ (%d and %d bytes)", res[i].Ref, len(a), len(b))
		}
	}
	// (TestBuildIsReproducible shows that a different input changes the
	// digest, so equal digests here are not equal constants.)
}

func checkReleaseImage(t *testing.T, r ReleaseResult, ri ReleaseImage, wantRef, version, revision string) {
	if r.Ref != wantRef {
		t.Errorf("ref %q, want %q", r.Ref, wantRef)
	}
	im := indexJSON(t, r.Layout)
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != r.Digest || im.Manifests[0].MediaType != types.OCIImageIndex {
		t.Fatalf("layout index.json %+v, want one image index %s", im.Manifests, r.Digest)
	}
	if a := im.Manifests[0].Annotations; a[AnnotationContainerdName] != wantRef || a[AnnotationRefName] != strings.SplitN(wantRef, ":", 2)[1] {
		t.Errorf("layout annotations %v", a)
	}
	p, err := layout.FromPath(r.Layout)
	if err != nil {
		t.Fatal(err)
	}
	root, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	idx, err := root.ImageIndex(r.Digest)
	if err != nil {
		t.Fatal(err)
	}
	idxm, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if idxm.MediaType != types.OCIImageIndex {
		t.Errorf("index media type %q", idxm.MediaType)
	}
	if idxm.Annotations["org.opencontainers.image.version"] != version || idxm.Annotations["org.opencontainers.image.revision"] != revision {
		t.Errorf("index annotations %v", idxm.Annotations)
	}
	var plats []string
	for _, d := range idxm.Manifests {
		plats = append(plats, d.Platform.String())
	}
	if !slices.Equal(plats, []string{"linux/amd64", "linux/arm64"}) {
		t.Fatalf("index platforms %q, want linux/amd64 and linux/arm64", plats)
	}
	for _, d := range idxm.Manifests {
		t.Run(d.Platform.Architecture, func(t *testing.T) {
			if d.MediaType != types.OCIManifestSchema1 {
				t.Errorf("manifest media type %q", d.MediaType)
			}
			img, err := idx.Image(d.Digest)
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.OS != d.Platform.OS || cf.Architecture != d.Platform.Architecture {
				t.Errorf("config platform %s/%s under %s", cf.OS, cf.Architecture, d.Platform)
			}
			if cf.Config.User != "65532:65532" {
				t.Errorf("user %q", cf.Config.User)
			}
			if !slices.Equal(cf.Config.Entrypoint, []string{ri.Path}) || len(cf.Config.Cmd) != 0 {
				t.Errorf("entrypoint %q cmd %q", cf.Config.Entrypoint, cf.Config.Cmd)
			}
			if !slices.Equal(cf.Config.Env, []string{"PATH=" + DefaultPath}) {
				t.Errorf("env %q", cf.Config.Env)
			}
			wantLabels := ri.Labels(version, revision, testCreated)
			if fmt.Sprint(cf.Config.Labels) != fmt.Sprint(wantLabels) {
				t.Errorf("labels\n got %v\nwant %v", cf.Config.Labels, wantLabels)
			}
			for _, k := range []string{"version", "revision", "source", "title"} {
				if cf.Config.Labels["org.opencontainers.image."+k] == "" {
					t.Errorf("label org.opencontainers.image.%s is empty", k)
				}
			}
			if !cf.Created.Equal(testCreated) {
				t.Errorf("created %v", cf.Created.Time)
			}
			entries, contents := layerEntries(t, img)
			bin := contents[strings.TrimPrefix(ri.Path, "/")]
			if bin == nil {
				t.Fatalf("no %s in the layer: %+v", ri.Path, entries)
			}
			if want := wantEntries(ri.Path, bin, testCreated); !slices.Equal(entries, want) {
				t.Errorf("layer entries\n got %+v\nwant %+v", entries, want)
			}
			if err := CheckStatic(bytes.NewReader(bin), d.Platform.Architecture); err != nil {
				t.Errorf("binary: %v", err)
			}
			// Built with the image's tags (sds-injector: nocheck, so the
			// webhook's binary lacks check and its dependencies).
			info, err := buildinfo.Read(bytes.NewReader(bin))
			if err != nil {
				t.Fatalf("binary: no Go build information: %v", err)
			}
			tags := ""
			for _, s := range info.Settings {
				if s.Key == "-tags" {
					tags = s.Value
				}
			}
			if want := strings.Join(ri.Tags, ","); tags != want {
				t.Errorf("binary built with tags %q, want %q", tags, want)
			}
			if d.Platform.Architecture != "amd64" {
				return // cannot run here; its ELF header was checked above
			}
			exe := filepath.Join(t.TempDir(), ri.Name)
			if err := os.WriteFile(exe, bin, 0o755); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(exe, "version").CombinedOutput()
			if err != nil {
				t.Fatalf("%s version: %v\n%s", ri.Name, err, out)
			}
			if first := strings.Fields(string(out)); !slices.Contains(first, version) {
				t.Errorf("%s version printed %q, want the stamped %s", ri.Name, out, version)
			}
			if slices.Contains(ri.Tags, "nocheck") {
				out, err := exec.Command(exe, "check").CombinedOutput()
				var exit *exec.ExitError
				if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "run `sds-injector check` from the CLI") {
					t.Errorf("%s check in the image: want exit 1 pointing at the CLI, got %v:\n%s", ri.Name, err, out)
				}
			}
		})
	}
	// The archive is the layout, byte for byte, plus nothing.
	a, err := os.ReadFile(r.Archive)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := TarDir(&want, r.Layout); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, want.Bytes()) {
		t.Errorf("%s is not the tar of %s", r.Archive, r.Layout)
	}
}

// copyTracked copies the files git tracks in src (as they are in the work
// tree) to dst.
func copyTracked(t *testing.T, src, dst string) {
	t.Helper()
	out, err := exec.Command("git", "-C", src, "ls-files", "-z", "--cached").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	n := 0
	for _, f := range strings.Split(string(out), "\x00") {
		if f == "" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, f))
		if os.IsNotExist(err) {
			continue // deleted in the work tree
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n < 10 {
		t.Fatalf("copied only %d files from %s", n, src)
	}
}

func TestReleaseImagesMatchTheChartAndTheCLI(t *testing.T) {
	mod := moduleDir(t)
	values, err := os.ReadFile(filepath.Join(mod, "deploy", "helm", "sds-injector", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := os.ReadFile(filepath.Join(mod, "cmd", "sds-injector", "images.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ri := range ReleaseImages {
		key := map[string]string{"sds-injector": "image", "sds-agent": "agentImage"}[ri.Name]
		if !bytes.Contains(values, []byte("\n"+key+":\n  repository: "+ri.Repository+"\n")) {
			t.Errorf("values.yaml %s.repository is not %s", key, ri.Repository)
		}
		if !bytes.Contains(cli, []byte(`"`+ri.Repository+`"`)) {
			t.Errorf("cmd/sds-injector/images.go does not name %s", ri.Repository)
		}
		if _, err := os.Stat(filepath.Join(mod, ri.Package, "main.go")); err != nil {
			t.Errorf("%s: %v", ri.Package, err)
		}
		if path := filepath.Base(ri.Path); path != ri.Name || !strings.HasSuffix(ri.Repository, "/"+ri.Name) {
			t.Errorf("%s: binary %s, repository %s", ri.Name, ri.Path, ri.Repository)
		}
	}
}
