package node

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image describes a test image written locally (no registry, no Docker)
// from files on this machine, typically static binaries. It is a minimal
// test-image helper; the release images are built elsewhere.
type Image struct {
	// Ref is the image reference pods name, e.g. "sds-injector.test/pause:1".
	// Use a tag other than latest: the kubelet never pulls such an image
	// with imagePullPolicy IfNotPresent once it is imported.
	Ref string `json:"ref"`
	// Files maps a path in the image to a file on this machine (copied
	// with mode 0755 if Executable lists it, else 0644).
	Files map[string]string `json:"files"`
	// Executable lists the image paths that get mode 0755.
	Executable []string `json:"executable,omitempty"`
	// Dirs are extra directories (mode 0755) to create in the image.
	Dirs []string `json:"dirs,omitempty"`
	// Config is the image configuration (Entrypoint, Cmd, Env, User, WorkingDir).
	Config v1.Config `json:"config"`
	// Tar is where WriteImage wrote the image (a docker-archive tar that
	// `ctr images import` reads).
	Tar string `json:"tar,omitempty"`
}

// WriteImage writes img as an image tarball at file with a single layer
// holding img.Files and img.Dirs, and records the path in img.Tar.
// Timestamps are fixed, so the same inputs give the same image.
func WriteImage(img *Image, file string) error {
	ref, err := name.NewTag(img.Ref)
	if err != nil {
		return fmt.Errorf("image %q: %w", img.Ref, err)
	}
	layerBytes, err := layerTar(img)
	if err != nil {
		return fmt.Errorf("image %s: %w", img.Ref, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return err
	}
	i, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := i.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config = img.Config
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	if i, err = mutate.ConfigFile(i, cf); err != nil {
		return err
	}
	if err := tarball.WriteToFile(file, ref, i); err != nil {
		return fmt.Errorf("writing image %s: %w", img.Ref, err)
	}
	img.Tar = file
	return nil
}

func layerTar(img *Image) ([]byte, error) {
	exec := map[string]bool{}
	for _, p := range img.Executable {
		exec[p] = true
	}
	dirs := map[string]bool{}
	addParents := func(p string) {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for p := range img.Files {
		if !path.IsAbs(p) {
			return nil, fmt.Errorf("image path %q is not absolute", p)
		}
		addParents(p)
	}
	for _, d := range img.Dirs {
		dirs[path.Clean(d)] = true
		addParents(d)
	}
	epoch := time.Unix(0, 0).UTC()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var dirList []string
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList) // parents sort before children
	for _, d := range dirList {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: epoch}); err != nil {
			return nil, err
		}
	}
	var files []string
	for p := range img.Files {
		files = append(files, p)
	}
	sort.Strings(files)
	for _, p := range files {
		data, err := os.ReadFile(img.Files[p])
		if err != nil {
			return nil, err
		}
		mode := int64(0o644)
		if exec[p] {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(p, "/"), Mode: mode, Size: int64(len(data)), ModTime: epoch}); err != nil {
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
