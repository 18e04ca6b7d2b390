package server

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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

// benchHTTPS sends the review to a real Server (server.New, TLS 1.3,
// HTTP/1.1 keep-alive) from b.RunParallel clients: the whole server path —
// TLS records, net/http, the handler, GC — as the API server exercises it.
// The clients run in the same process, so ns/op and allocs/op include
// them; profile with -cpuprofile and focus on net/http.(*conn).serve for
// the server's share. `go run ./test/load cpu` measures the server's CPU
// alone, as a separate process.
func benchHTTPS(b *testing.B, body []byte, wantPatch bool) {
	ts := startTestServer(b, nil)
	tr := ts.client.Transport.(*http.Transport)
	tr.TLSClientConfig.MinVersion = tls.VersionTLS13
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := ts.client.Post(ts.url, "application/json", bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			out, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != http.StatusOK || bytes.Contains(out, []byte(`"patch"`)) != wantPatch {
				b.Errorf("unexpected response %d (%v): %.200s", resp.StatusCode, err, out)
				return
			}
		}
	})
}

// apiserverReview is a review recorded from a real kube-apiserver
// (testdata/apiserver-reviews), compacted as it was sent.
func apiserverReview(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "apiserver-reviews", name))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := json.Compact(&b, data); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// The reviews kube-apiserver sent for Gloo's chart pod and a plain app:
// managedFields, the token volume and defaults included.
func BenchmarkReviewAPIServerGloo(b *testing.B) {
	benchHandler(b, apiserverReview(b, "gloo-chart.json"), true)
}

func BenchmarkReviewAPIServerSkip(b *testing.B) {
	benchHandler(b, apiserverReview(b, "plain-app.json"), false)
}

func BenchmarkHTTPSReviewAPIServerGloo(b *testing.B) {
	benchHTTPS(b, apiserverReview(b, "gloo-chart.json"), true)
}

func BenchmarkHTTPSReviewAPIServerSkip(b *testing.B) {
	benchHTTPS(b, apiserverReview(b, "plain-app.json"), false)
}
