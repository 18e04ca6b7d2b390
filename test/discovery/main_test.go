// Package discovery proves zero-config injection with the installed Istio
// through a real kube-apiserver. realistio_test.go runs a real Istio
// install (Istio's istio-discovery chart rendered by helm, a real istiod
// per revision serving its injection webhook) beside sds-injector's shipped
// webhook: every labelling, both webhook orders, a tag moved between
// revisions, Istio removed. discovery_test.go covers what needs the values
// of specific releases (1.21.6 and 1.28.10, their ConfigMaps as rendered by
// those releases' charts) and the informer behaviour: the webhook (as
// `sds-injector serve` builds it, with "istio: auto") watches them, and
// pods created through the API get their revision's settings.
package discovery

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sds-injector/sds-injector/test/controlplane"

	"github.com/sds-injector/sds-injector/test/harness"
)

const repoRoot = "../.."

var (
	cp *controlplane.ControlPlane
	// injectorBin is `sds-injector` built from this tree (for check).
	injectorBin string
)

func TestMain(m *testing.M) {
	os.Exit(controlplane.RunSuite(m, &cp, controlplane.Options{WebhookInstallOptions: envtest.WebhookInstallOptions{}}, setup))
}

// setup builds sds-injector (for check) and installs the shipped
// namespace-mode configuration, pointed at the in-process webhook each test
// starts.
func setup(ctx context.Context, cp *controlplane.ControlPlane) error {
	var err error
	if injectorBin, err = harness.Build(ctx, harness.Injector, harness.BuildOptions{}); err != nil {
		return err
	}
	mwc, err := cp.InstallMutatingWebhookFile(ctx, filepath.Join(repoRoot, "deploy", "webhook", "namespace-mode.yaml"))
	if err != nil {
		return err
	}
	return cp.WaitShippedWebhooks(ctx, mwc, true, nil)
}
