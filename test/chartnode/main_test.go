// Package chartnode installs the Helm chart (self-managed certificates) onto
// a real node (package node: kubelet + containerd + runc inside a network
// namespace of the test's own with no route out), with the release images
// built by internal/imagebuild as `make images` builds them, and proves it
// works as pods: the injector pods become Ready through the kubelet's
// probes, run with the chart's security context, patch their caBundle, are
// reached by the API server through their Service (kube-proxy, iptables
// mode, inside the namespace) and inject a Gloo gateway Deployment applied
// with kubectl, whose pod the kubelet runs with the release sds-agent
// image against a real istiod. A rollout of the injector under a stream of
// gateway pod creations must fail no admission.
//
// See docs/install.md ("The chart on a real node").
package chartnode

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sds-injector/sds-injector/test/chartinstall"
	"github.com/sds-injector/sds-injector/test/istiod"
	"github.com/sds-injector/sds-injector/test/node"
)

const checkerRef = "sds-injector.test/gateway-checker:1"

var (
	n        *node.Node
	ist      *istiod.Istiod
	prepared *node.Prepared
)

func TestMain(m *testing.M) { os.Exit(node.RunMain(m, "chartnode", prepare, inside)) }

// prepare runs outside the namespace: the release images (as make images
// builds them: internal/imagebuild.BuildRelease for this machine's
// platform), the gateway checker, helm, kube-proxy and kube-scheduler.
func prepare(ctx context.Context, p *node.Prepared) error {
	if err := chartinstall.Prepare(ctx, p); err != nil {
		return err
	}
	checker, err := node.BuildStatic(ctx, p.Dir, "./test/node/cmd/gateway-checker")
	if err != nil {
		return err
	}
	return p.AddImage(&node.Image{Ref: checkerRef,
		Files:      map[string]string{"/usr/local/bin/gateway-checker": checker},
		Executable: []string{"/usr/local/bin/gateway-checker"},
		Config:     v1.Config{Entrypoint: []string{"/usr/local/bin/gateway-checker"}, WorkingDir: "/", Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}},
	})
}

func inside(ctx context.Context, m *testing.M, p *node.Prepared) (int, error) {
	prepared = p
	mesh, err := node.StartMesh(ctx, prepared, chartinstall.NodeOptions())
	if err != nil {
		return 1, err
	}
	defer func() {
		if err := mesh.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "chartnode: FAIL:", err)
		}
	}()
	n, ist = mesh.Node, mesh.Istiod
	istiodStart := mesh.IstiodStart
	fmt.Fprintf(os.Stderr, "chartnode: node %s Ready on %s; prepare %s, control plane %s, containerd %s, image import %s, kubelet to Ready %s, scheduler + kube-proxy %s, istiod %s\n",
		n.Name, n.IP, prepared.PrepareTook.Round(time.Millisecond), n.ControlPlaneStart.Round(time.Millisecond),
		n.ContainerdStart.Round(time.Millisecond), n.ImportTook.Round(time.Millisecond), n.KubeletReady.Round(time.Millisecond),
		n.ServicesReady.Round(time.Millisecond), istiodStart.Round(time.Millisecond))
	return m.Run(), nil
}
