package imagebuild

import (
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestLayoutIsPublishable pushes a written layout to a registry on
// loopback (go-containerregistry's in-memory registry) the way
// `crane push DIR REF` does (the layout's single index entry, written with
// remote.WriteIndex), pulls it back and compares digests: what a release
// pushes is byte for byte what make images built.
func TestLayoutIsPublishable(t *testing.T) {
	img, err := Build(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := Index(nil, img)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if err := WriteLayout(dir, "ghcr.io/sds-injector/static:v1", idx); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	// crane push: load the layout, take its one entry, write it.
	l, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := l.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || !im.Manifests[0].MediaType.IsIndex() {
		t.Fatalf("layout entries %+v: crane push wants exactly one", im.Manifests)
	}
	local, err := l.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(host+"/sds-injector/static:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, local); err != nil {
		t.Fatal(err)
	}

	pulled, err := remote.Index(ref)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Digest()
	got, _ := pulled.Digest()
	if got != want {
		t.Fatalf("pushed %s, pulled %s", want, got)
	}
	wantImg, _ := img.Digest()
	pimg, err := pulled.Image(wantImg)
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := layerEntries(t, pimg)
	if len(entries) != 4 || entries[3].Name != "usr/local/bin/static" {
		t.Errorf("pulled layer entries %+v", entries)
	}
}
