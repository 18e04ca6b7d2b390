package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	gomodpatch "gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	"github.com/sds-injector/sds-injector/webhook/internal/fastpath"
)

// mustJSON marshals a pod; typed marshalling makes nil and empty lists the
// same, which is the equality that matters to the API server.
func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// applyPatch applies engine operations to raw JSON with the JSON Patch
// implementation the API server uses.
func applyPatch(t testing.TB, doc []byte, ops []gomodpatch.Operation, encoded ...[]byte) []byte {
	t.Helper()
	raw := mustJSON(t, ops)
	if len(encoded) > 0 {
		raw = encoded[0]
	}
	p, err := jsonpatch.DecodePatch(raw)
	if err != nil {
		t.Fatalf("patch does not decode: %v", err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("patch does not apply: %v\npatch: %s", err, mustJSON(t, ops))
	}
	return out
}

// normalise decodes JSON into a Pod and re-encodes it.
func normalise(t testing.TB, doc []byte) []byte {
	t.Helper()
	var p corev1.Pod
	if err := json.Unmarshal(doc, &p); err != nil {
		t.Fatal(err)
	}
	return mustJSON(t, &p)
}

// checkInvariants asserts the engine's contract for one pod and returns the
// injection result:
//   - the input is never modified;
//   - a pod that is not injected comes back as it was, with no patch;
//   - the patch applied to the original equals the injected pod;
//   - inject(inject(p)) == inject(p), with no patch the second time;
//   - uninject(inject(p)) == p, and uninject's own patch agrees;
//   - no duplicate container, volume or mount names, and every mount refers
//     to a volume of the pod (when the input had none of these problems).
func checkInvariants(t testing.TB, pod *corev1.Pod, s *Settings) Result {
	t.Helper()
	before := mustJSON(t, pod)
	res := Inject(pod, s)
	if got := mustJSON(t, pod); !bytes.Equal(before, got) {
		t.Fatalf("Inject modified its input")
	}
	checkHints(t, pod, s)
	// Screening a pod reduced to what a partial decode provides must agree
	// with the full decision whenever it claims to be final.
	if d, final := screenFields(screenable(pod), s); final && d != res.Decision {
		t.Fatalf("screenFields decided %+v on the partial pod, Inject %+v", d, res.Decision)
	}
	if res.Decision.Outcome != OutcomeInjected {
		if res.Pod != pod || res.Patch != nil {
			t.Fatalf("%s: pod changed or patch returned although not injected", res.Decision.Reason)
		}
		if res.Decision.Reason == "" || res.Decision.Message == "" {
			t.Fatalf("decision without reason or message: %+v", res.Decision)
		}
		return res
	}
	injected := mustJSON(t, res.Pod)
	if patched := normalise(t, applyPatch(t, before, res.Patch)); !bytes.Equal(patched, injected) {
		t.Fatalf("patch applied to the original differs from the injected pod\npatched:  %s\ninjected: %s", patched, injected)
	}
	fast, err := fastpath.MarshalPatch(res.Patch)
	if err != nil {
		t.Fatal(err)
	}
	if patched := normalise(t, applyPatch(t, before, nil, fast)); !bytes.Equal(patched, injected) {
		t.Fatalf("fastpath.MarshalPatch encodes a different patch")
	}
	if d, ops := injectPatch(pod, s); d != res.Decision || !bytes.Equal(mustJSON(t, ops), mustJSON(t, res.Patch)) {
		t.Fatalf("injectPatch disagrees with Inject")
	}
	for _, op := range res.Patch {
		if op.Operation != "add" {
			t.Fatalf("injection patch has a %q operation at %s; only add is allowed", op.Operation, op.Path)
		}
	}
	again := Inject(res.Pod, s)
	if again.Decision.Reason != ReasonAlreadyInjected || again.Patch != nil || !bytes.Equal(mustJSON(t, again.Pod), injected) {
		t.Fatalf("re-injection changed the pod: %+v", again.Decision)
	}
	un := Uninject(res.Pod)
	if un.Decision.Reason != ReasonUninjected {
		t.Fatalf("uninject: %+v", un.Decision)
	}
	if got := mustJSON(t, un.Pod); !bytes.Equal(got, before) {
		t.Fatalf("uninject(inject(p)) != p\ngot:  %s\nwant: %s", got, before)
	}
	if patched := normalise(t, applyPatch(t, injected, un.Patch)); !bytes.Equal(patched, before) {
		t.Fatalf("uninject patch does not restore the original\ngot:  %s\nwant: %s", patched, before)
	}
	if err := checkNothingAltered(pod, res.Pod); err != nil {
		t.Fatal(err)
	}
	if checkNames(pod) == nil {
		if err := checkNames(res.Pod); err != nil {
			t.Fatal(err)
		}
	}
	return res
}

func checkNames(pod *corev1.Pod) error {
	containers := map[string]bool{}
	volumes := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		if volumes[v.Name] {
			return fmt.Errorf("duplicate volume %q", v.Name)
		}
		volumes[v.Name] = true
	}
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range list {
			if containers[c.Name] {
				return fmt.Errorf("duplicate container %q", c.Name)
			}
			containers[c.Name] = true
			paths := map[string]bool{}
			for _, m := range c.VolumeMounts {
				if paths[m.MountPath] {
					return fmt.Errorf("container %q mounts %s twice", c.Name, m.MountPath)
				}
				paths[m.MountPath] = true
				if !volumes[m.Name] {
					return fmt.Errorf("container %q mounts unknown volume %q", c.Name, m.Name)
				}
			}
		}
	}
	return nil
}

