package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/sds-injector/sds-injector/webhook/inject"

	"github.com/sds-injector/sds-injector/test/harness"
)

const (
	labelInject = inject.LabelInject
	nsLabel     = inject.NamespaceLabel
)

func TestNamespaceMode(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	startWebhook(t, inject.DefaultConfig(), nil)
	installMode(t, ModeNamespace)
	enabled := namespace(t, map[string]string{nsLabel: "enabled"})
	plain := namespace(t, nil)

	t.Run("gateway in an enabled namespace is injected", func(t *testing.T) {
		st := assertInjected(t, create(t, glooPod(t, enabled, "gloo", nil, nil)))
		if st.GatewayProfile != "gloo-edge" || st.GatewayContainer != "gateway-proxy" {
			t.Errorf("status %+v", st)
		}
		eg := create(t, harness.ExamplePod(t, "envoy-gateway-proxy.yaml", enabled, "eg", nil, nil))
		if st := assertInjected(t, eg); st.GatewayContainer != "envoy" {
			t.Errorf("Envoy Gateway status %+v", st)
		}
	})
	t.Run("non-gateway is untouched and not even sent", func(t *testing.T) {
		// The looks-like-a-gateway matchCondition keeps the namespace's
		// ordinary pods away from the webhook.
		before := requestsTotal(t)
		assertNotInjected(t, create(t, harness.ExamplePod(t, "plain-app.yaml", enabled, "app", nil, nil)), 1)
		if after := requestsTotal(t); after != before {
			t.Errorf("the apiserver called the webhook for a non-gateway pod (%v -> %v requests)", before, after)
		}
	})
	t.Run("an invalid opt-in value on an ordinary pod is sent and refused", func(t *testing.T) {
		// Any value of the inject label or annotation but "false" reaches
		// the engine, so a typo is answered with what to fix.
		for name, pod := range map[string]*corev1.Pod{
			"typo-label": harness.ExamplePod(t, "plain-app.yaml", enabled, "typo-label", map[string]string{labelInject: "yes"}, nil),
			"typo-ann":   harness.ExamplePod(t, "plain-app.yaml", enabled, "typo-ann", nil, map[string]string{labelInject: "True"}),
		} {
			err := cp.Client.Create(context.Background(), pod)
			if err == nil || !strings.Contains(err.Error(), `sds-injector.io/inject=`) || !strings.Contains(err.Error(), `is invalid: use "true" or "false"`) {
				t.Errorf("%s: want a denial naming the fix, got %v", name, err)
			}
		}
	})
	t.Run("a pod naming its gateway container is injected", func(t *testing.T) {
		pod := harness.ExamplePod(t, "plain-app.yaml", enabled, "generic", nil, map[string]string{inject.AnnotationGatewayContainer: "nginx"})
		assertInjected(t, create(t, pod))
	})
	t.Run("opt-out label", func(t *testing.T) {
		assertNotInjected(t, create(t, glooPod(t, enabled, "out-label", map[string]string{labelInject: "false"}, nil)), 1)
	})
	t.Run("opt-out annotation", func(t *testing.T) {
		assertNotInjected(t, create(t, glooPod(t, enabled, "out-ann", nil, map[string]string{labelInject: "false"})), 1)
	})
	t.Run("label true beats annotation false", func(t *testing.T) {
		assertInjected(t, create(t, glooPod(t, enabled, "label-wins", map[string]string{labelInject: "true"}, map[string]string{labelInject: "false"})))
	})
	t.Run("namespace without the label is not called", func(t *testing.T) {
		assertNotInjected(t, create(t, glooPod(t, plain, "gloo", nil, nil)), 1)
	})
	t.Run("already integrated Gloo is skipped", func(t *testing.T) {
		pod := create(t, harness.ExamplePod(t, "gloo-gateway-proxy-istio-integrated.yaml", enabled, "integrated", nil, nil))
		assertNotInjected(t, pod, 3)
	})
}

