package imagebuild

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var testCreated = time.Date(2026, 12, 1, 10, 20, 30, 0, time.UTC)

// moduleDir is the repository root (go env GOMOD's directory).
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
	staticOnce sync.Once
	staticBin  string
	staticErr  error
)

// staticBinary is testdata/static built for linux/amd64 with GoBuild.
func staticBinary(t *testing.T) string {
	t.Helper()
	staticOnce.Do(func() {
		dir, err := os.MkdirTemp("", "imagebuild-static-")
		if err != nil {
			staticErr = err
			return
		}
		staticBin = filepath.Join(dir, "static")
		staticErr = GoBuild(context.Background(), GoBinary{
			Dir: moduleDir(t), Package: "./internal/imagebuild/testdata/static",
			Platform: v1.Platform{OS: "linux", Architecture: "amd64"}, Version: "v9.9.9", Output: staticBin,
		})
	})
	if staticErr != nil {
		t.Fatal(staticErr)
	}
	return staticBin
}

func testSpec(t *testing.T) Spec {
	return Spec{
		Binary:   staticBinary(t),
		Path:     "/usr/local/bin/static",
		User:     NonRoot,
		Labels:   map[string]string{"org.opencontainers.image.title": "static"},
		Platform: v1.Platform{OS: "linux", Architecture: "amd64"},
		Created:  testCreated,
	}
}

// layerEntry is one tar entry of a layer, as the tests compare it.
type layerEntry struct {
	Name     string
	Type     byte
	Mode     int64
	Uid, Gid int
	Uname    string
	Gname    string
	ModTime  time.Time
	Size     int64
	SHA256   string
}

