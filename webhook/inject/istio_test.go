package inject

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestLeftToIstio(t *testing.T) {
	s := DefaultConfig().MustResolve()
	in := IstioInjection{Cause: "namespace label istio.io/rev=canary (webhook rev.namespace.sidecar-injector.istio.io of istio-sidecar-injector-canary)", Revision: "canary"}
	gloo := readPod(t, "../../docs/examples/gloo-gateway-proxy.yaml")
	injected := readPod(t, "testdata/inject/istio-injected.in.yaml")
	app := readPod(t, "testdata/inject/istio-injected-app.in.yaml")
	plainApp := &corev1.Pod{}
	plainApp.Namespace = "bookinfo"
	plainApp.Spec.Containers = []corev1.Container{{Name: "reviews", Image: "example/reviews:1"}}
	optedOut := gloo.DeepCopy()
	optedOut.Annotations = map[string]string{LabelInject: "false"}

	for name, tc := range map[string]struct {
		pod        *corev1.Pod
		reason     Reason
		warn       bool
		wantInWarn []string
	}{
		"gateway istio will inject": {gloo, ReasonIstioWillInject, true, []string{in.Cause, `sidecar.istio.io/inject: "false"`, AnnotationIstioRevision + "=canary"}},
		"gateway istio injected":    {injected, ReasonIstioSidecar, true, []string{"annotation sidecar.istio.io/status", in.Cause, AnnotationIstioRevision + "=canary"}},
		"app istio injected":        {app, ReasonIstioSidecar, false, nil},
		"app istio will inject":     {plainApp, ReasonNotAGateway, false, nil},
		"gateway opted out of us":   {optedOut, ReasonOptedOut, false, nil},
	} {
		t.Run(name, func(t *testing.T) {
			before := tc.pod.DeepCopy()
			d := LeftToIstio(tc.pod, s, in)
			if d.Outcome != OutcomeSkipped || d.Reason != tc.reason || d.Warn != tc.warn {
				t.Fatalf("got %s/%s warn=%v (%s), want skipped/%s warn=%v", d.Outcome, d.Reason, d.Warn, d.Message, tc.reason, tc.warn)
			}
			for _, w := range tc.wantInWarn {
				if !strings.Contains(d.Message, w) {
					t.Errorf("message %q lacks %q", d.Message, w)
				}
			}
			if tc.pod.String() != before.String() {
				t.Errorf("LeftToIstio changed the pod")
			}
		})
	}
	if d := LeftToIstio(nil, s, in); d.Outcome != OutcomeError {
		t.Errorf("nil pod: %+v", d)
	}
}