func TestPerGatewayMode(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	startWebhook(t, inject.DefaultConfig(), nil)
	installMode(t, ModePerGateway)
	ns := namespace(t, nil)

	cases := map[string]struct {
		labels, annotations map[string]string
		inject              bool
	}{
		"label true":                        {labels: map[string]string{labelInject: "true"}, inject: true},
		"annotation true":                   {annotations: map[string]string{labelInject: "true"}, inject: true},
		"label false beats annotation true": {labels: map[string]string{labelInject: "false"}, annotations: map[string]string{labelInject: "true"}},
		"label true beats annotation false": {labels: map[string]string{labelInject: "true"}, annotations: map[string]string{labelInject: "false"}, inject: true},
		"gateway without opt-in":            {},
		"annotation false":                  {annotations: map[string]string{labelInject: "false"}},
	}
	i := 0
	for name, tc := range cases {
		i++
		t.Run(name, func(t *testing.T) {
			pod := create(t, glooPod(t, ns, fmt.Sprintf("gw-%d", i), tc.labels, tc.annotations))
			if tc.inject {
				assertInjected(t, pod)
			} else {
				assertNotInjected(t, pod, 1)
			}
		})
	}
	t.Run("a namespace in namespace mode is left to that mode", func(t *testing.T) {
		enabled := namespace(t, map[string]string{nsLabel: "enabled"})
		assertNotInjected(t, create(t, glooPod(t, enabled, "gw", map[string]string{labelInject: "true"}, nil)), 1)
	})
	t.Run("opted-in single-container pod of no known gateway", func(t *testing.T) {
		pod := harness.ExamplePod(t, "plain-app.yaml", ns, "any-envoy", nil, map[string]string{labelInject: "true"})
		if st := assertInjected(t, create(t, pod)); st.GatewayProfile != inject.ProfileGeneric || st.GatewayContainer != "nginx" {
			t.Errorf("status %+v", st)
		}
	})
}

func TestClusterWideMode(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	startWebhook(t, inject.DefaultConfig(), nil)
	installMode(t, ModeClusterWide)
	any := namespace(t, nil)
	disabled := namespace(t, map[string]string{nsLabel: "disabled"})

	assertInjected(t, create(t, glooPod(t, any, "gloo", nil, nil)))
	assertInjected(t, create(t, harness.ExamplePod(t, "envoy-gateway-proxy.yaml", any, "eg", nil, nil)))
	assertNotInjected(t, create(t, harness.ExamplePod(t, "plain-app.yaml", any, "app", nil, nil)), 1)
	assertNotInjected(t, create(t, glooPod(t, disabled, "gloo", nil, nil)), 1)
	assertNotInjected(t, create(t, glooPod(t, any, "out", map[string]string{labelInject: "false"}, nil)), 1)
	generic := harness.ExamplePod(t, "plain-app.yaml", any, "generic", nil, map[string]string{inject.AnnotationGatewayContainer: "nginx"})
	assertInjected(t, create(t, generic))

	// The matchConditions keep ordinary pods away from the webhook entirely.
	before := requestsTotal(t)
	assertNotInjected(t, create(t, harness.ExamplePod(t, "plain-app.yaml", any, "app2", nil, nil)), 1)
	if after := requestsTotal(t); after != before {
		t.Errorf("the apiserver called the webhook for a non-gateway pod (%v -> %v requests)", before, after)
	}
}

// TestEveryFlavorIsValid creates one pod per flavor x Istio profile x
// placement: the apiserver's own validation must accept every injected spec.
// A flavor the pod's gateway profile cannot consume (files on Gloo or Envoy
// Gateway) is requested through the generic profile, which takes any: the
// pod shape stays the same.
func TestEveryFlavorIsValid(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	startWebhook(t, inject.DefaultConfig(), nil)
	installMode(t, ModeNamespace)
	ns := namespace(t, map[string]string{nsLabel: "enabled"})
	gateways := []struct{ file, profile, container string }{
		{"gloo-gateway-proxy.yaml", "gloo-edge", "gateway-proxy"},
		{"envoy-gateway-proxy.yaml", "envoy-gateway", "envoy"},
	}
	consumes := func(profile string, f inject.Flavor) bool {
		for _, p := range inject.BuiltinProfiles() {
			if p.Name == profile {
				return len(p.Flavors) == 0 || slices.Contains(p.Flavors, f)
			}
		}
		t.Fatalf("no built-in profile %s", profile)
		return false
	}
	n := 0
	for _, flavor := range inject.Flavors {
		for _, version := range []string{"1.13.9", "1.21.6", inject.DefaultIstioVersion} {
			for _, native := range []string{"false", "true"} {
				n++
				for _, gw := range gateways {
					ann := map[string]string{
						inject.AnnotationFlavor:        string(flavor),
						inject.AnnotationIstioVersion:  version,
						inject.AnnotationNativeSidecar: native,
					}
					if !consumes(gw.profile, flavor) {
						ann[inject.AnnotationGatewayContainer] = gw.container
					}
					file := gw.file
					pod := create(t, harness.ExamplePod(t, file, ns, fmt.Sprintf("p%d-%s", n, file[:4]), nil, ann))
					st := assertInjected(t, pod)
					if st.Flavor != flavor || st.IstioVersion != version || (st.Placement == inject.PlacementNative) != (native == "true") {
						t.Errorf("%s: status %+v", pod.Name, st)
					}
					if native == "true" {
						if rp := pod.Spec.InitContainers[0].RestartPolicy; rp == nil || *rp != corev1.ContainerRestartPolicyAlways {
							t.Errorf("%s: the stored native sidecar lost restartPolicy", pod.Name)
						}
					}
				}
			}
		}
	}
}