func layerEntries(t *testing.T, img v1.Image) ([]layerEntry, map[string][]byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	mt, err := layers[0].MediaType()
	if err != nil || mt != types.OCILayer {
		t.Errorf("layer media type %q (%v), want %q", mt, err, types.OCILayer)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var entries []layerEntry
	contents := map[string][]byte{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		e := layerEntry{Name: h.Name, Type: h.Typeflag, Mode: h.Mode, Uid: h.Uid, Gid: h.Gid, Uname: h.Uname, Gname: h.Gname, ModTime: h.ModTime.UTC(), Size: h.Size}
		if h.Typeflag == tar.TypeReg {
			e.SHA256 = hex.EncodeToString(sum[:])
			contents[h.Name] = b
		}
		if !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() || len(h.PAXRecords) > 0 {
			t.Errorf("entry %s carries extra metadata: atime %v ctime %v pax %v", h.Name, h.AccessTime, h.ChangeTime, h.PAXRecords)
		}
		entries = append(entries, e)
	}
	return entries, contents
}

// wantEntries are the exact entries of an image of binary at file.
func wantEntries(file string, binary []byte, mtime time.Time) []layerEntry {
	sum := sha256.Sum256(binary)
	var out []layerEntry
	parts := strings.Split(strings.TrimPrefix(file, "/"), "/")
	for i := 1; i < len(parts); i++ {
		out = append(out, layerEntry{Name: strings.Join(parts[:i], "/") + "/", Type: tar.TypeDir, Mode: 0o755, ModTime: mtime})
	}
	return append(out, layerEntry{Name: strings.Join(parts, "/"), Type: tar.TypeReg, Mode: 0o555, ModTime: mtime, Size: int64(len(binary)), SHA256: hex.EncodeToString(sum[:])})
}

func TestBuildImage(t *testing.T) {
	s := testSpec(t)
	img, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	mt, _ := img.MediaType()
	if mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %q", mt)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("config media type %q", m.Config.MediaType)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
	if !cf.Created.Equal(testCreated) {
		t.Errorf("created %v, want %v", cf.Created.Time, testCreated)
	}
	if cf.Config.User != "65532:65532" {
		t.Errorf("user %q", cf.Config.User)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/static"}) || len(cf.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q", cf.Config.Entrypoint, cf.Config.Cmd)
	}
	if !slices.Equal(cf.Config.Env, []string{"PATH=" + DefaultPath}) {
		t.Errorf("env %q", cf.Config.Env)
	}
	if cf.Config.Labels["org.opencontainers.image.title"] != "static" || len(cf.Config.Labels) != 1 {
		t.Errorf("labels %v", cf.Config.Labels)
	}
	if len(cf.History) != 1 || !cf.History[0].Created.Equal(testCreated) {
		t.Errorf("history %+v", cf.History)
	}
	bin, err := os.ReadFile(s.Binary)
	if err != nil {
		t.Fatal(err)
	}
	got, contents := layerEntries(t, img)
	want := wantEntries("/usr/local/bin/static", bin, testCreated)
	if !slices.Equal(got, want) {
		t.Errorf("layer entries\n got %+v\nwant %+v", got, want)
	}
	// The file in the layer runs (this host is linux/amd64).
	exe := filepath.Join(t.TempDir(), "static")
	if err := os.WriteFile(exe, contents["usr/local/bin/static"], 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(exe).Output()
	if err != nil || strings.TrimSpace(string(out)) != "static v9.9.9" {
		t.Errorf("running the layer's binary: %q, %v (want the stamped version)", out, err)
	}
}

func TestBuildIsReproducible(t *testing.T) {
	s := testSpec(t)
	a, err := Build(s)
	if err != nil {
		t.Fatal(err)
	}
	// The same binary from another path, with another mtime and mode on
	// disk: the image does not change.
	other := filepath.Join(t.TempDir(), "copy")
	b0, err := os.ReadFile(s.Binary)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, b0, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(other, time.Now(), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	s2 := s
	s2.Binary = other
	b, err := Build(s2)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("two builds: %s and %s", da, db)
	}
	// A different Created time changes the digest (the time is in the
	// image, so the check above is not vacuous).
	s3 := s
	s3.Created = testCreated.Add(time.Second)
	c, err := Build(s3)
	if err != nil {
		t.Fatal(err)
	}
	if dc, _ := c.Digest(); dc == da {
		t.Errorf("another Created time gave the same digest %s", dc)
	}
}

func TestBuildRefusesBadSpecs(t *testing.T) {
	good := testSpec(t)
	dynamic := "/bin/true"
	if _, err := os.Stat(dynamic); err != nil {
		t.Fatalf("this test needs a dynamically linked binary at %s (Debian's coreutils): %v", dynamic, err)
	}
	cases := map[string]struct {
		mod  func(*Spec)
		want string
	}{
		"root user":        {func(s *Spec) { s.User = "0:0" }, "is root"},
		"root group":       {func(s *Spec) { s.User = "65532:0" }, "is root"},
		"named user":       {func(s *Spec) { s.User = "nonroot" }, "not numeric"},
		"no user":          {func(s *Spec) { s.User = "" }, "User is empty"},
		"relative path":    {func(s *Spec) { s.Path = "usr/bin/x" }, "absolute"},
		"unclean path":     {func(s *Spec) { s.Path = "/usr//bin/x" }, "clean"},
		"no time":          {func(s *Spec) { s.Created = time.Time{} }, "Created is zero"},
		"no platform":      {func(s *Spec) { s.Platform = v1.Platform{} }, "needs an OS"},
		"wrong arch":       {func(s *Spec) { s.Platform.Architecture = "arm64" }, "ELF machine is EM_X86_64, want EM_AARCH64"},
		"dynamic binary":   {func(s *Spec) { s.Binary = dynamic }, "dynamically linked"},
		"not ELF":          {func(s *Spec) { s.Binary = "imagebuild_test.go" }, "not an ELF binary"},
		"missing binary":   {func(s *Spec) { s.Binary = "/nonexistent/bin" }, "reading the binary"},
		"unknown arch":     {func(s *Spec) { s.Platform.Architecture = "mips" }, "not supported"},
		"two errors shown": {func(s *Spec) { s.User = "0"; s.Path = "x" }, "absolute"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			s := good
			c.mod(&s)
			img, err := Build(s)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Build: %v, want an error containing %q", err, c.want)
			}
			if img != nil {
				t.Errorf("an image came back with the error")
			}
		})
	}
}

func TestIndexRefusesDuplicatePlatforms(t *testing.T) {
	img, err := Build(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Index(nil, img, img); err == nil || !strings.Contains(err.Error(), "two images for platform linux/amd64") {
		t.Fatalf("Index: %v", err)
	}
	if _, err := Index(nil); err == nil {
		t.Fatal("an empty index was accepted")
	}
}

// indexJSON reads a layout's index.json.
func indexJSON(t *testing.T, dir string) v1.IndexManifest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var im v1.IndexManifest
	if err := json.Unmarshal(b, &im); err != nil {
		t.Fatal(err)
	}
	return im
}

