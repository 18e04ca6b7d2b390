package istiod

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"
)

// A v1beta1 CRD in the shape Istio 1.5 ships (single `version`, no
// schema), and one with `versions`, become v1 CRDs a current apiserver
// accepts.
func TestConvertCRDs(t *testing.T) {
	in := `# comment before the first document
apiVersion: apiextensions.k8s.io/v1beta1
kind: CustomResourceDefinition
metadata:
  name: gateways.networking.istio.io
  labels: {app: istio-pilot}
spec:
  group: networking.istio.io
  names: {kind: Gateway, plural: gateways, singular: gateway, listKind: GatewayList}
  scope: Namespaced
  version: v1alpha3
  subresources: {status: {}}
---
apiVersion: apiextensions.k8s.io/v1beta1
kind: CustomResourceDefinition
metadata:
  name: policies.authentication.istio.io
spec:
  group: authentication.istio.io
  names: {kind: Policy, plural: policies}
  scope: Namespaced
  versions:
  - {name: v1alpha1, served: true, storage: false}
  - {name: v1beta1, served: false, storage: false}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: not-a-crd}
`
	src := filepath.Join(t.TempDir(), "crds.yaml")
	if err := os.WriteFile(src, []byte(in), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := convertCRDs(src)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(out)
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(data), "---\n")
	if len(docs) != 2 {
		t.Fatalf("%d documents, want the 2 CRDs:\n%s", len(docs), data)
	}
	want := []struct {
		name, group string
		versions    []apiextensionsv1.CustomResourceDefinitionVersion
	}{
		{"gateways.networking.istio.io", "networking.istio.io", []apiextensionsv1.CustomResourceDefinitionVersion{{Name: "v1alpha3", Served: true, Storage: true}}},
		{"policies.authentication.istio.io", "authentication.istio.io", []apiextensionsv1.CustomResourceDefinitionVersion{
			{Name: "v1alpha1", Served: true, Storage: true}, {Name: "v1beta1", Served: false, Storage: false}}},
	}
	for i, doc := range docs {
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.UnmarshalStrict([]byte(doc), &crd); err != nil {
			t.Fatalf("document %d is not a v1 CRD: %v\n%s", i, err, doc)
		}
		w := want[i]
		if crd.APIVersion != "apiextensions.k8s.io/v1" || crd.Name != w.name || crd.Spec.Group != w.group || crd.Spec.Scope != apiextensionsv1.NamespaceScoped {
			t.Errorf("document %d: %s %s group %s scope %s", i, crd.APIVersion, crd.Name, crd.Spec.Group, crd.Spec.Scope)
		}
		if len(crd.Spec.Versions) != len(w.versions) {
			t.Fatalf("%s: versions %+v", crd.Name, crd.Spec.Versions)
		}
		for j, v := range crd.Spec.Versions {
			wv := w.versions[j]
			if v.Name != wv.Name || v.Served != wv.Served || v.Storage != wv.Storage {
				t.Errorf("%s version %d = %s served=%v storage=%v, want %s served=%v storage=%v", crd.Name, j, v.Name, v.Served, v.Storage, wv.Name, wv.Served, wv.Storage)
			}
			if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil || v.Schema.OpenAPIV3Schema.XPreserveUnknownFields == nil || !*v.Schema.OpenAPIV3Schema.XPreserveUnknownFields {
				t.Errorf("%s version %s: schema must preserve unknown fields: %+v", crd.Name, v.Name, v.Schema)
			}
		}
		if i == 0 && (crd.Spec.Versions[0].Subresources == nil || crd.Spec.Versions[0].Subresources.Status == nil) {
			t.Errorf("%s: the status subresource was lost", crd.Name)
		}
	}
}

func TestQuirksFor(t *testing.T) {
	cases := map[string]struct {
		release    string
		ingressOff bool
		istio15    bool
		err        bool
	}{
		"1.30.3": {release: "1.30.3"},
		"1.22.8": {release: "1.22.8"},
		"1.15.0": {release: "1.15.0"},
		"1.14.6": {release: "1.14.6", ingressOff: true},
		"1.5.10": {release: "1.5.10", ingressOff: true, istio15: true},
		"2.0.0":  {release: "2.0.0", err: true},
		"junk":   {release: "latest", err: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Setenv(EnvRelease, tc.release)
			q, err := quirksFor(tc.release)
			if tc.err {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(q.mesh, `ingressControllerMode: "OFF"`); got != tc.ingressOff {
				t.Errorf("ingressControllerMode OFF = %v, want %v (mesh %q)", got, tc.ingressOff, q.mesh)
			}
			if got := q.convertCRDs && q.oldFlags && q.istiodAddrCA && q.ownToken; got != tc.istio15 {
				t.Errorf("1.5 quirks = %+v, want all %v", q, tc.istio15)
			}
			if (q.mesh != "" || q.convertCRDs) && len(q.notes) == 0 {
				t.Error("every change must be listed in notes")
			}
		})
	}
	t.Run("module snapshot", func(t *testing.T) {
		t.Setenv(EnvRelease, "")
		q, err := quirksFor("1.31")
		if err != nil || q.mesh != "" || q.convertCRDs || len(q.notes) != 0 {
			t.Errorf("the module snapshot runs unchanged, got %+v, %v", q, err)
		}
	})
}
