package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DefaultPath is the PATH of the images: the probes and hooks the injector
// writes exec the agent by name (`sds-agent probe`), so the binary's
// directory must be on it. The value is the conventional one (as in
// distroless), so that a Dockerfile build sets the same.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// NonRoot is the user the release images run as (uid:gid), the usual
// "nonroot" of distroless images. Pods may override it (the injector runs
// the agent as 1337:1337).
const NonRoot = "65532:65532"

// Spec describes an image of one static binary.
type Spec struct {
	// Binary is the path of the binary on disk. It must be a static ELF
	// executable (no program interpreter, no needed shared libraries) for
	// Platform's architecture.
	Binary string
	// Path is where the binary is in the image, absolute, e.g.
	// /usr/local/bin/sds-agent. The file is mode 0555, owned by 0:0; its
	// parent directories are 0755, owned by 0:0.
	Path string
	// Entrypoint defaults to []string{Path}.
	Entrypoint []string
	Cmd        []string
	// Env defaults to PATH=DefaultPath.
	Env []string
	// User is a numeric "uid:gid" (there is no /etc/passwd to resolve a
	// name). Required, and it must not be root.
	User string
	// Labels go into the image config (org.opencontainers.image.*).
	Labels map[string]string
	// Platform is the OS and architecture (and variant) of the binary.
	Platform v1.Platform
	// Created is the image's creation time and the time of every file in
	// the layer: the commit time (or SOURCE_DATE_EPOCH) for reproducible
	// output. Required.
	Created time.Time
	// Annotations go into the image manifest (optional).
	Annotations map[string]string
}

// Build returns the image of one static binary. Nothing is written to disk;
// the image's layer is held in memory.
func Build(s Spec) (v1.Image, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(s.Binary)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: reading the binary: %w", err)
	}
	if err := CheckStatic(bytes.NewReader(bin), s.Platform.Architecture); err != nil {
		return nil, fmt.Errorf("imagebuild: %s: %w", s.Binary, err)
	}
	created := s.Created.UTC().Truncate(time.Second)
	layerTar, err := layerTar(s.Path, bin, created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.DefaultCompression), tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: layer: %w", err)
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "imagebuild: " + s.Path,
			Comment:   "static binary, no base image",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture = s.Platform.Architecture
	cf.OS = s.Platform.OS
	cf.Variant = s.Platform.Variant
	cf.OSVersion = s.Platform.OSVersion
	cf.Created = v1.Time{Time: created}
	cf.Author = ""
	cf.Config = v1.Config{
		User:       s.User,
		Entrypoint: s.entrypoint(),
		Cmd:        slices.Clone(s.Cmd),
		Env:        s.env(),
		WorkingDir: "/",
		Labels:     cloneMap(s.Labels),
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	if len(s.Annotations) > 0 {
		img = mutate.Annotations(img, cloneMap(s.Annotations)).(v1.Image)
	}
	return img, nil
}

func (s Spec) entrypoint() []string {
	if len(s.Entrypoint) > 0 {
		return slices.Clone(s.Entrypoint)
	}
	return []string{s.Path}
}

func (s Spec) env() []string {
	if len(s.Env) > 0 {
		return slices.Clone(s.Env)
	}
	return []string{"PATH=" + DefaultPath}
}

func (s Spec) validate() error {
	var errs []error
	if s.Binary == "" {
		errs = append(errs, errors.New("spec.Binary is empty"))
	}
	if !path.IsAbs(s.Path) || path.Clean(s.Path) != s.Path || s.Path == "/" {
		errs = append(errs, fmt.Errorf("spec.Path %q must be an absolute, clean file path", s.Path))
	}
	if err := checkUser(s.User); err != nil {
		errs = append(errs, err)
	}
	if s.Platform.OS == "" || s.Platform.Architecture == "" {
		errs = append(errs, fmt.Errorf("spec.Platform %q needs an OS and an architecture", s.Platform.String()))
	}
	if s.Created.IsZero() {
		errs = append(errs, errors.New("spec.Created is zero (use the commit time or SOURCE_DATE_EPOCH)"))
	} else if s.Created.Before(time.Unix(0, 0)) {
		errs = append(errs, fmt.Errorf("spec.Created %s is before 1970", s.Created))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("imagebuild: invalid spec: %w", err)
	}
	return nil
}

