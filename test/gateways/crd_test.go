package gateways

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// notAnObject lists the guide's kinds that are not API objects: the
// EnvoyGateway configuration is a file in a ConfigMap, which
// test/envoygateway decodes and validates with Envoy Gateway's own code.
// sds-injector's own InjectorConfig is loaded with inject.LoadConfig.
var notAnObject = []string{"EnvoyGateway"}

// guideObject is one Kubernetes object of the guide.
type guideObject struct {
	where string
	obj   *unstructured.Unstructured
}

func guideObjects(t *testing.T) []guideObject {
	t.Helper()
	var out []guideObject
	for _, b := range guideBlocks(t) {
		for i, d := range strings.Split(b.text, "\n---\n") {
			var v any
			if err := yaml.Unmarshal([]byte(d), &v); err != nil {
				t.Fatalf("%s:%d (document %d): %v", guide, b.line, i+1, err)
			}
			m, ok := v.(map[string]any)
			if !ok || m["apiVersion"] == nil || m["kind"] == nil {
				continue
			}
			if slices.Contains(notAnObject, fmt.Sprint(m["kind"])) {
				continue
			}
			if m["kind"] == inject.ConfigKind && m["apiVersion"] == inject.ConfigAPIVersion {
				// sds-injector's own configuration file, not an API
				// object: it must load and resolve as the injector would.
				l, err := inject.LoadConfig([]byte(d))
				if err == nil {
					_, err = l.Config.Resolve()
				}
				if err != nil || len(l.Warnings) > 0 {
					t.Errorf("%s:%d (document %d): the guide's sds-injector configuration does not load cleanly: %v %v", guide, b.line, i+1, err, l.Warnings)
				}
				continue
			}
			out = append(out, guideObject{where: fmt.Sprintf("%s:%d (document %d, %s)", guide, b.line, i+1, m["kind"]), obj: &unstructured.Unstructured{Object: m}})
		}
	}
	return out
}

// moduleDir returns the module cache directory of module@version,
// downloading it from the module proxy if needed.
func moduleDir(t *testing.T, ctx context.Context, mod, version string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", mod+"@"+version)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off", "GO111MODULE=on")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s@%s: %v\n%s", mod, version, err, out)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Dir == "" {
		t.Fatalf("go mod download %s@%s: no directory (%v %s)", mod, version, err, info.Error)
	}
	return info.Dir
}

// requiredVersion reads the version test/envoygateway/go.mod pins for mod,
// so the CRDs installed here are those of the Envoy Gateway release whose
// translator that module runs.
func requiredVersion(t *testing.T, mod string) string {
	t.Helper()
	data, err := os.ReadFile("../envoygateway/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == mod {
			return f[1]
		}
	}
	t.Fatalf("test/envoygateway/go.mod does not require %s", mod)
	return ""
}