func TestDryRunCreatesNothing(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	startWebhook(t, inject.DefaultConfig(), nil)
	installMode(t, ModeNamespace)
	ns := namespace(t, map[string]string{nsLabel: "enabled"})
	pod := glooPod(t, ns, "dry", nil, nil)
	if err := cp.Client.Create(context.Background(), pod, client.DryRunAll); err != nil {
		t.Fatal(err)
	}
	assertInjected(t, pod) // the dry-run answer shows the injection
	if _, err := getPod(context.Background(), ns, "dry"); !apierrors.IsNotFound(err) {
		t.Fatalf("dry run stored a pod: %v", err)
	}
}

// TestReinvocation: with reinvocationPolicy IfNeeded (the chart's
// modes.*.reinvocationPolicy, for clusters with a webhook after ours that
// changes gateway pods), another webhook changes the pod after ours, so the
// apiserver calls ours again; the engine must leave the injected pod as it
// is. As shipped (Never) the second webhook's change is not seen by ours.
func TestReinvocation(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	relabel := &webhook.Admission{Handler: admission.HandlerFunc(func(ctx context.Context, req admission.Request) admission.Response {
		var pod corev1.Pod
		if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
			return admission.Errored(http.StatusBadRequest, err)
		}
		if pod.Labels["relabelled"] == "yes" {
			return admission.Allowed("")
		}
		return admission.Patched("", jsonPatchAddLabel("relabelled", "yes"))
	})}
	startWebhook(t, inject.DefaultConfig(), map[string]http.Handler{"/relabel": relabel})
	shipped, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "webhook", string(ModeNamespace)+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		policy     string
		reinvoked  float64
		configured func(t *testing.T) []byte
	}{
		{"Never", 0, func(*testing.T) []byte { return shipped }},
		{"IfNeeded", 1, func(t *testing.T) []byte {
			b := bytes.ReplaceAll(shipped, []byte("reinvocationPolicy: Never"), []byte("reinvocationPolicy: IfNeeded"))
			if bytes.Equal(b, shipped) {
				t.Fatal("the shipped namespace mode has no reinvocationPolicy: Never to change")
			}
			return b
		}},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "namespace-mode.yaml")
			if err := os.WriteFile(file, tc.configured(t), 0o600); err != nil {
				t.Fatal(err)
			}
			mwc := installFile(t, file)

			// A second configuration, sorted after ours by name, served
			// in-process.
			other := mwc.DeepCopy()
			other.ObjectMeta = metaNamed("zz-test-relabel")
			url := strings.Replace(*other.Webhooks[0].ClientConfig.URL, "/inject", "/relabel", 1)
			other.Webhooks[0].ClientConfig.URL = &url
			other.Webhooks[0].Name = "relabel.test.sds-injector.io"
			if err := cp.Client.Create(context.Background(), other); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { removeWebhooks(t, other) })
			waitWebhooks(t, other, true)

			ns := namespace(t, map[string]string{nsLabel: "enabled"})
			injected := requestsFor(t, "injected", "injected")
			before := requestsFor(t, "skipped", "already-injected")
			pod := create(t, glooPod(t, ns, "reinvoked", nil, nil))
			assertInjected(t, pod)
			if pod.Labels["relabelled"] != "yes" {
				t.Fatalf("the second webhook did not run")
			}
			if got := requestsFor(t, "injected", "injected"); got != injected+1 {
				t.Errorf("injections %v -> %v, want one more", injected, got)
			}
			if after := requestsFor(t, "skipped", "already-injected"); after != before+tc.reinvoked {
				t.Errorf("reinvocationPolicy %s: sds-injector was reinvoked on the injected pod %v times, want %v", tc.policy, after-before, tc.reinvoked)
			}
		})
	}
}

// TestWebhookDown: with the webhook process gone, Ignore modes admit pods
// uninjected and Fail modes refuse them naming the webhook.
func TestWebhookDown(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	ws := startWebhook(t, inject.DefaultConfig(), nil)
	installMode(t, ModeNamespace)
	installMode(t, ModePerGateway)
	enabled := namespace(t, map[string]string{nsLabel: "enabled"})
	plain := namespace(t, nil)
	assertInjected(t, create(t, glooPod(t, enabled, "while-up", nil, nil)))

	ws.stop()
	t.Run("namespace mode fails open", func(t *testing.T) {
		assertNotInjected(t, create(t, glooPod(t, enabled, "while-down", nil, nil)), 1)
	})
	t.Run("per-gateway mode fails closed", func(t *testing.T) {
		err := cp.Client.Create(context.Background(), glooPod(t, plain, "asked", map[string]string{labelInject: "true"}, nil))
		if err == nil {
			t.Fatal("pod admitted although its webhook is down and failurePolicy is Fail")
		}
		if !strings.Contains(err.Error(), "object-label.sds-injector.io") || !strings.Contains(err.Error(), "failed calling webhook") {
			t.Errorf("error does not name the webhook: %v", err)
		}
		if _, err := getPod(context.Background(), plain, "asked"); !apierrors.IsNotFound(err) {
			t.Errorf("a refused pod was stored: %v", err)
		}
	})
}

