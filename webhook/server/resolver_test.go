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

// fakeResolver picks settings by the pod's istio.io/rev label.
type fakeResolver map[string]*inject.Settings

func (f fakeResolver) Resolve(pod *corev1.Pod) (*inject.Settings, string) {
	rev := pod.Labels[inject.LabelIstioRevision]
	if s, ok := f[rev]; ok {
		return s, ""
	}
	return f[""], "Istio revision " + rev + " is not installed; installed revisions: a"
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

	res := post(t, h, "application/json", review(t, admissionV1, withAnnotations(t, gloo, nil, map[string]string{inject.LabelIstioRevision: "a"}), nil))
	if !res.resp.Allowed || len(res.resp.Patch) == 0 {
		t.Fatalf("revision a: %s", res.raw)
	}
	patch := string(res.resp.Patch)
	for _, want := range []string{"docker.io/istio/proxyv2:1.21.6", "istiod-a.istio-system.svc:15012", `\"revision\":\"a\"`} {
		if !strings.Contains(patch, want) {
			t.Errorf("patch lacks %s", want)
		}
	}

	res = post(t, h, "application/json", review(t, admissionV1, withAnnotations(t, gloo, nil, map[string]string{inject.LabelIstioRevision: "b"}), nil))
	if !res.resp.Allowed || len(res.resp.Patch) != 0 || len(res.resp.Warnings) != 1 ||
		!strings.Contains(res.resp.Warnings[0], "not injected (unknown-revision): Istio revision b is not installed") {
		t.Fatalf("unknown revision: %s", res.raw)
	}
	if got := testutil.ToFloat64(m.requests.WithLabelValues("skipped", "unknown-revision")); got != 1 {
		t.Errorf("metric unknown-revision %v", got)
	}
	// Not a gateway: the screen's answer, no warning.
	app := examplePodJSON(t, "plain-app.yaml")
	res = post(t, h, "application/json", review(t, admissionV1, withAnnotations(t, app, nil, map[string]string{inject.LabelIstioRevision: "b"}), nil))
	if !res.resp.Allowed || len(res.resp.Warnings) != 0 || len(res.resp.Patch) != 0 {
		t.Fatalf("app pod: %s", res.raw)
	}
}
