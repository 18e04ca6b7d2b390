package certmanager

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Without the third-party sources (and nothing cached) BinaryDir reports
// exactly what is missing, as a SourcesMissingError the install tests turn
// into a failure, instead of building nothing or skipping silently.
func TestBinaryDirReportsMissingSources(t *testing.T) {
	empty := t.TempDir()
	t.Setenv("SDS_INJECTOR_CACHE", filepath.Join(empty, "cache"))
	t.Setenv("SDS_INJECTOR_THIRD_PARTY", filepath.Join(empty, "no-third-party"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir, err := BinaryDir(ctx)
	var missing *SourcesMissingError
	if !errors.As(err, &missing) {
		t.Fatalf("BinaryDir = %q, %v; want a SourcesMissingError", dir, err)
	}
	want := filepath.Join(empty, "no-third-party", "cert-manager", "cert-manager-cmd-release-1.21.tar.gz")
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), Version) {
		t.Errorf("the error must name the missing file %s and the version:\n%v", want, err)
	}
}

// With the sources present, the cache holds both binaries and the CRDs of
// the same release.
func TestBinaryDir(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cert-manager on first use (minutes); run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	dir, err := BinaryDir(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(dir, "cert-manager-"+Version) {
		t.Errorf("cache directory %s is not keyed by version %s", dir, Version)
	}
	crds, err := CRDFiles(dir)
	if err != nil || len(crds) != 6 {
		t.Errorf("want cert-manager's 6 CRDs, got %d: %v", len(crds), err)
	}
}
