package fastpath

import (
	"fmt"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
)

// Engine is what package inject lends the webhook's fast path. S is
// inject.Settings and D inject.Decision; they are type parameters because
// this package cannot import package inject (inject imports it to
// register).
type Engine[S, D any] struct {
	// Screen decides from the fields a partial decode provides (metadata,
	// spec.hostNetwork, containers' and init containers' names and images).
	// final reports that the decision is the one the full pod would get.
	Screen func(pod *corev1.Pod, s *S) (d D, final bool)
	// Patch is the engine's decision and its JSON Patch for the full pod,
	// without building the mutated pod.
	Patch func(pod *corev1.Pod, s *S) (d D, ops []jsonpatch.Operation)
	// MayBeGateway reports whether raw JSON (a pod, or a review holding
	// one) contains any of the byte hints of a gateway candidate: false
	// means Screen settles the pod. It orders decoding work only.
	MayBeGateway func(s *S, raw []byte) bool
}

var registered any

// Register is called once, by package inject's init.
func Register[S, D any](e Engine[S, D]) {
	if registered != nil {
		panic("fastpath: engine registered twice")
	}
	registered = e
}

// Lookup returns the registered engine. It panics when package inject has
// not registered one with these types, which the first test of any
// importer shows.
func Lookup[S, D any]() Engine[S, D] {
	e, ok := registered.(Engine[S, D])
	if !ok || e.Screen == nil || e.Patch == nil || e.MayBeGateway == nil {
		panic(fmt.Sprintf("fastpath: no complete engine registered for %T (import webhook/inject)", e))
	}
	return e
}
