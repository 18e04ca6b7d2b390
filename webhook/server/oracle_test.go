package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// The differential oracle: the fast path (fast.go) must answer every
// request exactly as controller-runtime's admission.Webhook calling Handle
// does. pair holds two handlers on the same settings, one with the fast
// path and one without; counting tells which path answered.
type pair struct {
	fast, cr *Handler
	// fallbacks counts the fast handler's requests that went to
	// controller-runtime's path.
	fallbacks atomic.Int64
}

func newPair(t testing.TB, s *inject.Settings, policy ErrorPolicy) *pair {
	t.Helper()
	p := &pair{}
	for _, h := range []**Handler{&p.fast, &p.cr} {
		m, err := NewMetrics(prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		*h = NewHandler(s, policy, m, logr.Discard())
	}
	p.cr.fast.Store(false)
	inner := p.fast.webhook
	p.fast.webhook = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.fallbacks.Add(1)
		inner.ServeHTTP(w, r)
	})
	return p
}

func (p *pair) withResolver(r Resolver) *pair {
	p.fast.WithResolver(r)
	p.cr.WithResolver(r)
	return p
}

// answer is one HTTP answer, decoded for comparison.
type answer struct {
	status      int
	contentType string
	apiVersion  string
	kind        string
	resp        *admissionv1.AdmissionResponse
	patch       any // the JSON Patch, decoded
	raw         string
}

