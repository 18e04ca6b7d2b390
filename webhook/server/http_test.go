package server

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	admissionmetrics "sigs.k8s.io/controller-runtime/pkg/webhook/admission/metrics"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// panicking is a resolver that panics, standing in for any bug below the
// handler.
type panicking struct{}

func (panicking) Resolve(*corev1.Pod) (*inject.Settings, string, *inject.IstioInjection, map[string]string) {
	panic("resolver exploded")
}

// TestPanicIsRecovered: a panic while handling a review is answered under
// the error policy with a clear message, counted in
// controller_runtime_webhook_panics_total and in the handler's own
// metrics, on both paths, and the handler keeps serving.
func TestPanicIsRecovered(t *testing.T) {
	gloo := review(t, admissionV1, examplePodJSON(t, "gloo-gateway-proxy.yaml"), nil)
	app := review(t, admissionV1, examplePodJSON(t, "plain-app.yaml"), nil)
	for _, policy := range []ErrorPolicy{ErrorPolicyDeny, ErrorPolicyAllow} {
		t.Run(string(policy), func(t *testing.T) {
			p := newPair(t, inject.DefaultConfig().MustResolve(), policy).withResolver(panicking{})
			for _, body := range [][]byte{gloo, app} {
				before := testutil.ToFloat64(admissionmetrics.WebhookPanics)
				a, _ := p.compare(t, "application/json", body)
				if got := testutil.ToFloat64(admissionmetrics.WebhookPanics) - before; got != 2 {
					t.Errorf("controller_runtime_webhook_panics_total rose by %v for two panics (one per path)", got)
				}
				r := a.resp
				switch policy {
				case ErrorPolicyDeny:
					if r.Allowed || r.Result.Code != http.StatusForbidden || !strings.Contains(r.Result.Message, "internal error in sds-injector (resolver exploded); please report it") {
						t.Errorf("deny policy: %s", a.raw)
					}
				case ErrorPolicyAllow:
					if !r.Allowed || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "resolver exploded") {
						t.Errorf("allow policy: %s", a.raw)
					}
				}
				for _, h := range []*Handler{p.fast, p.cr} {
					if n := testutil.ToFloat64(h.metrics.requests.WithLabelValues("error", "panic")); n < 1 {
						t.Errorf("the panic is not counted as error/panic")
					}
				}
			}
			p.fast.WithResolver(nil)
			if a := serve(t, p.fast, "application/json", gloo); a.patch == nil {
				t.Fatalf("not serving after a panic: %s", a.raw)
			}
		})
	}
}

// fakeClock advances only when told to.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time          { return c.now }
func (c *fakeClock) advance(d time.Duration) { c.now = c.now.Add(d) }

// slowBody advances the clock while the body is read.
type slowBody struct {
	r     io.Reader
	clock *fakeClock
}

func (b *slowBody) Read(p []byte) (int, error) {
	b.clock.advance(time.Second)
	return b.r.Read(p)
}

// slowWriter advances the clock while the answer is written.
type slowWriter struct {
	*httptest.ResponseRecorder
	clock *fakeClock
}

func (w slowWriter) Write(p []byte) (int, error) {
	w.clock.advance(10 * time.Second)
	return w.ResponseRecorder.Write(p)
}

// TestMetricsCarryRuntimeSeries: the Go runtime and process series are on
// the webhook's registry whether or not controller-runtime's controller
// package (which registers them itself) is linked, and a second
// registration on the same registry reuses them.
func TestMetricsCarryRuntimeSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := NewMetrics(reg); err != nil {
			t.Fatal(err)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range families {
		have[f.GetName()] = true
	}
	for _, name := range []string{"go_memstats_mallocs_total", "go_goroutines", "process_resident_memory_bytes", "process_cpu_seconds_total"} {
		if !have[name] {
			t.Errorf("%s not exported", name)
		}
	}
}

