package inject

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/sds-injector/sds-injector/webhook/internal/fastpath"
)

// Figures are recorded in docs/performance.md (make bench).

func benchInject(b *testing.B, pod *corev1.Pod, want Outcome) {
	s := DefaultConfig().MustResolve()
	b.ReportAllocs()
	for b.Loop() {
		if r := Inject(pod, s); r.Decision.Outcome != want {
			b.Fatalf("%+v", r.Decision)
		}
	}
}

func BenchmarkInjectGloo(b *testing.B) {
	benchInject(b, readPod(b, examplesDir+"/gloo-gateway-proxy.yaml"), OutcomeInjected)
}

func BenchmarkInjectEnvoyGateway(b *testing.B) {
	benchInject(b, readPod(b, examplesDir+"/envoy-gateway-proxy.yaml"), OutcomeInjected)
}

func BenchmarkSkipNotAGateway(b *testing.B) {
	benchInject(b, readPod(b, examplesDir+"/plain-app.yaml"), OutcomeSkipped)
}

func BenchmarkInject500EnvVars(b *testing.B) {
	benchInject(b, readPod(b, testdataDir+"/env-500.in.yaml"), OutcomeInjected)
}

// BenchmarkInjectAndEncodePatch includes encoding the patch, the part of an
// admission response the engine is responsible for.
func BenchmarkInjectAndEncodePatch(b *testing.B) {
	pod := readPod(b, examplesDir+"/gloo-gateway-proxy.yaml")
	s := DefaultConfig().MustResolve()
	b.ReportAllocs()
	for b.Loop() {
		r := Inject(pod, s)
		if _, err := fastpath.MarshalPatch(r.Patch); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUninject(b *testing.B) {
	pod := readPod(b, examplesDir+"/gloo-gateway-proxy.yaml")
	injected := Inject(pod, DefaultConfig().MustResolve()).Pod
	b.ReportAllocs()
	for b.Loop() {
		if r := Uninject(injected); r.Decision.Reason != ReasonUninjected {
			b.Fatal(r.Decision)
		}
	}
}