// checkUser accepts a numeric "uid" or "uid:gid", neither 0.
func checkUser(u string) error {
	if u == "" {
		return errors.New("spec.User is empty (a numeric non-root uid:gid is required)")
	}
	parts := strings.Split(u, ":")
	if len(parts) > 2 {
		return fmt.Errorf("spec.User %q is not uid or uid:gid", u)
	}
	for _, p := range parts {
		var n uint64
		if _, err := fmt.Sscan(p, &n); err != nil || fmt.Sprint(n) != p {
			return fmt.Errorf("spec.User %q is not numeric (no /etc/passwd in the image to resolve names)", u)
		}
		if n == 0 {
			return fmt.Errorf("spec.User %q is root", u)
		}
	}
	return nil
}

// layerTar is the layer: the binary's parent directories, then the binary,
// in lexical order, with fixed owners, modes and times.
func layerTar(file string, content []byte, mtime time.Time) ([]byte, error) {
	var dirs []string
	for d := path.Dir(file); d != "/"; d = path.Dir(d) {
		dirs = append(dirs, strings.TrimPrefix(d, "/")+"/")
	}
	slices.Sort(dirs) // parents sort before their children
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(name string, mode int64, typ byte, size int64) *tar.Header {
		return &tar.Header{
			Typeflag: typ, Name: name, Mode: mode, Size: size,
			Uid: 0, Gid: 0, Uname: "", Gname: "",
			ModTime: mtime, Format: tar.FormatPAX,
			// PAX with only these fields writes no extended records for
			// times within the USTAR range; AccessTime/ChangeTime stay zero
			// so nothing varies between builds.
		}
	}
	for _, d := range dirs {
		if err := tw.WriteHeader(hdr(d, 0o755, tar.TypeDir, 0)); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(hdr(strings.TrimPrefix(file, "/"), 0o555, tar.TypeReg, int64(len(content)))); err != nil {
		return nil, err
	}
	if _, err := tw.Write(content); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// elfMachines maps OCI architectures to ELF machines.
var elfMachines = map[string]elf.Machine{
	"amd64":   elf.EM_X86_64,
	"arm64":   elf.EM_AARCH64,
	"arm":     elf.EM_ARM,
	"386":     elf.EM_386,
	"ppc64le": elf.EM_PPC64,
	"s390x":   elf.EM_S390,
	"riscv64": elf.EM_RISCV,
}

// CheckStatic returns an error unless r is an ELF executable for arch with
// no program interpreter (PT_INTERP) and no needed shared library
// (DT_NEEDED): a binary that runs on an image with nothing else in it.
func CheckStatic(r io.ReaderAt, arch string) error {
	f, err := elf.NewFile(r)
	if err != nil {
		return fmt.Errorf("not an ELF binary: %w", err)
	}
	defer f.Close()
	want, ok := elfMachines[arch]
	if !ok {
		return fmt.Errorf("architecture %q is not supported", arch)
	}
	if f.Machine != want {
		return fmt.Errorf("ELF machine is %s, want %s for %s", f.Machine, want, arch)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("ELF type %s is not an executable", f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked: it has a program interpreter (PT_INTERP); build with CGO_ENABLED=0")
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("reading DT_NEEDED: %w", err)
	}
	if len(libs) > 0 {
		return fmt.Errorf("dynamically linked: needs %s (DT_NEEDED)", strings.Join(libs, ", "))
	}
	return nil
}

// Index is a multi-platform OCI image index of imgs, each entry carrying
// its image's platform (from its config). Two images of one platform are
// refused.
func Index(annotations map[string]string, imgs ...v1.Image) (v1.ImageIndex, error) {
	if len(imgs) == 0 {
		return nil, errors.New("imagebuild: an index needs at least one image")
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	seen := map[string]bool{}
	var adds []mutate.IndexAddendum
	for _, img := range imgs {
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, fmt.Errorf("imagebuild: %w", err)
		}
		p := v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant, OSVersion: cf.OSVersion}
		if seen[p.String()] {
			return nil, fmt.Errorf("imagebuild: two images for platform %s", p.String())
		}
		seen[p.String()] = true
		mt, err := img.MediaType()
		if err != nil {
			return nil, fmt.Errorf("imagebuild: %w", err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{MediaType: mt, Platform: &p}})
	}
	idx = mutate.AppendManifests(idx, adds...)
	if len(annotations) > 0 {
		idx = mutate.Annotations(idx, cloneMap(annotations)).(v1.ImageIndex)
	}
	return idx, nil
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