func TestWriteLayoutAndArchive(t *testing.T) {
	img, err := Build(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := Index(map[string]string{"org.opencontainers.image.title": "static"}, img)
	if err != nil {
		t.Fatal(err)
	}
	ref := "example.test/team/static:v1.2.3"
	dir := filepath.Join(t.TempDir(), "layout")
	if err := WriteLayout(dir, ref, idx); err != nil {
		t.Fatal(err)
	}
	im := indexJSON(t, dir)
	wantDigest, _ := idx.Digest()
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != wantDigest || im.Manifests[0].MediaType != types.OCIImageIndex {
		t.Fatalf("index.json %+v, want one index %s", im.Manifests, wantDigest)
	}
	if a := im.Manifests[0].Annotations; a[AnnotationContainerdName] != ref || a[AnnotationRefName] != "v1.2.3" {
		t.Errorf("annotations %v", a)
	}
	// Read back through the library: the layout is complete and valid.
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	root, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	inner, err := root.ImageIndex(wantDigest)
	if err != nil {
		t.Fatal(err)
	}
	imgDigest, _ := img.Digest()
	back, err := inner.Image(imgDigest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := back.Layers(); err != nil {
		t.Fatal(err)
	}
	if err := WriteLayout(dir, ref, idx); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("writing into a non-empty layout: %v", err)
	}
	for _, bad := range []string{"static", "example.test/static", "Example.test/UPPER:v1", "example.test/x@sha256:" + strings.Repeat("0", 64)} {
		if err := WriteLayout(filepath.Join(t.TempDir(), "l"), bad, idx); err == nil {
			t.Errorf("reference %q accepted", bad)
		}
	}

	// The archive: the same layout in a reproducible tar.
	tarA := filepath.Join(t.TempDir(), "a.tar")
	tarB := filepath.Join(t.TempDir(), "b.tar")
	if err := WriteArchive(tarA, ref, idx); err != nil {
		t.Fatal(err)
	}
	if err := WriteArchive(tarB, ref, idx); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(tarA)
	b, _ := os.ReadFile(tarB)
	if !bytes.Equal(a, b) {
		t.Error("two archives of one index differ")
	}
	entries := tarNames(t, a)
	want := []string{"blobs/", "blobs/sha256/"}
	blobs, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	for _, e := range blobs {
		want = append(want, "blobs/sha256/"+e.Name())
	}
	want = append(want, "index.json", "oci-layout")
	if !slices.Equal(entries, want) {
		t.Errorf("archive entries %q, want %q", entries, want)
	}
	// Single images can be written too (the node harness's test images).
	if err := WriteArchive(filepath.Join(t.TempDir(), "img.tar"), ref, img); err != nil {
		t.Error(err)
	}
	if err := WriteArchive(filepath.Join(t.TempDir(), "x.tar"), ref, "not an image"); err == nil {
		t.Error("a string was written as an image")
	}
}

func tarNames(t *testing.T, b []byte) []string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: owner %d:%d time %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		names = append(names, h.Name)
	}
}

func TestCheckStaticOnRealELF(t *testing.T) {
	f, err := os.Open(staticBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := CheckStatic(f, "amd64"); err != nil {
		t.Fatal(err)
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if ef.Machine != elf.EM_X86_64 {
		t.Fatalf("machine %s", ef.Machine)
	}
}

func TestSourceDate(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	got, err := SourceDate(context.Background(), t.TempDir())
	if err != nil || !got.Equal(time.Unix(1700000000, 0)) {
		t.Fatalf("SourceDate = %v, %v", got, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if _, err := SourceDate(context.Background(), t.TempDir()); err == nil {
		t.Fatal("SOURCE_DATE_EPOCH=yesterday accepted")
	}
}

func TestSourceDateFromGit(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "") // restores the caller's value at the end
	os.Unsetenv("SOURCE_DATE_EPOCH")
	if v, ok := os.LookupEnv("SOURCE_DATE_EPOCH"); ok {
		t.Fatalf("SOURCE_DATE_EPOCH=%s is still set", v)
	}
	dir := moduleDir(t)
	got, err := SourceDate(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("git", "-C", dir, "log", "-1", "--format=%cI").Output()
	if err != nil {
		t.Fatal(err)
	}
	want, err := time.Parse(time.RFC3339, strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(want) {
		t.Errorf("SourceDate = %v, want the commit time %v", got, want)
	}
	if _, err := SourceDate(context.Background(), t.TempDir()); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("outside a checkout: %v", err)
	}
}
