package inject

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// An API server newer than our k8s.io/api sends fields we cannot decode.
// The patch must carry them through untouched, wherever they are.
func TestPatchKeepsUnknownFields(t *testing.T) {
	data, err := os.ReadFile(examplesDir + "/gloo-gateway-proxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		t.Fatal(err)
	}
	future := map[string]any{"enabled": true, "level": 3.0}
	md := obj["metadata"].(map[string]any)
	md["futureMeta"] = future
	spec := obj["spec"].(map[string]any)
	spec["futureSpec"] = future
	ctr := spec["containers"].([]any)[0].(map[string]any)
	ctr["futureContainer"] = future
	ctr["volumeMounts"].([]any)[0].(map[string]any)["futureMount"] = future
	spec["volumes"].([]any)[0].(map[string]any)["futureVolume"] = future
	obj["status"] = map[string]any{"futureStatus": future}
	withUnknown, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}

	pod := readPod(t, examplesDir+"/gloo-gateway-proxy.yaml")
	res := Inject(pod, DefaultConfig().MustResolve())
	if res.Decision.Outcome != OutcomeInjected {
		t.Fatalf("want injected, got %+v", res.Decision)
	}
	patched := applyPatch(t, withUnknown, res.Patch)

	var got map[string]any
	if err := json.Unmarshal(patched, &got); err != nil {
		t.Fatal(err)
	}
	gspec := got["spec"].(map[string]any)
	checks := map[string]any{
		"metadata.futureMeta": got["metadata"].(map[string]any)["futureMeta"],
		"spec.futureSpec":     gspec["futureSpec"],
		"status.futureStatus": got["status"].(map[string]any)["futureStatus"],
		"volumes[0]":          gspec["volumes"].([]any)[0].(map[string]any)["futureVolume"],
	}
	// The agent is inserted in front, so the gateway container is now [1].
	gw := gspec["containers"].([]any)[1].(map[string]any)
	if gw["name"] != "gateway-proxy" {
		t.Fatalf("containers[1] is %v", gw["name"])
	}
	checks["gateway container"] = gw["futureContainer"]
	checks["gateway mount"] = gw["volumeMounts"].([]any)[0].(map[string]any)["futureMount"]
	for where, v := range checks {
		if m, ok := v.(map[string]any); !ok || m["enabled"] != true || m["level"] != 3.0 {
			t.Errorf("unknown field at %s lost or changed: %v", where, v)
		}
	}
	// Everything we know about must equal the engine's own result.
	if a, b := normalise(t, patched), mustJSON(t, res.Pod); string(a) != string(b) {
		t.Errorf("patched pod differs from the engine's result")
	}
}

func TestPatchEscapesAnnotationKeys(t *testing.T) {
	pod := readPod(t, examplesDir+"/envoy-gateway-proxy.yaml")
	res := Inject(pod, DefaultConfig().MustResolve())
	var found bool
	for _, op := range res.Patch {
		if op.Path == "/metadata/annotations/sds-injector.io~1status" {
			found = true
		}
		if strings.Contains(op.Path, "annotations/") && strings.Count(op.Path, "/") != 3 {
			t.Errorf("annotation key not escaped: %s", op.Path)
		}
	}
	if !found {
		t.Errorf("no escaped status annotation op in %v", res.Patch)
	}
}

func TestNilInputs(t *testing.T) {
	if r := Inject(nil, DefaultConfig().MustResolve()); r.Decision.Outcome != OutcomeError {
		t.Errorf("nil pod: %+v", r.Decision)
	}
	pod := readPod(t, examplesDir+"/gloo-gateway-proxy.yaml")
	if r := Inject(pod, nil); r.Decision.Outcome != OutcomeError || r.Pod != pod {
		t.Errorf("nil settings: %+v", r.Decision)
	}
	if r := Uninject(nil); r.Decision.Outcome != OutcomeError {
		t.Errorf("nil pod: %+v", r.Decision)
	}
	if r := Uninject(pod); r.Decision.Reason != ReasonNotInjected || r.Pod != pod || r.Patch != nil {
		t.Errorf("uninject of a pod never injected: %+v", r.Decision)
	}
}