func serve(t testing.TB, h http.Handler, contentType string, body []byte) answer {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, InjectPath, bytes.NewReader(body))
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	a := answer{status: w.Code, contentType: w.Header().Get("Content-Type"), raw: w.Body.String()}
	var ar struct {
		APIVersion string                         `json:"apiVersion"`
		Kind       string                         `json:"kind"`
		Response   *admissionv1.AdmissionResponse `json:"response"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &ar); err != nil || ar.Response == nil {
		t.Fatalf("answer is not an AdmissionReview with a response (%v): %.300s", err, w.Body.String())
	}
	a.apiVersion, a.kind, a.resp = ar.APIVersion, ar.Kind, ar.Response
	if len(a.resp.Patch) > 0 {
		if err := json.Unmarshal(a.resp.Patch, &a.patch); err != nil {
			t.Fatalf("patch is not JSON: %v", err)
		}
		a.resp.Patch = nil // compared decoded
	}
	return a
}

// compare fails the test when the two paths answered differently: HTTP
// status and Content-Type, the review's apiVersion and kind, and every
// field of the response (the patch as decoded operations).
func (p *pair) compare(t testing.TB, contentType string, body []byte) (fast answer, fellBack bool) {
	t.Helper()
	before := p.fallbacks.Load()
	fast = serve(t, p.fast, contentType, body)
	fellBack = p.fallbacks.Load() != before
	cr := serve(t, p.cr, contentType, body)
	var diffs []string
	if fast.status != cr.status || fast.contentType != cr.contentType {
		diffs = append(diffs, fmt.Sprintf("HTTP %d %q vs %d %q", fast.status, fast.contentType, cr.status, cr.contentType))
	}
	if fast.apiVersion != cr.apiVersion || fast.kind != cr.kind {
		diffs = append(diffs, fmt.Sprintf("review %s %s vs %s %s", fast.apiVersion, fast.kind, cr.apiVersion, cr.kind))
	}
	if !reflect.DeepEqual(fast.resp, cr.resp) {
		diffs = append(diffs, "response fields differ")
	}
	if !reflect.DeepEqual(fast.patch, cr.patch) {
		diffs = append(diffs, "patch operations differ")
	}
	if len(diffs) > 0 {
		t.Fatalf("fast path and controller-runtime's path disagree (%s)\nbody: %.400q\nfast: %.600s\ncr:   %.600s",
			strings.Join(diffs, "; "), body, fast.raw, cr.raw)
	}
	return fast, fellBack
}

// goldenReview is one golden case of the engine as a pod and its settings.
type goldenReview struct {
	name     string
	pod      []byte // JSON
	settings *inject.Settings
}

// goldenReviews finds every golden case of webhook/inject the way its
// golden test does: testdata/inject/<name>.in.yaml with an optional
// <name>.config.yaml, the example pods, and the flavor x Istio version x
// placement matrix named by testdata/inject/matrix/*.golden.yaml.
func goldenReviews(t *testing.T) []goldenReview {
	t.Helper()
	const dir = "../inject/testdata/inject"
	podJSON := func(path string) []byte {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		js, err := yaml.YAMLToJSON(data)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	resolve := func(c inject.Config) *inject.Settings {
		s, err := c.Resolve()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	var out []goldenReview
	inputs, _ := filepath.Glob(dir + "/*.in.yaml")
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		cfg := inject.DefaultConfig()
		if data, err := os.ReadFile(filepath.Join(dir, name+".config.yaml")); err == nil {
			if cfg, err = inject.ParseConfig(data); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		} else if !os.IsNotExist(err) {
			t.Fatal(err)
		}
		out = append(out, goldenReview{name: name, pod: podJSON(in), settings: resolve(cfg)})
	}
	examples, _ := filepath.Glob("../../docs/examples/*.yaml")
	for _, ex := range examples {
		out = append(out, goldenReview{name: "examples/" + filepath.Base(ex), pod: podJSON(ex), settings: inject.DefaultConfig().MustResolve()})
	}
	matrix, _ := filepath.Glob(dir + "/matrix/*.golden.yaml")
	for _, g := range matrix {
		// <flavor>-<version>-<placement>.golden.yaml; flavors contain dashes.
		parts := strings.Split(strings.TrimSuffix(filepath.Base(g), ".golden.yaml"), "-")
		if len(parts) < 3 {
			t.Fatalf("matrix golden %s is not <flavor>-<version>-<placement>", g)
		}
		c := inject.DefaultConfig()
		c.Flavor = inject.Flavor(strings.Join(parts[:len(parts)-2], "-"))
		c.IstioVersion = parts[len(parts)-2]
		c.NativeSidecar = parts[len(parts)-1] == string(inject.PlacementNative)
		src := "../../docs/examples/gloo-gateway-proxy.yaml"
		if c.Flavor == inject.FlavorIstioAgentFiles {
			src = dir + "/emissary.in.yaml"
		}
		out = append(out, goldenReview{name: "matrix/" + filepath.Base(g), pod: podJSON(src), settings: resolve(c)})
	}
	if len(inputs) < 40 || len(examples) == 0 || len(matrix) < 12 {
		t.Fatalf("found %d inputs, %d examples, %d matrix cases: is the working directory the package directory?", len(inputs), len(examples), len(matrix))
	}
	return out
}

// TestFastPathOracle: every golden case of the engine, as a v1 and a
// v1beta1 AdmissionReview, under both error policies, gets the same answer
// from the fast path as from controller-runtime's path, and the fast path
// answered it itself.
func TestFastPathOracle(t *testing.T) {
	outcomes := map[bool]int{}
	for _, g := range goldenReviews(t) {
		for _, policy := range []ErrorPolicy{ErrorPolicyDeny, ErrorPolicyAllow} {
			p := newPair(t, g.settings, policy)
			for _, v := range []string{admissionV1, admissionV1beta1} {
				t.Run(fmt.Sprintf("%s/%s/%s", g.name, policy, v), func(t *testing.T) {
					a, fellBack := p.compare(t, "application/json", review(t, v, g.pod, nil))
					if fellBack {
						t.Fatal("the fast path left a well-formed golden review to controller-runtime")
					}
					if a.apiVersion != v {
						t.Fatalf("answered as %s", a.apiVersion)
					}
					outcomes[a.patch != nil]++
				})
			}
		}
	}
	// Both kinds of answer were compared, not only skips.
	if outcomes[true] == 0 || outcomes[false] == 0 {
		t.Fatalf("injected/not injected answers compared: %v", outcomes)
	}
}

// TestFastPathOracleEdgeCases: the handler's and the server's table cases,
// and requests built to sit on the fast path's edges, through both paths.
func TestFastPathOracleEdgeCases(t *testing.T) {
	gloo := examplePodJSON(t, "gloo-gateway-proxy.yaml")
	app := examplePodJSON(t, "plain-app.yaml")
	rev := func(obj []byte, mutate func(*admissionv1.AdmissionRequest)) []byte {
		return review(t, admissionV1, obj, mutate)
	}
	appWith := func(field, value string) []byte {
		return bytes.Replace(app, []byte(`"spec":{`), []byte(`"spec":{"`+field+`":`+value+`,`), 1)
	}
	cases := map[string][]byte{
		"gateway":                           rev(gloo, nil),
		"plain app":                         rev(app, nil),
		"dry run":                           rev(gloo, func(r *admissionv1.AdmissionRequest) { r.DryRun = ptrTo(true) }),
		"update":                            rev(gloo, func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update }),
		"configmap":                         rev([]byte(`{"data":{}}`), func(r *admissionv1.AdmissionRequest) { r.Resource.Resource = "configmaps" }),
		"subresource":                       rev(app, func(r *admissionv1.AdmissionRequest) { r.SubResource = "status" }),
		"no object":                         rev(nil, nil),
		"object is a string":                rev([]byte(`"pod"`), nil),
		"app with a mistyped field":         rev(appWith("hostNetwork", `"yes"`), nil),
		"gateway with a mistyped field":     rev(bytes.Replace(gloo, []byte(`"spec":{`), []byte(`"spec":{"hostNetwork":"yes",`), 1), nil),
		"number overflow":                   rev(appWith("terminationGracePeriodSeconds", `1e400`), nil),
		"userInfo of the wrong type":        bytes.Replace(rev(gloo, nil), []byte(`"userInfo":{`), []byte(`"userInfo":5,"x":{`), 1),
		"uid with control characters":       rev(gloo, func(r *admissionv1.AdmissionRequest) { r.UID = "a\"b\n\x00c<>&" }),
		"case variant of kind":              bytes.Replace(rev(gloo, nil), []byte(`"kind":"AdmissionReview"`), []byte(`"KIND":"AdmissionReview"`), 1),
		"two spellings of kind":             bytes.Replace(rev(gloo, nil), []byte(`"kind":"AdmissionReview"`), []byte(`"kind":"AdmissionReview","Kind":"AdmissionReview"`), 1),
		"snake-case apiVersion":             bytes.Replace(rev(gloo, nil), []byte(`"apiVersion":"admission.k8s.io/v1"`), []byte(`"api_version":"admission.k8s.io/v1"`), 1),
		"duplicate keys in the object":      rev(bytes.Replace(app, []byte(`"spec":{`), []byte(`"spec":{"hostNetwork":true,"hostNetwork":false,`), 1), nil),
		"invalid UTF-8":                     bytes.Replace(rev(gloo, nil), []byte(`"gloo-system"`), []byte("\"gloo-\xff\xfesystem\""), 1),
		"unknown review version":            review(t, "admission.k8s.io/v9", gloo, nil),
		"missing request":                   []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`),
		"empty request":                     []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`),
		"object null, oldObject set":        bytes.Replace(rev(nil, nil), []byte(`"oldObject":null`), append([]byte(`"oldObject":`), gloo...), 1),
		"not JSON":                          []byte("hello"),
		"trailing data":                     append(rev(app, nil), []byte(` {}`)...),
		"invalid inject label":              rev(withAnnotations(t, gloo, nil, map[string]string{inject.LabelInject: "maybe"}), nil),
		"invalid inject label on a non-pod": rev(withAnnotations(t, app, nil, map[string]string{inject.LabelInject: "maybe"}), nil),
		"corrupt status annotation":         rev(withAnnotations(t, gloo, map[string]string{inject.AnnotationStatus: "{"}, nil), nil),
		"namespace from the request": rev(bytes.Replace(gloo, []byte(`"namespace":"gloo-system",`), nil, 1), func(r *admissionv1.AdmissionRequest) {
			r.Namespace = "kube-system"
		}),
	}
	for name, body := range cases {
		for _, policy := range []ErrorPolicy{ErrorPolicyDeny, ErrorPolicyAllow} {
			t.Run(name+"/"+string(policy), func(t *testing.T) {
				p := newPair(t, inject.DefaultConfig().MustResolve(), policy)
				_, fellBack := p.compare(t, "application/json", body)
				p.compare(t, "application/json; charset=utf-8", body)
				// The path counter itself is checked on two known cases.
				if want, known := map[string]bool{"gateway": false, "plain app": false, "no object": true, "userInfo of the wrong type": true}[name]; known && fellBack != want {
					t.Errorf("fell back to controller-runtime: %t, want %t", fellBack, want)
				}
			})
		}
	}
}

// TestFastPathTakesAPIServerReviews: reviews shaped as kube-apiserver sends
// them (request kinds, user info with extra, dryRun, CreateOptions) are
// answered by the fast path itself, the same as controller-runtime would.
func TestFastPathTakesAPIServerReviews(t *testing.T) {
	p := newPair(t, inject.DefaultConfig().MustResolve(), ErrorPolicyDeny)
	for _, name := range []string{"gloo-gateway-proxy.yaml", "plain-app.yaml"} {
		for _, v := range []string{admissionV1, admissionV1beta1} {
			body := review(t, v, examplePodJSON(t, name), func(r *admissionv1.AdmissionRequest) {
				r.RequestKind, r.RequestResource = ptrTo(metaGVK("", "v1", "Pod")), ptrTo(metaGVR("", "v1", "pods"))
				r.UserInfo.Username = "system:serviceaccount:kube-system:replicaset-controller"
				r.UserInfo.UID = "0a6c6e2c-6f3b-4a8e-9d52-1f5b0c0e7a11"
				r.UserInfo.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}
				r.UserInfo.Extra = map[string]authenticationv1.ExtraValue{"authentication.kubernetes.io/credential-id": {"JTI=4f1c"}}
				r.DryRun = ptrTo(false)
				r.Options.Raw = []byte(`{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}`)
			})
			if _, fellBack := p.compare(t, "application/json", body); fellBack {
				t.Errorf("%s as %s: the fast path left an API server's review to controller-runtime", name, v)
			}
		}
	}
	// And reviews a real kube-apiserver sent (testdata/apiserver-reviews).
	for _, name := range []string{"gloo-chart.json", "plain-app.json"} {
		if _, fellBack := p.compare(t, "application/json", apiserverReview(t, name)); fellBack {
			t.Errorf("%s: the fast path left a recorded API server review to controller-runtime", name)
		}
	}
}
