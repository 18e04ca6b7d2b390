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
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sds-injector/sds-injector/test/chartinstall"
	"github.com/sds-injector/sds-injector/test/istiod"
	"github.com/sds-injector/sds-injector/test/node"
)

const (
	checkerRef = "sds-injector.test/gateway-checker:1"
	istiodHost = "istiod.istio-system.svc"
)

var (
	n        *node.Node
	ist      *istiod.Istiod
	prepared *node.Prepared
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips with the reason
	}
	os.Exit(node.Main(prepare, func(p *node.Prepared) int {
		prepared = p
		code, err := inside(m)
		if err != nil {
			fmt.Fprintln(os.Stderr, "chartnode: FAIL:", err)
			return 1
		}
		return code
	}))
}

// prepare runs outside the namespace: the release images, helm,
// kube-proxy and kube-scheduler (chartinstall.Prepare) and the gateway
// checker.
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

func inside(m *testing.M) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var err error
	if n, err = chartinstall.StartNode(ctx, prepared); err != nil {
		return 1, err
	}
	defer func() {
		if err := n.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "chartnode: FAIL: stopping the node:", err)
		}
	}()
	started := time.Now()
	if ist, err = istiod.Start(ctx, n.CP, istiod.Options{}); err != nil {
		return 1, err
	}
	istiodStart := time.Since(started)
	defer func() {
		if err := ist.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "chartnode: stopping istiod:", err)
		}
	}()
	stopRelay, err := relayCA()
	if err != nil {
		return 1, err
	}
	defer stopRelay()
	fmt.Fprintf(os.Stderr, "chartnode: node %s Ready on %s; prepare %s, control plane %s, containerd %s, image import %s, kubelet to Ready %s, scheduler + kube-proxy %s, istiod %s\n",
		n.Name, n.IP, prepared.PrepareTook.Round(time.Millisecond), n.ControlPlaneStart.Round(time.Millisecond),
		n.ContainerdStart.Round(time.Millisecond), n.ImportTook.Round(time.Millisecond), n.KubeletReady.Round(time.Millisecond),
		n.ServicesReady.Round(time.Millisecond), istiodStart.Round(time.Millisecond))
	return m.Run(), nil
}

// relayCA makes istiod's CA reachable at the engine's default address,
// istiod.istio-system.svc:15012, for host-network pods: a TCP relay on the
// node IP (inside the namespace) to istiod's secure gRPC port on loopback,
// and the name in the namespace's private /etc/hosts (as realnode does).
func relayCA() (func(), error) {
	_, port, err := net.SplitHostPort(ist.CAAddr)
	if err != nil {
		return nil, err
	}
	target := net.JoinHostPort("127.0.0.1", port)
	l, err := net.Listen("tcp", net.JoinHostPort(node.NodeIP, "15012"))
	if err != nil {
		return nil, fmt.Errorf("CA relay: %w", err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	f, err := os.OpenFile(filepath.Join(prepared.Dir, "hosts"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		l.Close()
		return nil, err
	}
	_, err = fmt.Fprintf(f, "%s\t%s\n", node.NodeIP, istiodHost)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return func() { l.Close() }, nil
}
