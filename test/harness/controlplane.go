package harness

import "testing"

// NeedControlPlane skips t when the suite has no control plane (cp is
// nil, a *controlplane.ControlPlane as TestMain left it), which happens
// only under -short (TestMain starts none then; a start that fails fails the
// whole suite instead). make test does not run -short, so the skip never
// happens there; without -short a missing control plane fails.
func NeedControlPlane[T any](t testing.TB, cp *T) {
	t.Helper()
	if cp == nil {
		if !testing.Short() {
			t.Fatal("no local control plane although not -short: TestMain did not start one")
		}
		t.Skip("needs the local control plane (kube-apiserver + etcd built from source); run without -short")
	}
}
