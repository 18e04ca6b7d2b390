// Package flavors is the flavor proof on a real node: gateway pods from
// docs/examples are created through the real kube-apiserver, injected by the
// real webhook (`sds-injector serve`, reached through the shipped
// MutatingWebhookConfiguration), and run by a real kubelet with containerd
// and runc (package node) against a real istiod (package istiod), all inside
// a network namespace of the test's own with no route out. The agent
// containers run the real agent binaries from images written locally; the
// gateway container runs gateway-checker as the gateway's user.
//
// See docs/flavor-proof.md.
package flavors

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/internal/imagebuild"
	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/harness"
	"github.com/sds-injector/sds-injector/test/istiod"
	"github.com/sds-injector/sds-injector/test/node"
)

// Test images (written by prepare, imported into the node's containerd).
const (
	// proxyv2Ref is the proxyv2 test image (pilot-agent of the Istio
	// under test); its tag names the Istio module or release.
	proxyv2Repo = "sds-injector.test/proxyv2"
	sdsAgentRef = "sds-injector.test/sds-agent:dev"
	checkerRef  = "sds-injector.test/gateway-checker:1"
	// certTTL is the lifetime the agent images ask istiod for (image ENV
	// CERT_TTL for sds-agent, SECRET_TTL for pilot-agent; the injected env
	// sets neither), short so that a rotation happens within a case.
	certTTL = 20 * time.Second
)

var (
	n        *node.Node
	ist      *istiod.Istiod
	prepared *node.Prepared
	repoRoot string
	// startup figures for the report
	serveReady time.Duration
)

func TestMain(m *testing.M) { os.Exit(node.RunMain(m, "flavors", prepare, inside)) }

// prepare runs outside the namespace: it builds the binaries and images.
func prepare(ctx context.Context, p *node.Prepared) error {
	bins := map[string]string{}
	for _, pkg := range []string{"./cmd/sds-agent", "./cmd/sds-injector", "./test/node/cmd/gateway-checker", "./test/node/cmd/stand-in-envoy"} {
		b, err := node.BuildStatic(ctx, p.Dir, pkg, "-X main.version=flavors-test")
		if err != nil {
			return err
		}
		bins[filepath.Base(pkg)] = b
	}
	p.Values["sds-injector"] = bins["sds-injector"]
	path := []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	// proxyv2 as Istio's Dockerfile.proxyv2 lays it out: pilot-agent as
	// ENTRYPOINT, the bootstrap template, Envoy at /usr/local/bin/envoy --
	// here the STAND-IN (test/node/cmd/stand-in-envoy), not Envoy.
	if err := p.AddImage(&node.Image{Ref: proxyv2Ref(),
		Files: map[string]string{
			"/usr/local/bin/pilot-agent":                     filepath.Join(p.IstioBinDir, istiod.AgentBinary),
			"/usr/local/bin/envoy":                           bins["stand-in-envoy"],
			"/var/lib/istio/envoy/envoy_bootstrap_tmpl.json": bootstrapTemplate(p.IstioModuleDir),
		},
		Executable: []string{"/usr/local/bin/pilot-agent", "/usr/local/bin/envoy"},
		Config: v1.Config{Entrypoint: []string{"/usr/local/bin/pilot-agent"}, WorkingDir: "/", User: "1337:1337",
			Env: append(path, "SECRET_TTL="+certTTL.String())},
	}); err != nil {
		return err
	}
	// sds-agent: the release image itself (internal/imagebuild, what make
	// images builds: scratch, uid 65532, WORKDIR /), from the test's
	// binary, plus only CERT_TTL so that a rotation happens within a case.
	agentSpec := imagebuild.ReleaseImages[1]
	if agentSpec.Name != "sds-agent" {
		return fmt.Errorf("imagebuild.ReleaseImages[1] is %q, not sds-agent", agentSpec.Name)
	}
	spec := agentSpec.Spec(bins["sds-agent"], v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, "flavors-test", "test", time.Unix(1, 0))
	spec.Env = append(path, "CERT_TTL="+certTTL.String())
	agentImg, err := imagebuild.Build(spec)
	if err != nil {
		return fmt.Errorf("the release sds-agent image: %w", err)
	}
	agentTar := p.ArchivePath(sdsAgentRef)
	if err := os.MkdirAll(filepath.Dir(agentTar), 0o755); err != nil {
		return err
	}
	if err := imagebuild.WriteArchive(agentTar, sdsAgentRef, agentImg); err != nil {
		return err
	}
	p.AddArchive(sdsAgentRef, agentTar)
	return p.AddImage(&node.Image{Ref: checkerRef,
		Files:      map[string]string{"/usr/local/bin/gateway-checker": bins["gateway-checker"]},
		Executable: []string{"/usr/local/bin/gateway-checker"},
		Config:     v1.Config{Entrypoint: []string{"/usr/local/bin/gateway-checker"}, WorkingDir: "/", Env: path},
	})
}

// proxyv2Ref is the proxyv2 test image's reference: tagged with the
// release under test (test/istio-releases/run.sh), or dev for the Istio
// module the suites build.
func proxyv2Ref() string {
	if rel := istiod.ReleaseUnderTest(); rel != "" {
		return proxyv2Repo + ":" + rel
	}
	return proxyv2Repo + ":module"
}

