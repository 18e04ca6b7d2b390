package imagebuild

import (
	"archive/tar"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func filesSpec(t *testing.T) FilesSpec {
	t.Helper()
	data := filepath.Join(t.TempDir(), "bootstrap.json")
	if err := os.WriteFile(data, []byte(`{"node":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return FilesSpec{
		Files:      map[string]string{"/usr/local/bin/tool": staticBinary(t), "/var/lib/tool/bootstrap.json": data},
		Executable: []string{"/usr/local/bin/tool"},
		Dirs:       []string{"/etc/tool"},
		Config:     v1.Config{Entrypoint: []string{"/usr/local/bin/tool"}, User: "1337:1337", WorkingDir: "/", Env: []string{"PATH=/usr/local/bin"}},
		Platform:   v1.Platform{OS: "linux", Architecture: "amd64"},
		Created:    time.Unix(1700000000, 0),
	}
}

func TestBuildFiles(t *testing.T) {
	s := filesSpec(t)
	img, err := BuildFiles(s)
	if err != nil {
		t.Fatal(err)
	}
	entries, contents := layerEntries(t, img)
	var got []string
	for _, e := range entries {
		typ := "file"
		if e.Type == tar.TypeDir {
			typ = "dir"
		}
		got = append(got, e.Name+" "+typ+" "+modeString(e.Mode))
		if e.Uid != 0 || e.Gid != 0 || !e.ModTime.Equal(s.Created.UTC()) {
			t.Errorf("entry %s: owner %d:%d time %s, want 0:0 at %s", e.Name, e.Uid, e.Gid, e.ModTime, s.Created.UTC())
		}
	}
	// Directories first (sorted), then files (sorted); executables 0555,
	// data 0444, directories 0755.
	want := []string{
		"etc/ dir 755", "etc/tool/ dir 755", "usr/ dir 755", "usr/local/ dir 755", "usr/local/bin/ dir 755",
		"var/ dir 755", "var/lib/ dir 755", "var/lib/tool/ dir 755",
		"usr/local/bin/tool file 555", "var/lib/tool/bootstrap.json file 444",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("layer entries\n got %q\nwant %q", got, want)
	}
	bin, _ := os.ReadFile(staticBinary(t))
	if string(contents["usr/local/bin/tool"]) != string(bin) || string(contents["var/lib/tool/bootstrap.json"]) != `{"node":{}}` {
		t.Error("file contents differ from the sources")
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cf.Config, s.Config) || cf.Architecture != "amd64" || cf.OS != "linux" || !cf.Created.Equal(s.Created) {
		t.Errorf("config %+v (%s/%s, created %s), want %+v", cf.Config, cf.OS, cf.Architecture, cf.Created, s.Config)
	}
	// Reproducible: the same spec gives the same digest.
	again, err := BuildFiles(s)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("two builds of one spec: %s and %s", d1, d2)
	}
}

func modeString(m int64) string { return strconv.FormatInt(m, 8) }

func TestBuildFilesRefusesBadSpecs(t *testing.T) {
	script := filepath.Join(t.TempDir(), "run.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		mod  func(*FilesSpec)
		want string
	}{
		"no files":             {func(s *FilesSpec) { s.Files = nil; s.Executable = nil }, "spec.Files is empty"},
		"relative path":        {func(s *FilesSpec) { s.Files["etc/x"] = script }, `"etc/x" must be an absolute`},
		"unclean path":         {func(s *FilesSpec) { s.Files["/etc/../x"] = script }, `"/etc/../x" must be an absolute, clean`},
		"executable not files": {func(s *FilesSpec) { s.Executable = append(s.Executable, "/bin/none") }, `executable "/bin/none" is not among`},
		"no platform":          {func(s *FilesSpec) { s.Platform = v1.Platform{} }, "needs an OS and an architecture"},
		"no time":              {func(s *FilesSpec) { s.Created = time.Time{} }, "spec.Created must be set"},
		"script as executable": {func(s *FilesSpec) { s.Files["/run.sh"] = script; s.Executable = append(s.Executable, "/run.sh") }, "/run.sh"},
		"wrong architecture":   {func(s *FilesSpec) { s.Platform.Architecture = "arm64" }, "/usr/local/bin/tool"},
		"missing source":       {func(s *FilesSpec) { s.Files["/x"] = filepath.Join(t.TempDir(), "absent") }, "no such file"},
	} {
		t.Run(name, func(t *testing.T) {
			s := filesSpec(t)
			tc.mod(&s)
			img, err := BuildFiles(s)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("BuildFiles: image %v, error %v; want an error containing %q", img, err, tc.want)
			}
		})
	}
}
