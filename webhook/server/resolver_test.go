package server

import (
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// fakeResolver picks settings by the pod's label "rev"; a pod labelled
// "istio" is one Istio's own injector selects.
type fakeResolver map[string]*inject.Settings

func (f fakeResolver) Resolve(pod *corev1.Pod) (*inject.Settings, string, *inject.IstioInjection) {
	var istio *inject.IstioInjection
	if v := pod.Labels["istio"]; v != "" {
		istio = &inject.IstioInjection{Cause: "namespace label istio.io/rev=" + v, Revision: v}
	}
	rev := pod.Labels["rev"]
	if s, ok := f[rev]; ok {
		return s, "", istio
	}
	return f[""], "Istio revision " + rev + " is not installed; installed revisions: a", istio
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
