package node

import (
	"fmt"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sds-injector/sds-injector/internal/imagebuild"
)

// Image describes a test image written locally (no registry, no Docker)
// from files on this machine, typically static binaries. The image itself
// is built by internal/imagebuild (BuildFiles), the repository's one image
// writer; the release images are imagebuild.Build's.
type Image struct {
	// Ref is the image reference pods name, e.g. "sds-injector.test/pause:1".
	// Use a tag other than latest: the kubelet never pulls such an image
	// with imagePullPolicy IfNotPresent once it is imported.
	Ref string `json:"ref"`
	// Files maps a path in the image to a file on this machine (mode 0555
	// if Executable lists it, which must then be a static binary; else
	// 0444).
	Files map[string]string `json:"files"`
	// Executable lists the image paths that are executables.
	Executable []string `json:"executable,omitempty"`
	// Dirs are extra directories (mode 0755) to create in the image.
	Dirs []string `json:"dirs,omitempty"`
	// Config is the image configuration (Entrypoint, Cmd, Env, User, WorkingDir).
	Config v1.Config `json:"config"`
	// Tar is where WriteImage wrote the image (an OCI image layout tar,
	// imagebuild.WriteArchive, that `ctr images import` reads).
	Tar string `json:"tar,omitempty"`
}

// WriteImage writes img as an OCI image layout tar at file with a single
// layer holding img.Files and img.Dirs (imagebuild.BuildFiles and
// WriteArchive), and records the path in img.Tar. Times are fixed, so the
// same inputs give the same image.
func WriteImage(img *Image, file string) error {
	if _, err := name.NewTag(img.Ref); err != nil {
		return fmt.Errorf("image %q: %w", img.Ref, err)
	}
	i, err := imagebuild.BuildFiles(imagebuild.FilesSpec{
		Files: img.Files, Executable: img.Executable, Dirs: img.Dirs, Config: img.Config,
		Platform: v1.Platform{OS: "linux", Architecture: runtime.GOARCH},
		Created:  time.Unix(0, 0).UTC(),
	})
	if err != nil {
		return fmt.Errorf("image %s: %w", img.Ref, err)
	}
	if err := imagebuild.WriteArchive(file, img.Ref, i); err != nil {
		return fmt.Errorf("writing image %s: %w", img.Ref, err)
	}
	img.Tar = file
	return nil
}
