package harness

import (
	"testing"

	"github.com/sds-injector/sds-injector/test/controlplane"
)

// NeedControlPlane skips t when the suite has no control plane, which
// happens only under -short (TestMain starts none then; a start that fails
// fails the whole suite instead). make test does not run -short, so the
// skip never happens there; without -short a missing control plane fails.
func NeedControlPlane(t testing.TB, cp *controlplane.ControlPlane) {
	t.Helper()
	if cp == nil {
		if !testing.Short() {
			t.Fatal("no local control plane although not -short: TestMain did not start one")
		}
		t.Skip("needs the local control plane (kube-apiserver + etcd built from source); run without -short")
	}
}
