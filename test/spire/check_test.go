package spire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/webhook/inject"

	"github.com/sds-injector/sds-injector/test/harness"
)

// crdFixture is spire-controller-manager's ClusterSPIFFEID CRD (provenance
// in the file's header).
const crdFixture = "testdata/spire.spiffe.io_clusterspiffeids.yaml"

type checkResultJSON struct {
	Name    string   `json:"name"`
	Status  string   `json:"status"`
	Message string   `json:"message"`
	Details []string `json:"details"`
	Fix     []string `json:"fix"`
	Pods    []struct {
		Namespace, Name, Problem string
	} `json:"pods"`
}

// runCheck runs `sds-injector check -o json` and returns the
// spire-registration result.
func runCheck(t *testing.T, bin, kubeconfig, config string) checkResultJSON {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "check", "--kubeconfig", kubeconfig, "--config", config, "-o", "json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	// 2: some other check fails (no webhook is installed here); ours is read from the report.
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 2) {
		t.Fatalf("check: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	var report struct {
		Checks []checkResultJSON `json:"checks"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &report); err != nil {
		t.Fatalf("check output: %v\n%s", err, stdout.String())
	}
	for _, c := range report.Checks {
		if c.Name == "spire-registration" {
			return c
		}
	}
	t.Fatalf("no spire-registration check in:\n%s", stdout.String())
	return checkResultJSON{}
}

func TestCheckSPIRERegistration(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a local kube-apiserver + etcd (built from source and cached on first use); run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cp := controlplane.MustStart(ctx, t, controlplane.Options{})
	dir := t.TempDir()
	bin := harness.MustBuild(t, harness.Injector, harness.BuildOptions{})
	config := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(config, []byte(harness.ConfigHeader+"identityProvider:\n  spire:\n    csiDriver: csi.spiffe.io\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := cp.Client

	// Two gateways injected with the spire flavor, by the engine: one in
	// a namespace a ClusterSPIFFEID selects, one in a namespace it does not.
	cfg := inject.DefaultConfig()
	cfg.Flavor, cfg.IdentityProvider.SPIRE = inject.FlavorSPIRE, &inject.SPIREConfig{CSIDriver: inject.DefaultSPIRECSIDriver}
	settings := cfg.MustResolve()
	for _, ns := range []struct {
		name   string
		labels map[string]string
	}{{"edge", map[string]string{"spire.example.org/register": "true"}}, {"edge-unregistered", nil}} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.name, Labels: ns.labels}}); err != nil {
			t.Fatal(err)
		}
		pod := readPod(t, examplePod)
		pod.Namespace = ns.name
		if err := c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: pod.Spec.ServiceAccountName, Namespace: ns.name}}); err != nil {
			t.Fatal(err)
		}
		res := inject.Inject(pod, settings)
		if res.Decision.Outcome != inject.OutcomeInjected {
			t.Fatalf("%+v", res.Decision)
		}
		if err := c.Create(ctx, res.Pod); err != nil {
			t.Fatalf("creating the injected pod in %s: %v", ns.name, err)
		}
	}

	t.Run("crd-absent", func(t *testing.T) {
		r := runCheck(t, bin, cp.KubeconfigPath, config)
		if r.Status != "warn" || !strings.Contains(r.Message, "2 gateway pod(s) use the spire flavor, but the ClusterSPIFFEID CRD (spire-controller-manager) is not installed") {
			t.Fatalf("%+v", r)
		}
	})

	installCRD(ctx, t, c)

	apply := func(t *testing.T, doc string) {
		t.Helper()
		var u unstructured.Unstructured
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, &u); err != nil {
			t.Fatalf("creating %s: %v", u.GetName(), err)
		}
	}
	// Selects Envoy Gateway proxies in labelled namespaces only; a second
	// one selects the right pods in no namespace (both selectors must match).
	apply(t, `apiVersion: spire.spiffe.io/v1alpha1
kind: ClusterSPIFFEID
metadata:
  name: edge-gateways
spec:
  spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
  namespaceSelector:
    matchLabels:
      spire.example.org/register: "true"
  podSelector:
    matchExpressions:
    - {key: app.kubernetes.io/managed-by, operator: In, values: [envoy-gateway]}
    - {key: app.kubernetes.io/component, operator: In, values: [proxy]}
`)
	apply(t, `apiVersion: spire.spiffe.io/v1alpha1
kind: ClusterSPIFFEID
metadata:
  name: proxies-in-no-namespace
spec:
  spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
  namespaceSelector:
    matchLabels:
      spire.example.org/register: "nowhere"
  podSelector:
    matchLabels:
      app.kubernetes.io/component: proxy
`)

	t.Run("one-unselected", func(t *testing.T) {
		r := runCheck(t, bin, cp.KubeconfigPath, config)
		if r.Status != "warn" || !strings.Contains(r.Message, "1 of 2 spire-flavor gateway pod(s) are selected by none of the 2 ClusterSPIFFEID(s)") {
			t.Fatalf("%+v", r)
		}
		if len(r.Pods) != 1 || r.Pods[0].Namespace != "edge-unregistered" || r.Pods[0].Problem != "no-clusterspiffeid" {
			t.Fatalf("pods %+v", r.Pods)
		}
		if !strings.Contains(strings.Join(r.Details, "\n"), "edge/envoy-default-eg-e41e7b31-5d8c6f7b9c-7h2mv: selected by ClusterSPIFFEID [edge-gateways]") {
			t.Fatalf("details %v", r.Details)
		}
		t.Logf("%s; %v", r.Message, r.Details)
	})

	// No selectors: every pod in every namespace, as the controller lists them.
	apply(t, `apiVersion: spire.spiffe.io/v1alpha1
kind: ClusterSPIFFEID
metadata:
  name: everything
spec:
  spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
`)
	t.Run("all-selected", func(t *testing.T) {
		r := runCheck(t, bin, cp.KubeconfigPath, config)
		if r.Status != "pass" || !strings.Contains(r.Message, "all 2 spire-flavor gateway pod(s) are selected by a ClusterSPIFFEID") || len(r.Pods) != 0 {
			t.Fatalf("%+v", r)
		}
	})

	t.Run("docs-clusterspiffeid", func(t *testing.T) {
		// The ClusterSPIFFEID of docs/spire.md is accepted by the real CRD's
		// schema, which does reject a spec without its required template.
		data, err := os.ReadFile("../../docs/spire.md")
		if err != nil {
			t.Fatal(err)
		}
		const marker = "```yaml\n# kubernetes: ClusterSPIFFEID\n"
		i := strings.Index(string(data), marker)
		if i < 0 {
			t.Fatal("docs/spire.md has no ClusterSPIFFEID block")
		}
		block := string(data)[i+len(marker):]
		block = block[:strings.Index(block, "```")]
		var u unstructured.Unstructured
		if err := yaml.Unmarshal([]byte(block), &u.Object); err != nil {
			t.Fatal(err)
		}
		bad := u.DeepCopy()
		bad.SetName("no-template")
		unstructured.RemoveNestedField(bad.Object, "spec", "spiffeIDTemplate")
		if err := c.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "spiffeIDTemplate") {
			t.Fatalf("the CRD schema accepted a ClusterSPIFFEID without spiffeIDTemplate: %v", err)
		}
		u.SetName("docs-" + u.GetName()) // beside this test's own edge-gateways
		if err := c.Create(ctx, &u); err != nil {
			t.Fatalf("the docs' ClusterSPIFFEID: %v", err)
		}
	})

	t.Run("forbidden", func(t *testing.T) {
		// A user that may read pods and namespaces but not ClusterSPIFFEIDs.
		user, err := cp.Env.AddUser(envtest.User{Name: "auditor"}, cp.Config)
		if err != nil {
			t.Fatal(err)
		}
		role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "spire-check-auditor"}, Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods", "namespaces", "configmaps", "services", "secrets"}, Verbs: []string{"get", "list"}},
		}}
		if err := c.Create(ctx, role); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "spire-check-auditor"},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "auditor"}}}); err != nil {
			t.Fatal(err)
		}
		kc, err := user.KubeConfig()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "kubeconfig")
		if err := os.WriteFile(path, kc, 0o600); err != nil {
			t.Fatal(err)
		}
		r := runCheck(t, bin, path, config)
		if r.Status != "warn" || !strings.Contains(r.Message, "reading ClusterSPIFFEIDs is forbidden") {
			t.Fatalf("%+v", r)
		}
	})
}

// installCRD creates the fixture CRD and waits until it is served.
func installCRD(ctx context.Context, t *testing.T, c client.Client) {
	t.Helper()
	f, err := os.Open(crdFixture)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	var crd *unstructured.Unstructured
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if obj != nil {
			crd = &unstructured.Unstructured{Object: obj}
		}
	}
	if crd == nil || crd.GetKind() != "CustomResourceDefinition" {
		t.Fatalf("%s holds no CRD", crdFixture)
	}
	if err := c.Create(ctx, crd); err != nil {
		t.Fatal(err)
	}
	for {
		var got unstructured.Unstructured
		got.SetGroupVersionKind(crd.GroupVersionKind())
		if err := c.Get(ctx, client.ObjectKey{Name: crd.GetName()}, &got); err != nil {
			t.Fatal(err)
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, cond := range conds {
			m, _ := cond.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("CRD %s not established", crd.GetName())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
