// Package spirenode proves the spire flavor on a real node: a real SPIRE
// v1.13.3 server and agent (package spire: join_token node attestation, the
// unix and k8s workload attestors) run as processes on the node, the agent's
// socket directory on the node is the hostPath socket source, gateway pods
// from docs/examples are created through the real kube-apiserver, injected
// by the real webhook (`sds-injector serve` behind the shipped
// namespace-mode MutatingWebhookConfiguration) and run by a real kubelet
// with containerd and runc (package node), all inside a network namespace
// of the test's own with no route out. The gateway container runs
// gateway-checker as the gateway's uid; the injected spire-wait container
// runs the release sds-agent image.
//
// See docs/spire.md.
package spirenode

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/node"
	"github.com/sds-injector/sds-injector/test/spire"
)

// Test images (written by prepare, imported into the node's containerd).
const (
	sdsAgentRef = "sds-injector.test/sds-agent:spirenode"
	checkerRef  = "sds-injector.test/gateway-checker:spirenode"
)

var (
	n        *node.Node
	prepared *node.Prepared
	repoRoot string
	bins     spire.Binaries
	srv      *spire.Server
	// socketDir is the SPIRE agent's socket directory on the node: the
	// injector's identityProvider.spire.hostPath.
	socketDir string
	// spireDir holds the server's and agent's state.
	spireDir string
	// startup figures for the report
	serverReady time.Duration
)

func TestMain(m *testing.M) { os.Exit(node.RunMain(m, "spirenode", prepare, inside)) }

// prepare runs outside the namespace: it builds SPIRE (cached), the
// project's binaries and the images.
func prepare(ctx context.Context, p *node.Prepared) error {
	b, err := spire.Build(ctx)
	if err != nil {
		return fmt.Errorf("building SPIRE v%s: %w", spire.Version, err)
	}
	p.Values["spire-server"], p.Values["spire-agent"] = b.Server, b.Agent
	if b.Built > 0 {
		fmt.Fprintf(os.Stderr, "spirenode: built SPIRE v%s in %s (cached from now on)\n", spire.Version, b.Built.Round(time.Second))
	}
	built := map[string]string{}
	for _, pkg := range []string{"./cmd/sds-agent", "./cmd/sds-injector", "./test/node/cmd/gateway-checker"} {
		bin, err := node.BuildStatic(ctx, p.Dir, pkg, "-X main.version=spirenode-test")
		if err != nil {
			return err
		}
		built[filepath.Base(pkg)] = bin
	}
	p.Values["sds-injector"] = built["sds-injector"]
	// spire-wait runs the release sds-agent image's wait-socket mode.
	if err := p.AddReleaseImage("sds-agent", sdsAgentRef, built["sds-agent"], nil); err != nil {
		return err
	}
	return p.AddImage(&node.Image{Ref: checkerRef,
		Files:      map[string]string{"/usr/local/bin/gateway-checker": built["gateway-checker"]},
		Executable: []string{"/usr/local/bin/gateway-checker"},
		Config:     v1.Config{Entrypoint: []string{"/usr/local/bin/gateway-checker"}, WorkingDir: "/", Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}},
	})
}

func inside(ctx context.Context, m *testing.M, p *node.Prepared) (int, error) {
	prepared = p
	var err error
	if repoRoot, err = node.RepoRoot(); err != nil {
		return 1, err
	}
	bins = spire.Binaries{Server: prepared.Values["spire-server"], Agent: prepared.Values["spire-agent"]}
	n, err = node.Start(ctx, prepared, node.Options{
		ControlPlane:        controlplane.Options{WebhookInstallOptions: envtest.WebhookInstallOptions{LocalServingHost: "127.0.0.1"}},
		KubeletReadOnlyPort: true,
	})
	if err != nil {
		return 1, fmt.Errorf("starting the node: %w", err)
	}
	defer func() {
		if err := n.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "spirenode: FAIL: stopping the node:", err)
		}
	}()
	// SPIRE's k8s workload attestor reads the kubelet's read-only port on
	// 127.0.0.1 only; the kubelet serves it on the node IP. A relay on
	// loopback (inside the namespace) joins the two.
	stopRelay, err := node.Relay(net.JoinHostPort("127.0.0.1", strconv.Itoa(n.KubeletReadOnlyPort)),
		net.JoinHostPort(n.IP, strconv.Itoa(n.KubeletReadOnlyPort)))
	if err != nil {
		return 1, err
	}
	defer stopRelay()

	// Directories every uid can traverse: the agent's socket directory is
	// mounted into the pods.
	spireDir = filepath.Join(prepared.Dir, "spire")
	socketDir = filepath.Join(spireDir, "agent-sockets")
	for _, d := range []string{spireDir, filepath.Join(spireDir, "server"), filepath.Join(spireDir, "agent"), socketDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 1, err
		}
	}
	started := time.Now()
	if srv, err = spire.StartServer(ctx, bins, filepath.Join(spireDir, "server")); err != nil {
		return 1, err
	}
	serverReady = time.Since(started)
	defer srv.Stop()

	if _, err := n.CP.InstallMutatingWebhookFile(ctx, filepath.Join(repoRoot, "deploy", "webhook", "namespace-mode.yaml")); err != nil {
		return 1, err
	}
	// The spire flavor for every gateway, its socket from the agent's
	// socket directory on the node (docs/spire.md, Configuration).
	config := fmt.Sprintf("sdsAgentImage: %s\nimagePullPolicy: Never\nflavor: spire\nidentityProvider:\n  spire:\n    hostPath: %s\n    startupTimeout: 2m\n",
		sdsAgentRef, socketDir)
	started = time.Now()
	inj, err := n.ServeInjector(ctx, prepared.Values["sds-injector"], "spire", config)
	if err != nil {
		return 1, err
	}
	defer inj.Stop()
	fmt.Fprintf(os.Stderr, "spirenode: node %s Ready on %s (%s link); prepare %s, control plane %s, containerd %s, image import %s, kubelet to Ready %s, spire-server %s, webhook %s\n",
		n.Name, n.IP, prepared.Link, prepared.PrepareTook.Round(time.Millisecond), n.ControlPlaneStart.Round(time.Millisecond),
		n.ContainerdStart.Round(time.Millisecond), n.ImportTook.Round(time.Millisecond), n.KubeletReady.Round(time.Millisecond),
		serverReady.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
	return m.Run(), nil
}
