package server

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"

	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/istio"
)

// fakeResolver picks settings by the pod's label "rev"; a pod labelled
// "istio" is one Istio's own injector selects.
type fakeResolver map[string]*inject.Settings

func (f fakeResolver) Resolve(pod *corev1.Pod) (*inject.Settings, string, *inject.IstioInjection, map[string]string) {
	var istio *inject.IstioInjection
	if v := pod.Labels["istio"]; v != "" {
		istio = &inject.IstioInjection{Cause: "namespace label istio.io/rev=" + v, Revision: v}
	}
	rev := pod.Labels["rev"]
	if s, ok := f[rev]; ok {
		return s, "", istio, nil
	}
	return f[""], "Istio revision " + rev + " is not installed; installed revisions: a", istio, nil
}

func TestHandlerResolver(t *testing.T) {
	cfg := inject.DefaultConfig()
	cfg.IstioVersion, cfg.CAAddress = "1.21.6", "istiod-a.istio-system.svc:15012"
	revA := cfg.MustResolve().WithRevision("a")
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	h := NewHandler(inject.DefaultConfig().MustResolve(), ErrorPolicyDeny, m, logr.Discard()).
		WithResolver(fakeResolver{"": inject.DefaultConfig().MustResolve(), "a": revA})
	gloo := examplePodJSON(t, "gloo-gateway-proxy.yaml")

	res := post(t, h, "application/json", review(t, admissionV1, withAnnotations(t, gloo, nil, map[string]string{"rev": "a"}), nil))
	if !res.resp.Allowed || len(res.resp.Patch) == 0 {
		t.Fatalf("revision a: %s", res.raw)
	}
	patch := string(res.resp.Patch)
	for _, want := range []string{"docker.io/istio/proxyv2:1.21.6", "istiod-a.istio-system.svc:15012", `\"revision\":\"a\"`} {
		if !strings.Contains(patch, want) {
			t.Errorf("patch lacks %s", want)
		}
	}

	res = post(t, h, "application/json", review(t, admissionV1, withAnnotations(t, gloo, nil, map[string]string{"rev": "b"}), nil))
	if !res.resp.Allowed || len(res.resp.Patch) != 0 || len(res.resp.Warnings) != 1 ||
		!strings.Contains(res.resp.Warnings[0], "not injected (unknown-revision): Istio revision b is not installed") {
		t.Fatalf("unknown revision: %s", res.raw)
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues("skipped", "unknown-revision")); got != 1 {
		t.Errorf("metric unknown-revision %v", got)
	}
	// Not a gateway: the screen's answer, no warning.
	app := examplePodJSON(t, "plain-app.yaml")
	res = post(t, h, "application/json", review(t, admissionV1, withAnnotations(t, app, nil, map[string]string{"rev": "b"}), nil))
	if !res.resp.Allowed || len(res.resp.Warnings) != 0 || len(res.resp.Patch) != 0 {
		t.Fatalf("app pod: %s", res.raw)
	}

	// Istio's injector selects the gateway: left to it, with a warning
	// naming the cause and the fix, whatever the revision.
	for _, rev := range []string{"a", "b"} {
		res = post(t, h, "application/json", review(t, admissionV1, withAnnotations(t, gloo, nil, map[string]string{"rev": rev, "istio": "canary"}), nil))
		if !res.resp.Allowed || len(res.resp.Patch) != 0 || len(res.resp.Warnings) != 1 ||
			!strings.Contains(res.resp.Warnings[0], "not injected (istio-will-inject): Istio's sidecar injector selects this gateway through namespace label istio.io/rev=canary") ||
			!strings.Contains(res.resp.Warnings[0], inject.AnnotationIstioRevision+"=canary") {
			t.Fatalf("Istio will inject (revision %s): %s", rev, res.raw)
		}
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues("skipped", "istio-will-inject")); got != 2 {
		t.Errorf("metric istio-will-inject %v", got)
	}
	// An application pod Istio selects hears nothing from us (partial
	// decode path).
	res = post(t, h, "application/json", review(t, admissionV1, withAnnotations(t, app, nil, map[string]string{"istio": "canary"}), nil))
	if !res.resp.Allowed || len(res.resp.Warnings) != 0 || len(res.resp.Patch) != 0 {
		t.Fatalf("app pod Istio selects: %s", res.raw)
	}
}

// labellingResolver is a fakeResolver that also knows namespace labels
// (as Istio discovery does).
type labellingResolver struct {
	fakeResolver
	ns map[string]map[string]string
}

func (r labellingResolver) Resolve(pod *corev1.Pod) (*inject.Settings, string, *inject.IstioInjection, map[string]string) {
	s, problem, istio, _ := r.fakeResolver.Resolve(pod)
	return s, problem, istio, r.ns[pod.Namespace]
}

