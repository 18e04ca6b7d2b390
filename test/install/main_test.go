// Package install proves the install story: the Helm chart (rendered with a
// helm binary built from the Go module proxy), its schema and RBAC, the
// plain manifests rendered from it, and — against a real kube-apiserver —
// that every rendered manifest applies (after cert-manager's CRDs, taken
// from the cert-manager module this project depends on), that the installed
// webhook configurations inject through the API server in both certificate
// modes, and that `sds-injector check` passes on a healthy installation and
// reports each fault it claims to detect. The suite runs as root inside a
// network namespace of its own (TestMain), where nothing routes out.
package install

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sds-injector/sds-injector/test/certmanager"
	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/netns"

	"github.com/sds-injector/sds-injector/test/harness"
)

var (
	cp *controlplane.ControlPlane
	// injectorBin is `sds-injector` built from this tree.
	injectorBin string
	// bins is what was built outside the network namespace.
	bins prepared
)

// installNet is the suite's private network namespace: the webhooks it runs
// listen on its address (EndpointSlices refuse loopback addresses), and no
// route leaves it.
var installNet = netns.Network{CIDR: "10.215.0.1/24", Link: "sdsinst0", Peer: "sdsinst1"}

const preparedEnv = "SDS_INJECTOR_INSTALL_PREPARED"

// prepared is built or fetched outside the namespace, where the module
// proxy is reachable, and handed to the run inside it.
type prepared struct {
	Injector string
	Helm     string
	// CertManagerDir holds the real cert-manager's binaries, or
	// CertManagerMissing says why they cannot be built (their sources are
	// absent: the tests that need them fail saying so).
	CertManagerDir     string
	CertManagerMissing string
	// CertManagerModule is the cert-manager module go.mod requires (for
	// its CRDs), at CertManagerVersion.
	CertManagerModule  string
	CertManagerVersion string
}

// TestMain runs the suite inside a network namespace of its own (package
// netns): the builds happen outside first; inside, a local control plane
// (and the webhooks the tests start) only ever talk over lo and installNet.
// It needs root, and fails without it. Under -short nothing is started and
// the tests that need the control plane or helm skip.
func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	os.Exit(netns.Main(netns.Suite{
		Name:    "install",
		RootFor: "a private network namespace for the webhooks the API server calls",
		Network: installNet,
		Prepare: prepare,
		Run: func(string) int {
			if err := json.Unmarshal([]byte(os.Getenv(preparedEnv)), &bins); err != nil {
				fmt.Fprintln(os.Stderr, "install: FAIL: reading what was prepared outside the namespace:", err)
				return 1
			}
			injectorBin = bins.Injector
			return controlplane.RunSuite(m, &cp, controlplane.Options{
				WithControllerManager: true,
				// The webhook configurations are installed exactly as rendered:
				// their clientConfig names the Service sds-injector/sds-injector.
				// With aggregator routing the API server resolves a Service through
				// its EndpointSlices (not the ClusterIP, which nothing routes here),
				// so the tests point a hand-made EndpointSlice at the webhook they
				// run on the namespace's address, and the API server verifies the
				// real serving certificate for sds-injector.sds-injector.svc.
				APIServerArgs: map[string][]string{"enable-aggregator-routing": {"true"},
					// No default route: the apiserver cannot pick an address itself.
					"advertise-address": {installNet.IP()}},
				WebhookInstallOptions: envtest.WebhookInstallOptions{},
			}, setup)
		},
	}))
}

// prepare builds, outside the namespace, everything the suite runs: the
// control plane binaries, helm, the real cert-manager, sds-injector; and
// fetches the cert-manager module for its CRDs.
func prepare(ctx context.Context) ([]string, func(), error) {
	kubeBin, err := controlplane.BinaryDir(ctx, true)
	if err != nil {
		return nil, nil, err
	}
	var p prepared
	if p.Helm, err = controlplane.HelmBinary(ctx); err != nil {
		return nil, nil, fmt.Errorf("building helm: %w", err)
	}
	var missing *certmanager.SourcesMissingError
	if p.CertManagerDir, err = certmanager.BinaryDir(ctx); errors.As(err, &missing) {
		p.CertManagerMissing = err.Error()
	} else if err != nil {
		return nil, nil, fmt.Errorf("building cert-manager %s: %w", certmanager.Version, err)
	}
	if p.Injector, err = harness.Build(ctx, harness.Injector, harness.BuildOptions{}); err != nil {
		return nil, nil, fmt.Errorf("building sds-injector: %w", err)
	}
	if p.CertManagerModule, p.CertManagerVersion, err = certManagerModuleDir(ctx); err != nil {
		return nil, nil, err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, nil, err
	}
	return []string{preparedEnv + "=" + string(b), "KUBEBUILDER_ASSETS=" + kubeBin, "HELM=" + p.Helm}, nil, nil
}

// setup installs cert-manager's CRDs.
func setup(ctx context.Context, _ *controlplane.ControlPlane) error {
	if err := installCertManagerCRDs(ctx, bins.CertManagerModule, bins.CertManagerVersion); err != nil {
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

func installCertManagerCRDs(ctx context.Context, dir, version string) error {
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
