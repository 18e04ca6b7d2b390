package install

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func chartAppVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil || c.AppVersion == "" {
		t.Fatalf("Chart.yaml appVersion: %q %v", c.AppVersion, err)
	}
	return c.AppVersion
}

// renderedImages returns the injector's container image and the
// sds-agent image of the rendered engine configuration.
func renderedImages(t *testing.T, args ...string) (injector, agent string) {
	t.Helper()
	r := mustRender(t, args...)
	dep := one[*appsv1.Deployment](t, r, "sds-injector")
	var cfg struct {
		SDSAgentImage string `json:"sdsAgentImage"`
	}
	if err := yaml.Unmarshal([]byte(one[*corev1.ConfigMap](t, r, "sds-injector").Data["config.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	return dep.Spec.Template.Spec.Containers[0].Image, cfg.SDSAgentImage
}

// TestImagesPinned: both images default to the chart's appVersion (the
// agent is released with the injector), either can be pinned by digest or
// tag, and config.sdsAgentImage still wins.
func TestImagesPinned(t *testing.T) {
	v := chartAppVersion(t)
	inj, agent := renderedImages(t)
	if inj != "ghcr.io/sds-injector/sds-injector:"+v || agent != "ghcr.io/sds-injector/sds-agent:"+v {
		t.Errorf("defaults: injector %q, agent %q; want both at appVersion %s", inj, agent, v)
	}
	inj, agent = renderedImages(t, "--set", "image.digest="+testDigest+",agentImage.digest="+testDigest)
	if inj != "ghcr.io/sds-injector/sds-injector@"+testDigest || agent != "ghcr.io/sds-injector/sds-agent@"+testDigest {
		t.Errorf("digests: injector %q, agent %q", inj, agent)
	}
	_, agent = renderedImages(t, "--set", "agentImage.repository=registry.example.com/sds-agent,agentImage.tag=v9.9.9")
	if agent != "registry.example.com/sds-agent:v9.9.9" {
		t.Errorf("agentImage repository and tag: %q", agent)
	}
	_, agent = renderedImages(t, "--set", "config.sdsAgentImage=registry.example.com/a@"+testDigest+",agentImage.tag=v9.9.9")
	if agent != "registry.example.com/a@"+testDigest {
		t.Errorf("config.sdsAgentImage must win: %q", agent)
	}
}

// TestNoLatestDefaults: no default anywhere in the chart, the rendered
// manifests or the shipped configuration names a latest tag.
func TestNoLatestDefaults(t *testing.T) {
	latest := regexp.MustCompile(`:latest\b`)
	files := []string{filepath.Join(chartDir, "values.yaml"), filepath.Join(repoRoot, "deploy", "config", "sds-injector.yaml")}
	m, _ := filepath.Glob(filepath.Join(repoRoot, "deploy", "manifests", "*.yaml"))
	files = append(files, m...)
	tpl, _ := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	files = append(files, tpl...)
	if len(m) == 0 || len(tpl) == 0 {
		t.Fatalf("no manifests (%d) or templates (%d) found", len(m), len(tpl))
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(data), "\n") {
			if latest.MatchString(line) {
				t.Errorf("%s:%d names a latest image: %s", f, i+1, strings.TrimSpace(line))
			}
		}
	}
}

// TestCertManagerExtraSANs: certificates.certManager.extraDNSNames and
// extraIPAddresses reach the serving Certificate after the Service names.
func TestCertManagerExtraSANs(t *testing.T) {
	r := mustRender(t, "--set", "certificates.mode=cert-manager",
		"--set-json", `certificates.certManager.extraDNSNames=["webhook.example.com","*.edge.example.com"]`,
		"--set-json", `certificates.certManager.extraIPAddresses=["10.0.0.7","fd00::7"]`)
	serving := one[*cmapi.Certificate](t, r, "sds-injector-serving")
	if want := []string{"sds-injector.sds-injector.svc", "sds-injector.sds-injector.svc.cluster.local", "webhook.example.com", "*.edge.example.com"}; !slices.Equal(serving.Spec.DNSNames, want) {
		t.Errorf("dnsNames %v, want %v", serving.Spec.DNSNames, want)
	}
	if want := []string{"10.0.0.7", "fd00::7"}; !slices.Equal(serving.Spec.IPAddresses, want) {
		t.Errorf("ipAddresses %v, want %v", serving.Spec.IPAddresses, want)
	}
	plain := one[*cmapi.Certificate](t, mustRender(t, "--set", "certificates.mode=cert-manager"), "sds-injector-serving")
	if len(plain.Spec.IPAddresses) != 0 || len(plain.Spec.DNSNames) != 2 {
		t.Errorf("without extras: dnsNames %v ipAddresses %v", plain.Spec.DNSNames, plain.Spec.IPAddresses)
	}
}

func TestSchemaImagesAndSANs(t *testing.T) {
	for _, tc := range []struct {
		values, wantPath string
		ok               bool
	}{
		{"agentImage: {digest: latest}", "/agentImage/digest", false},
		{"agentImage: {tag: 'a b'}", "/agentImage/tag", false},
		{"agentImage: {repository: ghcr.io/x/sds-agent, pullPolicy: Always}", "additional properties 'pullPolicy'", false},
		{"certificates: {certManager: {extraDNSNames: [Web.Example.COM]}}", "/certificates/certManager/extraDNSNames/0", false},
		{"certificates: {certManager: {extraIPAddresses: [10.0.0.300]}}", "/certificates/certManager/extraIPAddresses/0", false},
		{"certificates: {certManager: {extraIPAddresses: [webhook.example.com]}}", "/certificates/certManager/extraIPAddresses/0", false},
		{"agentImage: {digest: '" + testDigest + "'}", "", true},
		{"certificates: {mode: cert-manager, certManager: {extraDNSNames: [webhook.example.com], extraIPAddresses: [127.0.0.1, '::1']}}", "", true},
	} {
		f := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(f, []byte(tc.values+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := helmTemplate(t, "-f", f)
		switch {
		case tc.ok && err != nil:
			t.Errorf("%q rejected: %v", tc.values, err)
		case !tc.ok && err == nil:
			t.Errorf("%q accepted", tc.values)
		case !tc.ok && !strings.Contains(err.Error(), tc.wantPath):
			t.Errorf("%q: want a schema error naming %q, got %v", tc.values, tc.wantPath, err)
		}
	}
}