// TestGuideObjectsStrictOnRealAPIServer installs each gateway's own CRDs
// (Gloo Edge v1.22.1's Upstream from its chart, Envoy Gateway's from its
// module, Gateway API's from sigs.k8s.io/gateway-api at the version Envoy
// Gateway pins, Emissary-ingress v4.1.0's from its CRD chart) into a real
// kube-apiserver and creates every object of the guide with server-side
// dry run and strict field validation: an unknown or misplaced field, a
// wrong type or a schema violation is an error.
func TestGuideObjectsStrictOnRealAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	egDir := moduleDir(t, ctx, "github.com/envoyproxy/gateway", requiredVersion(t, "github.com/envoyproxy/gateway"))
	gwDir := moduleDir(t, ctx, "sigs.k8s.io/gateway-api", requiredVersion(t, "sigs.k8s.io/gateway-api"))

	cp := controlplane.MustStart(ctx, t, controlplane.Options{})

	paths := []string{
		glooDir + "crds/gloo.solo.io_v1_Upstream.yaml",
		"testdata/emissary/crds.yaml",
		filepath.Join(egDir, "charts/gateway-helm/charts/crds/crds/generated"),
	}
	for _, n := range []string{"backendtlspolicies", "gatewayclasses", "gateways", "httproutes", "referencegrants"} {
		paths = append(paths, filepath.Join(gwDir, "config/crd/standard", "gateway.networking.k8s.io_"+n+".yaml"))
	}
	crds, err := envtest.InstallCRDs(cp.Config, envtest.CRDInstallOptions{Paths: paths, ErrorIfPathMissing: true, MaxTime: 2 * time.Minute})
	if err != nil {
		t.Fatalf("installing the gateways' CRDs: %v", err)
	}
	var names []string
	for _, c := range crds {
		names = append(names, c.Name)
	}
	t.Logf("installed %d CRDs: %v", len(crds), names)

	// A fresh client, so its REST mapper sees the new kinds.
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cp.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	objects := guideObjects(t)
	namespaces := map[string]bool{}
	for _, o := range objects {
		if ns := o.obj.GetNamespace(); ns != "" {
			namespaces[ns] = true
		}
	}
	for ns := range namespaces {
		err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}

	covered := map[string]int{}
	for _, o := range objects {
		if err := c.Create(ctx, o.obj.DeepCopy(), client.DryRunAll, client.FieldValidation("Strict")); err != nil {
			t.Errorf("%s: the apiserver refuses it (strict field validation, dry run): %v", o.where, err)
			continue
		}
		covered[o.obj.GetKind()]++
	}
	t.Logf("accepted by the apiserver: %v", covered)
	// What each recipe promises; a dropped block would otherwise pass unnoticed.
	for kind, least := range map[string]int{
		"Upstream": 2, "EnvoyProxy": 2, "GatewayClass": 1, "BackendTLSPolicy": 1, "EnvoyPatchPolicy": 2,
		"Secret": 2, "TLSContext": 1, "Mapping": 1,
	} {
		if covered[kind] < least {
			t.Errorf("%d %s objects of the guide accepted, want at least %d", covered[kind], kind, least)
		}
	}

	// Negative controls: strict validation and the CRDs' schemas do refuse
	// what they should, so the acceptance above means something.
	for _, bad := range []struct {
		kind, field string
		value       any
	}{
		{"Upstream", "spec.sslConfig.sds.secretName", "default"},
		{"BackendTLSPolicy", "spec.validation.subjectAltName", "x"},
		{"TLSContext", "spec.verify_subject_alt_name", "x"},
		{"EnvoyProxy", "spec.backendTLS.clientCertificate", "mesh-identity"},
	} {
		var o *unstructured.Unstructured
		for _, g := range objects {
			if g.obj.GetKind() == bad.kind {
				o = g.obj.DeepCopy()
				break
			}
		}
		if o == nil {
			t.Errorf("no %s in the guide for the negative control", bad.kind)
			continue
		}
		if err := unstructured.SetNestedField(o.Object, bad.value, strings.Split(bad.field, ".")...); err != nil {
			t.Fatal(err)
		}
		err := c.Create(ctx, o, client.DryRunAll, client.FieldValidation("Strict"))
		if err == nil {
			t.Errorf("%s with %s=%v is accepted; strict validation or the CRD schema is not in effect", bad.kind, bad.field, bad.value)
		} else {
			t.Logf("negative control %s %s: refused: %v", bad.kind, bad.field, err)
		}
	}

	// Emissary's TLSContext has no field to pin the upstream's identity;
	// the guide says so. If a release adds one, this fails: pin it.
	var tlsCRD apiextensionsv1.CustomResourceDefinition
	if err := c.Get(ctx, client.ObjectKey{Name: "tlscontexts.getambassador.io"}, &tlsCRD); err != nil {
		t.Fatal(err)
	}
	for _, v := range tlsCRD.Spec.Versions {
		if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
			continue
		}
		for f := range v.Schema.OpenAPIV3Schema.Properties["spec"].Properties {
			if strings.Contains(f, "san") || strings.Contains(f, "subject") {
				t.Errorf("Emissary's TLSContext %s now has %q: pin the destination's SPIFFE ID in the guide", v.Name, f)
			}
		}
	}
}
