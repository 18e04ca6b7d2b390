package imagebuild

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
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

// FilesSpec describes a single-layer image of files from this machine: the
// generic builder behind the test images (pause, gateway-checker, proxyv2
// with a stand-in Envoy), for images that are not release images. Build
// stays the release images' builder (one binary, non-root, fixed layout);
// BuildFiles allows several files, data files and any configured user.
type FilesSpec struct {
	// Files maps an absolute, clean path in the image to a file on this
	// machine. Files listed in Executable get mode 0555 and must be static
	// ELF executables for Platform's architecture; the others get 0444.
	Files      map[string]string
	Executable []string
	// Dirs are extra (empty) directories, mode 0755.
	Dirs []string
	// Config is the image configuration (Entrypoint, Cmd, Env, User,
	// WorkingDir, Labels), taken as given.
	Config v1.Config
	// Platform is the OS and architecture of the executables.
	Platform v1.Platform
	// Created is the creation time and the time of every entry in the
	// layer. Required (reproducible output).
	Created time.Time
}

// BuildFiles returns the image of s, held in memory. The same spec and
// file contents give the same image (sorted entries, owner 0:0, fixed
// modes and times).
func BuildFiles(s FilesSpec) (v1.Image, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	created := s.Created.UTC().Truncate(time.Second)
	layerBytes, err := s.layer(created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestSpeed), tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("imagebuild: layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: created}, CreatedBy: "imagebuild: files", Comment: "files from this machine, no base image"}})
	if err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Variant = s.Platform.Architecture, s.Platform.OS, s.Platform.Variant
	cf.Created = v1.Time{Time: created}
	cf.Config = *s.Config.DeepCopy()
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("imagebuild: %w", err)
	}
	return img, nil
}

func (s FilesSpec) validate() error {
	var errs []error
	if len(s.Files) == 0 {
		errs = append(errs, errors.New("spec.Files is empty"))
	}
	for p := range s.Files {
		if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
			errs = append(errs, fmt.Errorf("image path %q must be an absolute, clean file path", p))
		}
	}
	for _, p := range s.Executable {
		if _, ok := s.Files[p]; !ok {
			errs = append(errs, fmt.Errorf("executable %q is not among spec.Files", p))
		}
	}
	for _, d := range s.Dirs {
		if !path.IsAbs(d) {
			errs = append(errs, fmt.Errorf("directory %q is not absolute", d))
		}
	}
	if s.Platform.OS == "" || s.Platform.Architecture == "" {
		errs = append(errs, fmt.Errorf("spec.Platform %q needs an OS and an architecture", s.Platform.String()))
	}
	if s.Created.IsZero() || s.Created.Before(time.Unix(0, 0)) {
		errs = append(errs, errors.New("spec.Created must be set, at or after 1970"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("imagebuild: invalid files spec: %w", err)
	}
	return nil
}

func (s FilesSpec) layer(mtime time.Time) ([]byte, error) {
	dirs := map[string]bool{}
	addParents := func(p string) {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for p := range s.Files {
		addParents(p)
	}
	for _, d := range s.Dirs {
		if d = path.Clean(d); d != "/" {
			dirs[d] = true
			addParents(d)
		}
	}
	hdr := func(name string, mode int64, typ byte, size int64) *tar.Header {
		return &tar.Header{Typeflag: typ, Name: name, Mode: mode, Size: size, ModTime: mtime, Format: tar.FormatPAX}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	slices.Sort(dirList) // parents sort before their children
	for _, d := range dirList {
		if err := tw.WriteHeader(hdr(strings.TrimPrefix(d, "/")+"/", 0o755, tar.TypeDir, 0)); err != nil {
			return nil, err
		}
	}
	files := make([]string, 0, len(s.Files))
	for p := range s.Files {
		files = append(files, p)
	}
	slices.Sort(files)
	for _, p := range files {
		data, err := os.ReadFile(s.Files[p])
		if err != nil {
			return nil, fmt.Errorf("imagebuild: %w", err)
		}
		mode := int64(0o444)
		if slices.Contains(s.Executable, p) {
			if err := CheckStatic(bytes.NewReader(data), s.Platform.Architecture); err != nil {
				return nil, fmt.Errorf("imagebuild: %s (%s): %w", p, s.Files[p], err)
			}
			mode = 0o555
		}
		if err := tw.WriteHeader(hdr(strings.TrimPrefix(p, "/"), mode, tar.TypeReg, int64(len(data)))); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
