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
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

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
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	var err error
	injectorBin, err = harness.Build(ctx, harness.Injector, harness.BuildOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "building sds-injector:", err)
		return 1
	}
	cp, err = controlplane.Start(ctx, controlplane.Options{WebhookInstallOptions: envtest.WebhookInstallOptions{}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the local control plane:", err)
		return 1
	}
	defer func() {
		if err := cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the control plane:", err)
		}
	}()
	// The shipped namespace-mode configuration, pointed at the in-process
	// webhook each test starts.
	mwc, err := cp.InstallMutatingWebhookFile(ctx, filepath.Join(repoRoot, "deploy", "webhook", "namespace-mode.yaml"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := cp.WaitShippedWebhooks(ctx, mwc, true, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}