// TestWarningsReachKubectl uses a real kubectl: a gateway that asked for
// injection but could not get it shows why.
func TestWarningsReachKubectl(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	startWebhook(t, inject.DefaultConfig(), nil)
	installMode(t, ModeNamespace)
	ns := namespace(t, map[string]string{nsLabel: "enabled"})
	pod := glooPod(t, ns, "bad-flavor", nil, map[string]string{inject.AnnotationFlavor: "envoy"})
	stderr := kubectlApply(t, pod)
	want := `Warning: sds-injector: not injected (invalid-override): annotation sds-injector.io/flavor="envoy" is invalid`
	if !strings.Contains(stderr, want) {
		t.Errorf("kubectl stderr lacks the warning %q:\n%s", want, stderr)
	}
	stored, err := getPod(context.Background(), ns, "bad-flavor")
	if err != nil {
		t.Fatal(err)
	}
	assertNotInjected(t, stored, 1)

	t.Run("an invalid opt-in value is refused with the reason", func(t *testing.T) {
		err := cp.Client.Create(context.Background(), glooPod(t, ns, "bad-label", map[string]string{labelInject: "yes"}, nil))
		if err == nil || !strings.Contains(err.Error(), `sds-injector: label sds-injector.io/inject="yes" is invalid: use "true" or "false"`) {
			t.Errorf("want a denial naming the fix, got %v", err)
		}
	})
}

// TestDeploymentThroughKubectl: a real `kubectl apply` of a Deployment; the
// controller manager's ReplicaSet creates the pod through the webhook.
func TestDeploymentThroughKubectl(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	startWebhook(t, inject.DefaultConfig(), nil)
	installMode(t, ModeNamespace)
	ns := namespace(t, map[string]string{nsLabel: "enabled"})
	manifest := fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: gateway-proxy, namespace: %s}
spec:
  replicas: 1
  selector: {matchLabels: {gloo: gateway-proxy}}
  template:
    metadata:
      labels: {gloo: gateway-proxy, gateway-proxy-id: gateway-proxy}
    spec:
      serviceAccountName: gateway-proxy
      containers:
      - name: gateway-proxy
        image: quay.io/solo-io/gloo-envoy-wrapper:1.19.20
`, ns)
	out, err := kubectl(t, manifest, "apply", "-f", "-")
	if err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	var pod *corev1.Pod
	harness.Eventually(t, 90*time.Second, "a ReplicaSet pod to appear", func(ctx context.Context) (bool, error) {
		var pods corev1.PodList
		if err := cp.Client.List(ctx, &pods, client.InNamespace(ns)); err != nil {
			return false, err
		}
		if len(pods.Items) == 0 {
			return false, nil
		}
		pod = &pods.Items[0]
		return true, nil
	})
	assertInjected(t, pod)
	for _, e := range pod.Spec.Containers[0].Env {
		if e.Name == "ISTIO_META_WORKLOAD_NAME" && e.Value != "gateway-proxy" {
			t.Errorf("ISTIO_META_WORKLOAD_NAME = %q, want the Deployment's name", e.Value)
		}
	}
}

func kubectl(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd, err := cp.KubectlCmd(context.Background(), args...)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

func kubectlApply(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	data, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "pod.json")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, err := cp.KubectlCmd(context.Background(), "apply", "-f", file)
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, stderr.String())
	}
	return stderr.String()
}

// requestsFor reads sds_injector_admission_requests_total{result,reason}.
func requestsFor(t *testing.T, result, reason string) float64 {
	t.Helper()
	return sumRequests(t, func(m *dto.Metric) bool {
		var r, rs string
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "result":
				r = l.GetValue()
			case "reason":
				rs = l.GetValue()
			}
		}
		return r == result && rs == reason
	})
}

func requestsTotal(t *testing.T) float64 {
	return sumRequests(t, func(*dto.Metric) bool { return true })
}

func sumRequests(t *testing.T, match func(*dto.Metric) bool) float64 {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != "sds_injector_admission_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if match(m) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
