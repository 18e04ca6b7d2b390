// Package install proves the install story: the Helm chart (rendered with a
// helm binary built from the Go module proxy), its schema and RBAC, the
// plain manifests rendered from it, and — against a real kube-apiserver —
// that every rendered manifest applies (after cert-manager's CRDs, taken
// from the cert-manager module this project depends on), that the installed
// webhook configurations inject through the API server in both certificate
// modes, and that `sds-injector check` passes on a healthy installation and
// reports each fault it claims to detect.
package install

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sds-injector/sds-injector/test/controlplane"

	"github.com/sds-injector/sds-injector/test/harness"
)

var (
	cp *controlplane.ControlPlane
	// injectorBin is `sds-injector` built from this tree.
	injectorBin string
)

func TestMain(m *testing.M) {
	os.Exit(controlplane.RunSuite(m, &cp, controlplane.Options{
		WithControllerManager: true,
		// The webhook configurations are installed exactly as rendered:
		// their clientConfig names the Service sds-injector/sds-injector.
		// With aggregator routing the API server resolves a Service through
		// its EndpointSlices (not the ClusterIP, which nothing routes here),
		// so the tests point a hand-made EndpointSlice at the webhook they
		// run on this host, and the API server verifies the real serving
		// certificate for sds-injector.sds-injector.svc.
		APIServerArgs:         map[string][]string{"enable-aggregator-routing": {"true"}},
		WebhookInstallOptions: envtest.WebhookInstallOptions{},
	}, setup))
}

// setup builds sds-injector and installs cert-manager's CRDs.
func setup(ctx context.Context, _ *controlplane.ControlPlane) error {
	var err error
	if injectorBin, err = harness.Build(ctx, harness.Injector, harness.BuildOptions{}); err != nil {
		return fmt.Errorf("building sds-injector: %w", err)
	}
	if err := installCertManagerCRDs(ctx); err != nil {
		return fmt.Errorf("installing cert-manager's CRDs: %w", err)
	}
	return nil
}

// certManagerModuleDir is the cert-manager module at the version go.mod
// requires, from the module cache.
func certManagerModuleDir(ctx context.Context) (string, string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", "github.com/cert-manager/cert-manager")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		return "", "", fmt.Errorf("go mod download github.com/cert-manager/cert-manager: %w", err)
	}
	var m struct{ Dir, Version string }
	if err := json.Unmarshal(out, &m); err != nil {
		return "", "", err
	}
	return m.Dir, m.Version, nil
}

func installCertManagerCRDs(ctx context.Context) error {
	dir, version, err := certManagerModuleDir(ctx)
	if err != nil {
		return err
	}
	crds := filepath.Join(dir, "deploy", "crds")
	files, err := filepath.Glob(filepath.Join(crds, "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no CRDs in %s (cert-manager %s)", crds, version)
	}
	args := []string{"apply", "--server-side"}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	if out, err := kubectl(ctx, args...); err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	if out, err := kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/certificates.cert-manager.io", "crd/issuers.cert-manager.io", "crd/clusterissuers.cert-manager.io", "crd/certificaterequests.cert-manager.io"); err != nil {
		return fmt.Errorf("%v\n%s", err, out)
	}
	fmt.Fprintf(os.Stderr, "install: cert-manager %s CRDs installed from %s\n", version, crds)
	return nil
}

func kubectl(ctx context.Context, args ...string) (string, error) {
	cmd, err := cp.KubectlCmd(ctx, args...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
