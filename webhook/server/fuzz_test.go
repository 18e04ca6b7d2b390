package server

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
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

// FuzzPodDecoding is a differential test of the fast path's decoder against
// the API server's own (sigs.k8s.io/json, case-sensitive): whatever both
// accept must decode to the same pod, and the fast path may only refuse
// what is not valid JSON by RFC 8259's stricter reading (duplicate names,
// invalid UTF-8). The input, as the object of a review, then gets the same
// answer from the fast path as from controller-runtime's path.
func FuzzPodDecoding(f *testing.F) {
	for _, s := range podSeeds(f) {
		f.Add(s)
	}
	p := newPair(f, inject.DefaultConfig().MustResolve(), ErrorPolicyDeny)
	f.Fuzz(func(t *testing.T, data []byte) {
		if body := podInReview(data); body != nil {
			p.compare(t, "application/json", body)
		}
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

// FuzzReview sends arbitrary bodies to the handler: it must never panic,
// must always answer with a well-formed AdmissionReview, and the fast path
// must answer as controller-runtime's path does (the differential oracle).
func FuzzReview(f *testing.F) {
	t := &testing.T{}
	for _, s := range podSeeds(f) {
		f.Add(review(t, "admission.k8s.io/v1", s, nil))
	}
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","resource":{"resource":"pods"},"operation":"CREATE","object":null}}`))
	f.Add([]byte(`{}`))
	p := newPair(f, inject.DefaultConfig().MustResolve(), ErrorPolicyDeny)
	f.Fuzz(func(t *testing.T, body []byte) {
		// compare fails on an answer that is not an AdmissionReview with
		// a response, and on any difference between the two paths.
		a, _ := p.compare(t, "application/json", body)
		if a.patch != nil && !a.resp.Allowed {
			t.Fatal("a patch on a rejected request")
		}
	})
}

// podInReview wraps data as the object of a v1 pod CREATE review, or
// returns nil when data is not one JSON value (it would not be an object
// field then, but a different review).
func podInReview(data []byte) []byte {
	if !jsontext.Value(data).IsValid(jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true)) {
		return nil
	}
	var b bytes.Buffer
	b.WriteString(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"fuzz","kind":{"group":"","version":"v1","kind":"Pod"},` +
		`"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"gloo-system","operation":"CREATE","userInfo":{},"object":`)
	b.Write(data)
	b.WriteString(`}}`)
	return b.Bytes()
}
