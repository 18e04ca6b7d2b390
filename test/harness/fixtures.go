package harness

import (
	"os"
	"path/filepath"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// ConfigHeader starts every sds-injector configuration file (serve/inject/
// check --config) a test writes: without it the file is read with a
// deprecation warning.
const ConfigHeader = "apiVersion: " + inject.ConfigAPIVersion + "\nkind: " + inject.ConfigKind + "\n"

// ExamplePod loads docs/examples/<file> (a Pod, strictly decoded) into
// namespace ns as name, adding labels and annotations.
func ExamplePod(t testing.TB, file, ns, name string, labels, annotations map[string]string) *corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	loadStrict(t, &pod, "docs", "examples", file)
	pod.Namespace, pod.Name = ns, name
	for k, v := range labels {
		if pod.Labels == nil {
			pod.Labels = map[string]string{}
		}
		pod.Labels[k] = v
	}
	for k, v := range annotations {
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[k] = v
	}
	return &pod
}

// ShippedWebhook loads deploy/webhook/<file> (a MutatingWebhookConfiguration,
// strictly decoded) exactly as users apply it.
func ShippedWebhook(t testing.TB, file string) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	loadStrict(t, &mwc, "deploy", "webhook", file)
	return &mwc
}

// loadStrict decodes the repository's file at path (YAML, strictly) into out.
func loadStrict(t testing.TB, out any, path ...string) {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(append([]string{root}, path...)...)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, out); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}
