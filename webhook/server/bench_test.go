package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// Figures are recorded in docs/performance.md (make bench).

func benchHandler(b *testing.B, body []byte, wantPatch bool) {
	benchPath(b, body, wantPatch, true)
}

// benchPath runs the handler with the fast path on or off (off:
// controller-runtime's admission.Webhook decodes and encodes the review).
func benchPath(b *testing.B, body []byte, wantPatch, fast bool) {
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	h := NewHandler(inject.DefaultConfig().MustResolve(), ErrorPolicyDeny, m, logr.Discard())
	h.fast.Store(fast)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest(http.MethodPost, InjectPath, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusOK || bytes.Contains(w.Body.Bytes(), []byte(`"patch"`)) != wantPatch {
			b.Fatalf("unexpected response %d: %.200s", w.Code, w.Body.String())
		}
	}
}

func BenchmarkReviewGloo(b *testing.B) {
	t := &testing.T{}
	benchHandler(b, review(t, "admission.k8s.io/v1", examplePodJSONB(b, "gloo-gateway-proxy.yaml"), nil), true)
}

func BenchmarkReviewSkipNotAGateway(b *testing.B) {
	t := &testing.T{}
	benchHandler(b, review(t, "admission.k8s.io/v1", examplePodJSONB(b, "plain-app.yaml"), nil), false)
}

// BenchmarkReviewLargePod: a Gloo pod with 500 env vars and 30 volumes.
func BenchmarkReviewLargePod(b *testing.B) {
	var pod corev1.Pod
	if err := json.Unmarshal(examplePodJSONB(b, "gloo-gateway-proxy.yaml"), &pod); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 500; i++ {
		pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: fmt.Sprintf("VAR_%03d", i), Value: fmt.Sprintf("value-%d", i)})
	}
	for i := 0; i < 30; i++ {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: fmt.Sprintf("v%02d", i), VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	}
	raw, _ := json.Marshal(&pod)
	t := &testing.T{}
	benchHandler(b, review(t, "admission.k8s.io/v1", raw, nil), true)
}

// The same reviews through controller-runtime's path: the fast path is
// kept only while it is measurably faster than these.
func BenchmarkReviewGlooControllerRuntime(b *testing.B) {
	t := &testing.T{}
	benchPath(b, review(t, "admission.k8s.io/v1", examplePodJSONB(b, "gloo-gateway-proxy.yaml"), nil), true, false)
}

func BenchmarkReviewSkipNotAGatewayControllerRuntime(b *testing.B) {
	t := &testing.T{}
	benchPath(b, review(t, "admission.k8s.io/v1", examplePodJSONB(b, "plain-app.yaml"), nil), false, false)
}
