package install

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const (
	repoRoot    = "../.."
	chartDir    = repoRoot + "/deploy/helm/sds-injector"
	releaseName = "sds-injector"
	injectorNS  = "sds-injector"
)

// helm returns the helm binary built from the Go module proxy by
// test/helm/build-helm.sh (TestMain's prepare builds it outside the network
// namespace; cached, the first build takes a few minutes).
func helm(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the helm CLI built from the Go module proxy; run without -short")
	}
	if bins.Helm == "" {
		t.Fatal("no helm binary: TestMain's prepare did not build one")
	}
	return bins.Helm
}

// helmTemplate renders the chart as release sds-injector in namespace
// sds-injector with the given extra arguments (--set, -f).
func helmTemplate(t *testing.T, args ...string) (string, error) {
	t.Helper()
	full := append([]string{"template", releaseName, chartDir, "--namespace", injectorNS}, args...)
	cmd := exec.Command(helm(t), full...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("helm %s: %v\n%s", strings.Join(full, " "), err, errOut.String())
	}
	return out.String(), nil
}

func mustRender(t *testing.T, args ...string) *rendered {
	t.Helper()
	out, err := helmTemplate(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return parseManifests(t, out)
}

// rendered is a manifest stream, each object decoded strictly into its
// typed API struct (an unknown or misspelt field fails the test).
type rendered struct {
	raw     string
	objects []any
}

func parseManifests(t *testing.T, stream string) *rendered {
	t.Helper()
	r := &rendered{raw: stream}
	reader := utilyaml.NewYAMLReader(bufioReader(stream))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var u unstructured.Unstructured
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		if len(u.Object) == 0 {
			continue
		}
		obj := typedFor(u.GetAPIVersion(), u.GetKind())
		if obj == nil {
			r.objects = append(r.objects, &u)
			continue
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s %s does not parse with the typed API: %v\n%s", u.GetKind(), u.GetName(), err, doc)
		}
		r.objects = append(r.objects, obj)
	}
	return r
}

func typedFor(apiVersion, kind string) any {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}
	case "v1/Service":
		return &corev1.Service{}
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "rbac.authorization.k8s.io/v1/Role":
		return &rbacv1.Role{}
	case "rbac.authorization.k8s.io/v1/RoleBinding":
		return &rbacv1.RoleBinding{}
	case "rbac.authorization.k8s.io/v1/ClusterRole":
		return &rbacv1.ClusterRole{}
	case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}
	case "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration":
		return &admissionregistrationv1.MutatingWebhookConfiguration{}
	case "cert-manager.io/v1/Issuer":
		return &cmapi.Issuer{}
	case "cert-manager.io/v1/Certificate":
		return &cmapi.Certificate{}
	}
	return nil
}

// all returns the objects of type T.
func all[T any](r *rendered) []T {
	var out []T
	for _, o := range r.objects {
		if v, ok := o.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// one returns the single object of type T named name ("" for any).
func one[T interface{ GetName() string }](t *testing.T, r *rendered, name string) T {
	t.Helper()
	var found []T
	for _, o := range all[T](r) {
		if name == "" || o.GetName() == name {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T named %q, found %d", zero, name, len(found))
	}
	return found[0]
}

func unstructuredOfKind(r *rendered, kind string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, u := range all[*unstructured.Unstructured](r) {
		if u.GetKind() == kind {
			out = append(out, u)
		}
	}
	return out
}