// checkNothingAltered: what the user wrote is kept; the only change to an
// existing container is mounts and env appended to the gateway container,
// and the only changes to metadata are added annotations.
func checkNothingAltered(before, after *corev1.Pod) error {
	st, err := ParseStatus(after.Annotations[AnnotationStatus])
	if err != nil {
		return err
	}
	for k, v := range before.Annotations {
		if after.Annotations[k] != v {
			return fmt.Errorf("annotation %s changed", k)
		}
	}
	if !equality.Semantic.DeepEqual(before.Labels, after.Labels) {
		return fmt.Errorf("labels changed")
	}
	kept := func(list []corev1.Container, name string) *corev1.Container {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
		return nil
	}
	for _, orig := range append(append([]corev1.Container{}, before.Spec.InitContainers...), before.Spec.Containers...) {
		now := kept(after.Spec.InitContainers, orig.Name)
		if now == nil {
			now = kept(after.Spec.Containers, orig.Name)
		}
		if now == nil {
			return fmt.Errorf("container %s disappeared", orig.Name)
		}
		want := orig.DeepCopy()
		if orig.Name == st.GatewayContainer {
			if len(now.VolumeMounts) < len(orig.VolumeMounts) || len(now.Env) < len(orig.Env) {
				return fmt.Errorf("gateway container lost mounts or env")
			}
			want.VolumeMounts = append(want.VolumeMounts, now.VolumeMounts[len(orig.VolumeMounts):]...)
			want.Env = append(want.Env, now.Env[len(orig.Env):]...)
		}
		if !equality.Semantic.DeepEqual(want, now) {
			return fmt.Errorf("container %s was altered beyond the documented gateway mounts and env", orig.Name)
		}
	}
	for i, v := range before.Spec.Volumes {
		if i >= len(after.Spec.Volumes) || !equality.Semantic.DeepEqual(v, after.Spec.Volumes[i]) {
			return fmt.Errorf("volume %s was altered or moved", v.Name)
		}
	}
	b, a := before.Spec.DeepCopy(), after.Spec.DeepCopy()
	b.Containers, b.InitContainers, b.Volumes = nil, nil, nil
	a.Containers, a.InitContainers, a.Volumes = nil, nil, nil
	if !equality.Semantic.DeepEqual(b, a) {
		return fmt.Errorf("pod spec fields other than containers and volumes changed")
	}
	return nil
}

// screenable keeps only the fields Screen documents it reads.
func screenable(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{}
	out.Namespace, out.Labels, out.Annotations = p.Namespace, p.Labels, p.Annotations
	out.Spec.HostNetwork = p.Spec.HostNetwork
	for _, c := range p.Spec.Containers {
		out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	for _, c := range p.Spec.InitContainers {
		out.Spec.InitContainers = append(out.Spec.InitContainers, corev1.Container{Name: c.Name, Image: c.Image})
	}
	return out
}

// checkHints: a pod the engine would not settle by screening must contain
// a hint, or the webhook would take the slow path for it (never a wrong
// answer, but the hints would be lying).
func checkHints(t testing.TB, pod *corev1.Pod, s *Settings) {
	t.Helper()
	if _, final := screenFields(screenable(pod), s); final {
		return
	}
	if !s.mayBeGateway(mustJSON(t, pod)) {
		t.Fatalf("pod %s is a gateway candidate but contains no hint", pod.Name)
	}
}