// TestDurationCoversTheWholeRequest: sds_injector_admission_duration_seconds
// says it covers reading the body through writing the answer, and it does,
// on both paths: the clock moves only while the body is read (1 s per Read)
// and while the answer is written (10 s), and the observed durations
// include both.
func TestDurationCoversTheWholeRequest(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(durationHelp, "receiving an admission request's headers to writing the response") || strings.Contains(durationHelp, "after") {
		t.Fatalf("help text does not say what is measured: %q", durationHelp)
	}
	gloo := review(t, admissionV1, examplePodJSON(t, "gloo-gateway-proxy.yaml"), nil)
	for _, fast := range []bool{true, false} {
		clock := &fakeClock{now: time.Unix(0, 0)}
		h := NewHandler(inject.DefaultConfig().MustResolve(), ErrorPolicyDeny, m, logr.Discard())
		h.fast.Store(fast)
		h.now = clock.Now
		r := httptest.NewRequest(http.MethodPost, InjectPath, &slowBody{r: bytes.NewReader(gloo), clock: clock})
		r.Header.Set("Content-Type", "application/json")
		w := slowWriter{httptest.NewRecorder(), clock}
		h.ServeHTTP(w, r)
		if !bytes.Contains(w.Body.Bytes(), []byte(`"patch"`)) {
			t.Fatalf("not injected: %s", w.Body.String())
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var hist *dto.Histogram
	for _, f := range families {
		if f.GetName() == "sds_injector_admission_duration_seconds" {
			if f.GetHelp() != durationHelp {
				t.Errorf("registered help %q", f.GetHelp())
			}
			hist = f.GetMetric()[0].GetHistogram()
		}
	}
	if hist == nil || hist.GetSampleCount() != 2 {
		t.Fatalf("want 2 observations, got %v", hist)
	}
	// Each request: at least two Reads (data, then EOF) and one Write.
	if sum := hist.GetSampleSum(); sum < 2*(2+10) {
		t.Fatalf("observed %v s in total; reading (>= 2 s) and writing (10 s) are not both measured", sum)
	}
}

// TestDrainClosesConnections: while draining, every answer (fast path,
// controller-runtime's path, transport errors) asks the client to close
// the connection; before, none does.
func TestDrainClosesConnections(t *testing.T) {
	bodies := map[string][]byte{
		"gateway":   review(t, admissionV1, examplePodJSON(t, "gloo-gateway-proxy.yaml"), nil),
		"no object": review(t, admissionV1, nil, nil),
		"bad JSON":  []byte(`{`),
	}
	for _, fast := range []bool{true, false} {
		h, _ := newTestHandler(t, ErrorPolicyDeny)
		hh := h.(*Handler)
		hh.fast.Store(fast)
		draining := false
		hh.draining = func() bool { return draining }
		for name, body := range bodies {
			for _, d := range []bool{false, true} {
				draining = d
				r := httptest.NewRequest(http.MethodPost, InjectPath, bytes.NewReader(body))
				r.Header.Set("Content-Type", "application/json")
				w := httptest.NewRecorder()
				hh.ServeHTTP(w, r)
				if got := w.Header().Get("Connection") == "close"; got != d {
					t.Errorf("fast=%t %s draining=%t: Connection: close = %t", fast, name, d, got)
				}
			}
		}
	}
}

// appendString must write what encoding/json writes, on its shortcut for
// plain strings and off it.
func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "admission.k8s.io/v1", "685fbf86-6a23-458b-8b9d-5fccf4ab11cb", `a "quoted" word`, `back\slash`,
		"<html>&", "tab\there", "new\nline", "ünïcode", "\x7f", "\u2028", "invalid \xff utf-8", "sds-injector.io: not injected (reason): message"} {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendString(nil, s); string(got) != string(want) {
			t.Errorf("appendString(%q) = %s, encoding/json writes %s", s, got, want)
		}
	}
}
