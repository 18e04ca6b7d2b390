package inject

import (
	"fmt"
	"slices"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
)

// Uninject removes what Inject added, as recorded in the status annotation,
// and returns the restored pod with the patch (remove operations only) that
// produces it. A pod without the annotation is returned unchanged with
// ReasonNotInjected.
func Uninject(pod *corev1.Pod) Result {
	if pod == nil {
		return Result{Decision: failed(ReasonInvalidInput, "no pod given")}
	}
	raw, ok := pod.Annotations[AnnotationStatus]
	if !ok {
		return Result{Pod: pod, Decision: skipped(ReasonNotInjected, "pod carries no "+AnnotationStatus+" annotation")}
	}
	st, err := ParseStatus(raw)
	if err != nil {
		return Result{Pod: pod, Decision: failed(ReasonInvalidStatus, err.Error())}
	}

	out := pod.DeepCopy()
	var ops []jsonpatch.Operation
	remove := func(path string) { ops = append(ops, jsonpatch.Operation{Operation: "remove", Path: path}) }

	// Work on the gateway container first: its index is that of the
	// original pod, before any container is removed in front of it.
	if gi := containerIndex(out.Spec.Containers, st.GatewayContainer); gi >= 0 {
		gw := &out.Spec.Containers[gi]
		base := fmt.Sprintf("/spec/containers/%d", gi)
		mounts := make(map[MountRef]bool, len(st.GatewayMounts))
		for _, m := range st.GatewayMounts {
			mounts[m] = true
		}
		gw.VolumeMounts = removeWhere(gw.VolumeMounts, base+"/volumeMounts", remove, func(m corev1.VolumeMount) bool {
			return mounts[MountRef{Name: m.Name, MountPath: m.MountPath}]
		})
		envs := sets.New(st.GatewayEnv...)
		gw.Env = removeWhere(gw.Env, base+"/env", remove, func(e corev1.EnvVar) bool { return envs.Has(e.Name) })
	}
	vols := sets.New(st.Volumes...)
	out.Spec.Volumes = removeWhere(out.Spec.Volumes, "/spec/volumes", remove, func(v corev1.Volume) bool { return vols.Has(v.Name) })
	inits := sets.New(st.InitContainers...)
	out.Spec.InitContainers = removeWhere(out.Spec.InitContainers, "/spec/initContainers", remove, func(c corev1.Container) bool { return inits.Has(c.Name) })
	ctrs := sets.New(st.Containers...)
	out.Spec.Containers = removeWhere(out.Spec.Containers, "/spec/containers", remove, func(c corev1.Container) bool { return ctrs.Has(c.Name) })

	for _, k := range append(slices.Clone(st.Annotations), AnnotationStatus) {
		if _, ok := out.Annotations[k]; ok {
			delete(out.Annotations, k)
			remove("/metadata/annotations/" + escapePointer(k))
		}
	}
	if len(out.Annotations) == 0 {
		out.Annotations = nil
		ops = ops[:len(ops)-countPrefix(ops, "/metadata/annotations/")]
		remove("/metadata/annotations")
	}
	return Result{Pod: out, Decision: Decision{Outcome: OutcomeInjected, Reason: ReasonUninjected,
		Message: fmt.Sprintf("removed the %s agent and its volumes", st.Flavor)}, Patch: ops}
}

// removeWhere deletes matching items, emitting remove operations from the
// highest index down so that each index is still valid when applied. An
// array that ends up empty is removed whole, as Inject created it.
func removeWhere[T any](items []T, path string, remove func(string), match func(T) bool) []T {
	var idx []int
	for i := range items {
		if match(items[i]) {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return items
	}
	if len(idx) == len(items) {
		remove(path)
		return nil
	}
	out := slices.Clone(items)
	for j := len(idx) - 1; j >= 0; j-- {
		remove(fmt.Sprintf("%s/%d", path, idx[j]))
		out = slices.Delete(out, idx[j], idx[j]+1)
	}
	return out
}

func countPrefix(ops []jsonpatch.Operation, prefix string) int {
	n := 0
	for i := len(ops) - 1; i >= 0 && len(ops[i].Path) > len(prefix) && ops[i].Path[:len(prefix)] == prefix; i-- {
		n++
	}
	return n
}
