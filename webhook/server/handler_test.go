package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

func examplePodJSON(t *testing.T, name string) []byte {
	t.Helper()
	return examplePodJSONB(t, name)
}

func examplePodJSONB(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("../../docs/examples/" + name)
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func withAnnotations(t *testing.T, podJSON []byte, kv map[string]string, labels map[string]string) []byte {
	t.Helper()
	var obj map[string]any
	if err := json.Unmarshal(podJSON, &obj); err != nil {
		t.Fatal(err)
	}
	md := obj["metadata"].(map[string]any)
	for k, field := range map[string]map[string]string{"annotations": kv, "labels": labels} {
		if len(field) == 0 {
			continue
		}
		m, _ := md[k].(map[string]any)
		if m == nil {
			m = map[string]any{}
		}
		for a, b := range field {
			m[a] = b
		}
		md[k] = m
	}
	out, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func review(t testing.TB, apiVersion string, object []byte, mutate func(*admissionv1.AdmissionRequest)) []byte {
	t.Helper()
	req := &admissionv1.AdmissionRequest{
		UID:       "3b3b1f0e-0000-4000-8000-000000000001",
		Kind:      metaGVK("", "v1", "Pod"),
		Resource:  metaGVR("", "v1", "pods"),
		Namespace: "gloo-system",
		Operation: admissionv1.Create,
	}
	req.Object.Raw = object
	if mutate != nil {
		mutate(req)
	}
	b, err := json.Marshal(map[string]any{"apiVersion": apiVersion, "kind": "AdmissionReview", "request": req})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type result struct {
	status int
	resp   *admissionv1.AdmissionResponse
	raw    string
}

func post(t *testing.T, h http.Handler, contentType string, body []byte) result {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, InjectPath, bytes.NewReader(body))
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var ar admissionv1.AdmissionReview
	if err := json.Unmarshal(w.Body.Bytes(), &ar); err != nil {
		t.Fatalf("response is not an AdmissionReview: %v\n%s", err, w.Body.String())
	}
	if ar.Response == nil {
		t.Fatalf("AdmissionReview without response: %s", w.Body.String())
	}
	return result{status: w.Code, resp: ar.Response, raw: w.Body.String()}
}

func newTestHandler(t *testing.T, policy ErrorPolicy) (http.Handler, *Metrics) {
	t.Helper()
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return NewHandler(inject.DefaultConfig().MustResolve(), policy, m, logr.Discard()), m
}

func TestHandler(t *testing.T) {
	gloo := examplePodJSON(t, "gloo-gateway-proxy.yaml")
	app := examplePodJSON(t, "plain-app.yaml")
	type want struct {
		allowed  bool
		patched  bool
		code     int32  // Result.Code when set
		message  string // substring of Result.Message
		warning  string // substring of a warning
		result   inject.Outcome
		reason   inject.Reason
		noMetric bool
	}
	cases := map[string]struct {
		body        []byte
		contentType string
		policy      ErrorPolicy
		want        want
	}{
		"gateway is injected": {
			body: review(t, "admission.k8s.io/v1", gloo, nil),
			want: want{allowed: true, patched: true, result: inject.OutcomeInjected, reason: inject.ReasonInjected},
		},
		"dry-run gets the same answer": {
			body: review(t, "admission.k8s.io/v1", gloo, func(r *admissionv1.AdmissionRequest) { r.DryRun = ptrTo(true) }),
			want: want{allowed: true, patched: true, result: inject.OutcomeInjected, reason: inject.ReasonInjected},
		},
		"v1beta1 review": {
			body: review(t, "admission.k8s.io/v1beta1", gloo, nil),
			want: want{allowed: true, patched: true, result: inject.OutcomeInjected, reason: inject.ReasonInjected},
		},
		"non-gateway is admitted unchanged": {
			body: review(t, "admission.k8s.io/v1", app, nil),
			want: want{allowed: true, result: inject.OutcomeSkipped, reason: inject.ReasonNotAGateway},
		},
		"invalid override warns": {
			body: review(t, "admission.k8s.io/v1", withAnnotations(t, gloo, map[string]string{inject.AnnotationFlavor: "envoy"}, nil), nil),
			want: want{allowed: true, warning: "not injected (invalid-override): annotation sds-injector.io/flavor=\"envoy\" is invalid",
				result: inject.OutcomeSkipped, reason: inject.ReasonInvalidOverride},
		},
		"engine error is denied with the reason": {
			body: review(t, "admission.k8s.io/v1", withAnnotations(t, gloo, nil, map[string]string{inject.LabelInject: "yes"}), nil),
			want: want{allowed: false, code: http.StatusForbidden, message: `sds-injector: label sds-injector.io/inject="yes" is invalid`,
				result: inject.OutcomeError, reason: inject.ReasonInvalidInjectValue},
		},
		"engine error allowed by policy": {
			body:   review(t, "admission.k8s.io/v1", withAnnotations(t, gloo, nil, map[string]string{inject.LabelInject: "yes"}), nil),
			policy: ErrorPolicyAllow,
			want: want{allowed: true, warning: `label sds-injector.io/inject="yes" is invalid`,
				result: inject.OutcomeError, reason: inject.ReasonInvalidInjectValue},
		},
		"pod namespace comes from the request": {
			body: review(t, "admission.k8s.io/v1", func() []byte {
				var p map[string]any
				_ = json.Unmarshal(gloo, &p)
				delete(p["metadata"].(map[string]any), "namespace")
				b, _ := json.Marshal(p)
				return b
			}(), func(r *admissionv1.AdmissionRequest) { r.Namespace = "kube-system" }),
			want: want{allowed: true, result: inject.OutcomeSkipped, reason: inject.ReasonExcludedNamespace},
		},
		"update is not touched": {
			body: review(t, "admission.k8s.io/v1", gloo, func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update }),
			want: want{allowed: true, result: inject.OutcomeSkipped, reason: "not-create"},
		},
		"other resource is not touched": {
			body: review(t, "admission.k8s.io/v1", []byte(`{"kind":"ConfigMap"}`), func(r *admissionv1.AdmissionRequest) {
				r.Resource = metaGVR("", "v1", "configmaps")
			}),
			want: want{allowed: true, result: inject.OutcomeSkipped, reason: "not-a-pod"},
		},
		"subresource is not touched": {
			body: review(t, "admission.k8s.io/v1", gloo, func(r *admissionv1.AdmissionRequest) { r.SubResource = "ephemeralcontainers" }),
			want: want{allowed: true, result: inject.OutcomeSkipped, reason: "not-a-pod"},
		},
		"missing object": {
			body: review(t, "admission.k8s.io/v1", nil, nil),
			want: want{allowed: false, code: http.StatusBadRequest, message: "no object", result: inject.OutcomeError, reason: inject.ReasonInvalidInput},
		},
		"object is not a pod": {
			body: review(t, "admission.k8s.io/v1", []byte(`{"spec":{"containers":"nope"}}`), nil),
			want: want{allowed: false, code: http.StatusBadRequest, message: "request object is not a pod", result: inject.OutcomeError, reason: inject.ReasonInvalidInput},
		},
		"bad JSON": {
			body: []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{`),
			want: want{allowed: false, code: http.StatusBadRequest, message: "not a valid AdmissionReview", result: inject.OutcomeError, reason: inject.ReasonInvalidInput},
		},
		"wrong content type": {
			body: review(t, "admission.k8s.io/v1", gloo, nil), contentType: "text/plain",
			want: want{allowed: false, code: http.StatusUnsupportedMediaType, message: "send application/json", result: inject.OutcomeError, reason: inject.ReasonInvalidInput},
		},
		"content type with charset": {
			body: review(t, "admission.k8s.io/v1", gloo, nil), contentType: "application/json; charset=utf-8",
			want: want{allowed: true, patched: true, result: inject.OutcomeInjected, reason: inject.ReasonInjected},
		},
		"unknown review version": {
			body: bytes.Replace(review(t, "admission.k8s.io/v1", gloo, nil), []byte("admission.k8s.io/v1"), []byte("admission.k8s.io/v2"), 1),
			want: want{allowed: false, code: http.StatusBadRequest, message: `apiVersion "admission.k8s.io/v2" is not supported`, result: inject.OutcomeError, reason: inject.ReasonInvalidInput},
		},
		"body over the size limit": {
			body: review(t, "admission.k8s.io/v1", withAnnotations(t, gloo, map[string]string{"big": strings.Repeat("x", MaxRequestBytes)}, nil), nil),
			want: want{allowed: false, code: http.StatusRequestEntityTooLarge, message: "reaches the 7340032-byte limit", result: inject.OutcomeError, reason: inject.ReasonInvalidInput},
		},
	}
	// Every case through the fast path and through controller-runtime's.
	for _, fast := range []bool{true, false} {
		for name, tc := range cases {
			t.Run(fmt.Sprintf("%s/fast=%t", name, fast), func(t *testing.T) {
				policy := tc.policy
				if policy == "" {
					policy = ErrorPolicyDeny
				}
				h, m := newTestHandler(t, policy)
				h.(*Handler).fast.Store(fast)
				ct := tc.contentType
				if ct == "" {
					ct = "application/json"
				}
				got := post(t, h, ct, tc.body)
				r := got.resp
				if r.Allowed != tc.want.allowed {
					t.Errorf("allowed = %t, want %t: %s", r.Allowed, tc.want.allowed, got.raw)
				}
				if (len(r.Patch) > 0) != tc.want.patched {
					t.Errorf("patched = %t, want %t", len(r.Patch) > 0, tc.want.patched)
				}
				if tc.want.patched && (r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch) {
					t.Errorf("patch type %v", r.PatchType)
				}
				if tc.want.code != 0 && (r.Result == nil || r.Result.Code != tc.want.code) {
					t.Errorf("result %+v, want code %d", r.Result, tc.want.code)
				}
				if tc.want.message != "" && (r.Result == nil || !strings.Contains(r.Result.Message, tc.want.message)) {
					t.Errorf("result %+v, want message containing %q", r.Result, tc.want.message)
				}
				if tc.want.warning != "" && !strings.Contains(strings.Join(r.Warnings, "\n"), tc.want.warning) {
					t.Errorf("warnings %q, want one containing %q", r.Warnings, tc.want.warning)
				}
				if tc.want.warning == "" && len(r.Warnings) > 0 {
					t.Errorf("unexpected warnings %q", r.Warnings)
				}
				undecodable := tc.want.code == http.StatusUnsupportedMediaType || tc.want.code == http.StatusRequestEntityTooLarge ||
					(tc.want.code == http.StatusBadRequest && strings.Contains(tc.want.message, "AdmissionReview"))
				if r.UID != "3b3b1f0e-0000-4000-8000-000000000001" && !undecodable {
					t.Errorf("response UID %q does not echo the request", r.UID)
				}
				series := testutil.CollectAndCount(m.requests)
				if tc.want.noMetric {
					if series != 0 {
						t.Errorf("a request that never reached the handler was counted")
					}
					return
				}
				if n := testutil.ToFloat64(m.requests.WithLabelValues(string(tc.want.result), string(tc.want.reason))); n != 1 || series != 1 {
					t.Errorf("metric %s/%s = %v (%d series), want 1 in 1", tc.want.result, tc.want.reason, n, series)
				}
			})
		}
	}
}

// The patch the API server receives keeps fields our k8s.io/api does not know.
func TestHandlerPatchKeepsUnknownFields(t *testing.T) {
	var obj map[string]any
	if err := json.Unmarshal(examplePodJSON(t, "gloo-gateway-proxy.yaml"), &obj); err != nil {
		t.Fatal(err)
	}
	spec := obj["spec"].(map[string]any)
	spec["schedulingGatesV9"] = []any{"x"}
	spec["containers"].([]any)[0].(map[string]any)["resizePolicyV9"] = map[string]any{"cpu": "NotRequired"}
	raw, _ := json.Marshal(obj)

	h, _ := newTestHandler(t, ErrorPolicyDeny)
	got := post(t, h, "application/json", review(t, "admission.k8s.io/v1", raw, nil))
	patch, err := jsonpatch.DecodePatch(got.resp.Patch)
	if err != nil {
		t.Fatal(err)
	}
	out, err := patch.Apply(raw)
	if err != nil {
		t.Fatal(err)
	}
	var patched map[string]any
	_ = json.Unmarshal(out, &patched)
	ps := patched["spec"].(map[string]any)
	if ps["schedulingGatesV9"] == nil {
		t.Error("unknown spec field lost")
	}
	if ps["containers"].([]any)[1].(map[string]any)["resizePolicyV9"] == nil {
		t.Error("unknown container field lost")
	}
	var pod corev1.Pod
	if err := json.Unmarshal(out, &pod); err != nil || pod.Annotations[inject.AnnotationStatus] == "" {
		t.Errorf("patched pod not injected: %v", err)
	}
	for _, op := range strings.Split(string(got.resp.Patch), `"op":`)[1:] {
		if !strings.HasPrefix(op, `"add"`) {
			t.Errorf("non-add operation in the webhook's patch: %s", op[:min(40, len(op))])
		}
	}
}

func TestParseErrorPolicy(t *testing.T) {
	for _, ok := range []string{"deny", "allow"} {
		if _, err := ParseErrorPolicy(ok); err != nil {
			t.Error(err)
		}
	}
	if _, err := ParseErrorPolicy("ignore"); err == nil || !strings.Contains(err.Error(), `"deny"`) {
		t.Errorf("want an error naming the choices, got %v", err)
	}
}

// TestLogsCarryNoSecrets: per-request debug logs never include pod content
// (a token or key in an annotation or env must not reach the logs).
func TestLogsCarryNoSecrets(t *testing.T) {
	var logs strings.Builder
	log := funcr.New(func(prefix, args string) { logs.WriteString(prefix + args + "\n") }, funcr.Options{Verbosity: 10})
	m, _ := NewMetrics(prometheus.NewRegistry())
	h := NewHandler(inject.DefaultConfig().MustResolve(), ErrorPolicyDeny, m, log)
	const secret = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2Vu.c2lnbmF0dXJl"
	pod := withAnnotations(t, examplePodJSON(t, "gloo-gateway-proxy.yaml"), map[string]string{"token": secret}, nil)
	// Both paths: controller-runtime's admission.Webhook logs requests and
	// responses (messages included) at V(5), which the handler drops.
	for _, fast := range []bool{true, false} {
		h.fast.Store(fast)
		for _, body := range [][]byte{
			review(t, "admission.k8s.io/v1", pod, nil),
			review(t, "admission.k8s.io/v1", withAnnotations(t, pod, nil, map[string]string{inject.LabelInject: secret[:20]}), nil),
		} {
			post(t, h, "application/json", body)
		}
	}
	if logs.Len() == 0 {
		t.Fatal("no debug logs were written; the test would prove nothing")
	}
	if strings.Contains(logs.String(), secret[:20]) {
		t.Errorf("logs contain pod content:\n%s", logs.String())
	}
}
