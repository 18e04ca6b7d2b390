package server

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
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

// BenchmarkReviewPodSize: the Gloo pod grown to n env vars on the gateway
// container and m volumes (Istio once took seconds on a 2,000-env-var
// pod); the figures show the curve (docs/performance.md).
func BenchmarkReviewPodSize(b *testing.B) {
	for _, size := range []struct{ env, volumes int }{{50, 10}, {500, 30}, {2000, 100}} {
		b.Run(fmt.Sprintf("env=%d,volumes=%d", size.env, size.volumes), func(b *testing.B) {
			benchHandler(b, review(b, "admission.k8s.io/v1", grownPod(b, size.env, size.volumes), nil), true)
		})
	}
}

func grownPod(b *testing.B, env, volumes int) []byte {
	var pod corev1.Pod
	if err := json.Unmarshal(examplePodJSONB(b, "gloo-gateway-proxy.yaml"), &pod); err != nil {
		b.Fatal(err)
	}
	for i := range env {
		pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: fmt.Sprintf("VAR_%04d", i), Value: fmt.Sprintf("value-%d", i)})
	}
	for i := range volumes {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: fmt.Sprintf("v%03d", i), VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	}
	raw, err := json.Marshal(&pod)
	if err != nil {
		b.Fatal(err)
	}
	return raw
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

// BenchmarkDecodeLayers: what decoding the recorded reviews costs, layer by
// layer, with the fast path's options — the lower bound of a review in
// this design (docs/performance.md): valid = the tokenizer's walk alone
// (jsonv2 validates every byte in any decode), envelope = the transport
// checks' decode, screen = the skip path's partial decode, pod = the
// injection path's whole decode with API types.
func BenchmarkDecodeLayers(b *testing.B) {
	for _, name := range []string{"gloo-chart.json", "plain-app.json"} {
		body := apiserverReview(b, name)
		decode := func(layer string, f func() error) {
			b.Run(name+"/"+layer, func(b *testing.B) {
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					if err := f(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		decode("valid", func() error {
			if !jsontext.Value(body).IsValid() {
				return errors.New("invalid JSON")
			}
			return nil
		})
		decode("envelope", func() error { var env envelope; return jsonv2.Unmarshal(body, &env, envelopeOptions) })
		decode("screen", func() error { var r fastReview[screenPod]; return jsonv2.Unmarshal(body, &r, envelopeOptions) })
		decode("pod", func() error { var r fastReview[corev1.Pod]; return jsonv2.Unmarshal(body, &r, envelopeOptions) })
	}
}