// bootstrapTemplate is the Envoy bootstrap template Istio's proxyv2 image
// ships, from the Istio source under test (Istio 1.5 named it
// envoy_bootstrap_v2.json).
func bootstrapTemplate(istioSource string) string {
	dir := filepath.Join(istioSource, "tools", "packaging", "common")
	for _, name := range []string{"envoy_bootstrap.json", "envoy_bootstrap_v2.json"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name)
		}
	}
	return filepath.Join(dir, "envoy_bootstrap.json")
}

func inside(ctx context.Context, m *testing.M, p *node.Prepared) (int, error) {
	prepared = p
	var err error
	if repoRoot, err = node.RepoRoot(); err != nil {
		return 1, err
	}
	mesh, err := node.StartMesh(ctx, prepared, node.Options{ControlPlane: controlplane.Options{
		WebhookInstallOptions: envtest.WebhookInstallOptions{LocalServingHost: "127.0.0.1"},
	}})
	if err != nil {
		return 1, err
	}
	defer func() {
		if err := mesh.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "flavors: FAIL:", err)
		}
	}()
	n, ist = mesh.Node, mesh.Istiod
	istiodStart := mesh.IstiodStart
	stop, err := startWebhook(ctx)
	if err != nil {
		return 1, err
	}
	defer stop()
	fmt.Fprintf(os.Stderr, "flavors: node %s Ready on %s (%s link); prepare %s, control plane %s, containerd %s, image import %s, kubelet to Ready %s, istiod %s, webhook %s\n",
		n.Name, n.IP, prepared.Link, prepared.PrepareTook.Round(time.Millisecond), n.ControlPlaneStart.Round(time.Millisecond),
		n.ContainerdStart.Round(time.Millisecond), n.ImportTook.Round(time.Millisecond), n.KubeletReady.Round(time.Millisecond),
		istiodStart.Round(time.Millisecond), serveReady.Round(time.Millisecond))
	return m.Run(), nil
}

// startWebhook installs the shipped namespace-mode webhook configuration
// (pointed at the local serving address) and runs `sds-injector serve`
// there, configured for this node: the local images (the CA address stays
// the default, see node.StartMesh).
func startWebhook(ctx context.Context) (func(), error) {
	w := n.CP.WebhookInstallOptions
	if _, err := n.CP.InstallMutatingWebhookFile(ctx, filepath.Join(repoRoot, "deploy", "webhook", "namespace-mode.yaml")); err != nil {
		return nil, err
	}
	started := time.Now()
	stop, err := serve(ctx, "main", w.LocalServingPort, "")
	serveReady = time.Since(started)
	return stop, err
}

// baseConfig is the injector configuration of every webhook here; against
// a release (test/istio-releases/run.sh) the webhooks use its agent
// contract (istioVersion). extra lines may override istioVersion.
func baseConfig(extra string) string {
	cfg := fmt.Sprintf("%sagentImage: %s\nsdsAgentImage: %s\nimagePullPolicy: Never\n", harness.ConfigHeader, proxyv2Ref(), sdsAgentRef)
	if rel := istiod.ReleaseUnderTest(); rel != "" && !strings.Contains(extra, "istioVersion:") {
		cfg += "istioVersion: " + rel + "\n"
	}
	return cfg + extra
}

// serve runs `sds-injector serve` on 127.0.0.1:port with baseConfig plus
// extra (YAML lines) and waits until it is ready.
func serve(ctx context.Context, name string, port int, extra string) (func(), error) {
	inj, err := n.ServeInjectorAt(ctx, prepared.Values["sds-injector"], name, baseConfig(extra), port)
	if err != nil {
		return nil, err
	}
	return inj.Stop, nil
}

// extraWebhook runs a second, differently configured injector for the
// namespaces labelled sds-injection=<label>: the shipped namespace-mode
// configuration with that label value and its own name, pointed at its own
// port.
func extraWebhook(ctx context.Context, label, extra string) (func(), error) {
	data, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "webhook", "namespace-mode.yaml"))
	if err != nil {
		return nil, err
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(data, &mwc); err != nil {
		return nil, err
	}
	mwc.Name += "-" + label
	for i := range mwc.Webhooks {
		mwc.Webhooks[i].Name = label + "." + mwc.Webhooks[i].Name
		for j, e := range mwc.Webhooks[i].NamespaceSelector.MatchExpressions {
			if e.Key == "sds-injection" {
				mwc.Webhooks[i].NamespaceSelector.MatchExpressions[j].Values = []string{label}
			}
		}
	}
	out, err := yaml.Marshal(&mwc)
	if err != nil {
		return nil, err
	}
	file := filepath.Join(prepared.Dir, "webhook-"+label+".yaml")
	if err := os.WriteFile(file, out, 0o644); err != nil {
		return nil, err
	}
	port, release, err := harness.ReservePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	stopServe, err := serve(ctx, label, port, extra)
	if err != nil {
		release()
		return nil, err
	}
	stop := func() { stopServe(); release() }
	installed, err := n.CP.InstallMutatingWebhookFileAt(ctx, file, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		stop()
		return nil, err
	}
	return func() {
		_ = n.CP.Client.Delete(context.Background(), installed)
		stop()
	}, nil
}
