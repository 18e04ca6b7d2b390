package imagebuild

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

const (
	// AnnotationContainerdName names an image in an OCI layout for
	// containerd's importer (`ctr images import`, `kind load image-archive`).
	AnnotationContainerdName = "io.containerd.image.name"
	// AnnotationRefName is the OCI layout's reference name (the tag), by
	// which `skopeo copy oci:DIR:TAG` selects an entry.
	AnnotationRefName = "org.opencontainers.image.ref.name"
)

// WriteLayout writes img (a v1.Image or a v1.ImageIndex) as the only entry
// of a new OCI image layout in dir, named ref (a full reference with a
// tag, e.g. ghcr.io/sds-injector/sds-agent:v0.1.0): the entry is annotated
// with io.containerd.image.name=ref and org.opencontainers.image.ref.name=
// the tag. dir must not exist or be empty. `crane push dir REF` and
// `skopeo copy --all oci:dir docker://REF` publish it.
func WriteLayout(dir, ref string, img any) error {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("imagebuild: image reference %q (want registry/repository:tag): %w", ref, err)
	}
	if err := emptyDir(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("imagebuild: %w", err)
	}
	opt := layout.WithAnnotations(map[string]string{
		AnnotationContainerdName: tag.Name(),
		AnnotationRefName:        tag.TagStr(),
	})
	switch v := img.(type) {
	case v1.ImageIndex:
		err = p.AppendIndex(v, opt)
	case v1.Image:
		err = p.AppendImage(v, opt)
	default:
		err = fmt.Errorf("%T is neither a v1.Image nor a v1.ImageIndex", img)
	}
	if err != nil {
		return fmt.Errorf("imagebuild: writing the layout %s: %w", dir, err)
	}
	return nil
}

// WriteArchive writes img as an OCI image layout tar (see WriteLayout) to
// file, for `ctr -n k8s.io images import FILE` (containerd names the image
// ref from io.containerd.image.name) and `kind load image-archive FILE`.
// The tar is reproducible: sorted entries, owner 0:0, modes 0644/0755,
// every time at the Unix epoch. file is replaced atomically.
func WriteArchive(file, ref string, img any) error {
	tmp, err := os.MkdirTemp(filepath.Dir(file), ".imagebuild-")
	if err != nil {
		return fmt.Errorf("imagebuild: %w", err)
	}
	defer os.RemoveAll(tmp)
	dir := filepath.Join(tmp, "layout")
	if err := WriteLayout(dir, ref, img); err != nil {
		return err
	}
	out := filepath.Join(tmp, "archive.tar")
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("imagebuild: %w", err)
	}
	if err := TarDir(f, dir); err != nil {
		f.Close()
		return fmt.Errorf("imagebuild: writing %s: %w", file, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("imagebuild: %w", err)
	}
	if err := os.Rename(out, file); err != nil {
		return fmt.Errorf("imagebuild: %w", err)
	}
	return nil
}

// TarDir writes the regular files and directories under dir to w as a
// reproducible tar (names relative to dir, sorted; 0:0; 0644 files, 0755
// directories; times at the Unix epoch). Other file types are refused.
func TarDir(w io.Writer, dir string) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		if !d.Type().IsRegular() && !d.IsDir() {
			return fmt.Errorf("%s is not a regular file or directory", p)
		}
		names = append(names, p)
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(names)
	tw := tar.NewWriter(w)
	epoch := time.Unix(0, 0)
	for _, p := range names {
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: rel, ModTime: epoch, Format: tar.FormatPAX}
		if fi.IsDir() {
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, rel+"/", 0o755
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			continue
		}
		h.Typeflag, h.Mode, h.Size = tar.TypeReg, 0o644, fi.Size()
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

// emptyDir makes sure dir exists and is empty.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("imagebuild: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("imagebuild: %w", err)
	case len(entries) > 0:
		return fmt.Errorf("imagebuild: layout directory %s is not empty", dir)
	}
	return nil
}
