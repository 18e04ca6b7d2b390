package server

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

func podSeeds(f *testing.F) [][]byte {
	var out [][]byte
	for _, pattern := range []string{"../../docs/examples/*.yaml", "../inject/testdata/inject/*.in.yaml"} {
		files, _ := filepath.Glob(pattern)
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			js, err := yaml.YAMLToJSON(data)
			if err != nil {
				f.Fatal(err)
			}
			out = append(out, js)
		}
	}
	return out
}

// FuzzPodDecoding is a differential test of the handler's decoder against
// the API server's own (sigs.k8s.io/json, case-sensitive): whatever both
// accept must decode to the same pod, and the handler may only refuse what
// is not valid JSON by RFC 8259's stricter reading (duplicate names,
// invalid UTF-8).
func FuzzPodDecoding(f *testing.F) {
	for _, s := range podSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var ref, got corev1.Pod
		refErr := kjson.UnmarshalCaseSensitivePreserveInts(data, &ref)
		gotErr := jsonv2.Unmarshal(data, &got)
		switch {
		case refErr == nil && gotErr == nil:
			if !reflect.DeepEqual(ref, got) {
				a, _ := json.Marshal(&ref)
				b, _ := json.Marshal(&got)
				t.Fatalf("decoders disagree\nreference: %s\nhandler:   %s", a, b)
			}
		case refErr == nil && gotErr != nil:
			if jsontext.Value(data).IsValid() {
				t.Fatalf("the handler refused a pod the API server accepts: %v", gotErr)
			}
		}
	})
}

// FuzzReview sends arbitrary bodies to the handler: it must never panic and
// must always answer with a well-formed AdmissionReview.
func FuzzReview(f *testing.F) {
	t := &testing.T{}
	for _, s := range podSeeds(f) {
		f.Add(review(t, "admission.k8s.io/v1", s, nil))
	}
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","resource":{"resource":"pods"},"operation":"CREATE","object":null}}`))
	f.Add([]byte(`{}`))
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	h := NewHandler(inject.DefaultConfig().MustResolve(), ErrorPolicyDeny, m, logr.Discard())
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPost, InjectPath, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		var ar admissionv1.AdmissionReview
		if err := json.Unmarshal(w.Body.Bytes(), &ar); err != nil || ar.Response == nil {
			t.Fatalf("malformed answer %q: %v", w.Body.String(), err)
		}
		if len(ar.Response.Patch) > 0 && !ar.Response.Allowed {
			t.Fatal("a patch on a rejected request")
		}
	})
}
