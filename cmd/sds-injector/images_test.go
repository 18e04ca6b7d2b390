package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// The binary's fallback release is the chart's appVersion, so a `go build`
// without -ldflags and the chart name the same images.
func TestReleaseVersionIsChartAppVersion(t *testing.T) {
	data, err := os.ReadFile("../../deploy/helm/sds-injector/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(data, &chart); err != nil {
		t.Fatal(err)
	}
	if chart.AppVersion != releaseVersion {
		t.Errorf("Chart.yaml appVersion %q, releaseVersion %q: bump them together", chart.AppVersion, releaseVersion)
	}
}

func withVersion(t *testing.T, v string) {
	t.Helper()
	old := version
	version = v
	t.Cleanup(func() { version = old })
}

func TestImageTag(t *testing.T) {
	for v, want := range map[string]string{
		"v0.3.1":                 "v0.3.1",
		"v0.3.1-4-gd5041f4":      "v0.3.1-4-gd5041f4",
		"d5041f4-dirty":          "d5041f4-dirty",
		"dev":                    releaseVersion,
		"":                       releaseVersion,
		"latest":                 releaseVersion,
		"v1/evil":                releaseVersion,
		strings.Repeat("a", 200): releaseVersion,
	} {
		withVersion(t, v)
		if got := imageTag(); got != want {
			t.Errorf("version %q: tag %q, want %q", v, got, want)
		}
	}
}

func TestVersionPrintsBothImages(t *testing.T) {
	withVersion(t, "v0.7.2")
	out, _, err := run(t, "", "version")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"sds-injector v0.7.2",
		"injector image: ghcr.io/sds-injector/sds-injector:v0.7.2\n",
		"agent image:    ghcr.io/sds-injector/sds-agent:v0.7.2\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("version output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "latest") {
		t.Errorf("version names a latest image:\n%s", out)
	}
}

// injectedAgentImage injects testdata/multi.yaml's gateway with the
// sds-agent flavor and returns the agent container's image.
func injectedAgentImage(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, err := run(t, "", append([]string{"inject", "-f", "testdata/multi.yaml", "--flavor", "sds-agent"}, args...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var gw appsv1.Deployment
	mustUnmarshal(t, splitDocs(t, out)[1], &gw)
	for _, c := range append(gw.Spec.Template.Spec.Containers, gw.Spec.Template.Spec.InitContainers...) {
		if c.Name == "sds-agent" {
			return c.Image
		}
	}
	t.Fatalf("no sds-agent container injected:\n%s", out)
	return ""
}

func TestAgentImageDefaultsToOwnVersion(t *testing.T) {
	withVersion(t, "v0.7.2")
	if got, want := injectedAgentImage(t), "ghcr.io/sds-injector/sds-agent:v0.7.2"; got != want {
		t.Errorf("no configuration: agent image %q, want %q", got, want)
	}
	dir := t.TempDir()
	write := func(name, body string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	// A configuration that does not name the image still gets the
	// injector's version; one that does is obeyed, even when it asks for
	// the engine's mutable built-in default.
	if got, want := injectedAgentImage(t, "--config", write("plain.yaml", "flavor: sds-agent\n")), "ghcr.io/sds-injector/sds-agent:v0.7.2"; got != want {
		t.Errorf("configuration without sdsAgentImage: %q, want %q", got, want)
	}
	pinned := "registry.example.com/sds-agent@sha256:" + strings.Repeat("ab", 32)
	if got := injectedAgentImage(t, "--config", write("pinned.yaml", "sdsAgentImage: "+pinned+"\n")); got != pinned {
		t.Errorf("pinned image: %q, want %q", got, pinned)
	}
	if got := injectedAgentImage(t, "--config", write("explicit.yaml", "sdsAgentImage: "+inject.DefaultSDSAgentImage+"\n")); got != inject.DefaultSDSAgentImage {
		t.Errorf("explicitly chosen image: %q, want %q", got, inject.DefaultSDSAgentImage)
	}
}