// withHostNetwork sets spec.hostNetwork on a pod in JSON.
func withHostNetwork(t *testing.T, podJSON []byte) []byte {
	t.Helper()
	var obj map[string]any
	if err := json.Unmarshal(podJSON, &obj); err != nil {
		t.Fatal(err)
	}
	obj["spec"].(map[string]any)["hostNetwork"] = true
	out, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestHandlerAmbientNamespace: with a resolver that knows namespace labels,
// a gateway in an ambient namespace is skipped (reason ambient) after
// Istio's injector had its say and before the revision is checked; a
// hostNetwork gateway there is injected with a warning; the pod label
// istio.io/dataplane-mode=none opts the pod out of ambient.
func TestHandlerAmbientNamespace(t *testing.T) {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	base := inject.DefaultConfig().MustResolve()
	ambientNS := map[string]map[string]string{"gloo-system": {inject.LabelDataplaneMode: inject.DataplaneModeAmbient}}
	gloo := examplePodJSON(t, "gloo-gateway-proxy.yaml")
	sdsAgent := map[string]string{inject.AnnotationFlavor: string(inject.FlavorSDSAgent)}

	for _, tc := range []struct {
		name        string
		resolver    Resolver
		pod         []byte
		wantReason  string // "" means injected
		wantWarning string // substring of the only warning; "" means none
	}{
		{"ambient namespace", labellingResolver{fakeResolver{"": base}, ambientNS},
			withAnnotations(t, gloo, nil, map[string]string{"rev": ""}), "ambient", "not injected (ambient): the gateway is enrolled in Istio ambient (namespace label istio.io/dataplane-mode=ambient)"},
		{"ambient namespace, unknown revision: ambient wins", labellingResolver{fakeResolver{"": base}, ambientNS},
			withAnnotations(t, gloo, nil, map[string]string{"rev": "b"}), "ambient", "not injected (ambient)"},
		{"ambient namespace, Istio's injector selects the pod: Istio wins", labellingResolver{fakeResolver{"": base}, ambientNS},
			withAnnotations(t, gloo, nil, map[string]string{"rev": "", "istio": "canary"}), "istio-will-inject", "not injected (istio-will-inject)"},
		{"ambient namespace, pod opts out of ambient", labellingResolver{fakeResolver{"": base}, ambientNS},
			withAnnotations(t, gloo, nil, map[string]string{"rev": "", inject.LabelDataplaneMode: inject.DataplaneModeNone}), "", ""},
		{"ambient namespace, hostNetwork gateway", labellingResolver{fakeResolver{"": base}, ambientNS},
			withHostNetwork(t, withAnnotations(t, gloo, sdsAgent, map[string]string{"rev": ""})), "", "sds-injector: the gateway runs on the host network, which Istio ambient cannot capture"},
		{"namespace not enrolled", labellingResolver{fakeResolver{"": base}, map[string]map[string]string{"gloo-system": {"team": "edge"}}},
			withAnnotations(t, gloo, nil, map[string]string{"rev": ""}), "", ""},
		{"resolver without namespace labels", fakeResolver{"": base},
			withAnnotations(t, gloo, nil, map[string]string{"rev": ""}), "", ""},
		{"resolver without namespace labels, ambient pod label", fakeResolver{"": base},
			withAnnotations(t, gloo, nil, map[string]string{"rev": "", inject.LabelDataplaneMode: inject.DataplaneModeAmbient}), "ambient", "(pod label istio.io/dataplane-mode=ambient)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHandler(base, ErrorPolicyDeny, m, logr.Discard()).WithResolver(tc.resolver)
			res := post(t, h, "application/json", review(t, admissionV1, tc.pod, nil))
			if !res.resp.Allowed {
				t.Fatalf("denied: %s", res.raw)
			}
			if injected := len(res.resp.Patch) > 0; injected != (tc.wantReason == "") {
				t.Fatalf("injected %v, want reason %q: %s", injected, tc.wantReason, res.raw)
			}
			switch {
			case tc.wantWarning == "" && len(res.resp.Warnings) != 0:
				t.Errorf("unexpected warnings %q", res.resp.Warnings)
			case tc.wantWarning != "" && (len(res.resp.Warnings) != 1 || !strings.Contains(res.resp.Warnings[0], tc.wantWarning)):
				t.Errorf("warnings %q, want one containing %q", res.resp.Warnings, tc.wantWarning)
			}
		})
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues("skipped", "ambient")); got != 3 {
		t.Errorf("metric ambient %v, want 3", got)
	}
}

// *istio.Discovery is the webhook's resolver.
var _ Resolver = (*istio.Discovery)(nil)
