// Package nodeload measures the apiserver's view of the webhook on a real
// node (make bench-node): the chart installed as pods (test/chartinstall:
// the release images, self-managed certificates, the chart's default
// modes) on a real node (package node: kubelet, containerd, kube-proxy,
// kube-scheduler and the control plane in a network namespace of their
// own with no route out), and Gloo gateway pods created through the
// apiserver at fixed rates with and without the webhook, interleaved.
//
// BenchmarkPodCreation is the measurement; each of its b.Loop iterations
// is one round (-benchtime 5x: five rounds). Only a benchmark run starts a
// node: without -bench (make test runs go test ./test/...) TestMain runs
// the package's unit tests and nothing else.
package nodeload

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/sds-injector/sds-injector/test/chartinstall"
	"github.com/sds-injector/sds-injector/test/load/measure"
	"github.com/sds-injector/sds-injector/test/node"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// The two namespaces the gateway pods are created in: nsWith is selected
// by the chart's namespace-mode webhook; nsWithout carries the opt-out
// label sds-injection=disabled, which no webhook configuration of the
// chart selects (the per-gateway ones want the label absent), so the
// apiserver calls no webhook for its pods.
const (
	nsWith    = "gloo-injected"
	nsWithout = "gloo-plain"
)

var (
	n        *node.Node
	prepared *node.Prepared
	gwPod    *corev1.Pod
)

func TestMain(m *testing.M) {
	flag.Parse()
	if !benchmarking() {
		// No benchmark asked for (make test): the unit tests, no node.
		// Under -short RunMain starts none either (the benchmark skips
		// with the reason).
		os.Exit(m.Run())
	}
	os.Exit(node.RunMain(m, "nodeload", chartinstall.Prepare, inside))
}

func benchmarking() bool {
	f := flag.Lookup("test.bench")
	return f != nil && f.Value.String() != ""
}

func inside(ctx context.Context, m *testing.M, p *node.Prepared) (int, error) {
	prepared = p
	var err error
	if n, err = chartinstall.StartNode(ctx, prepared); err != nil {
		return 1, err
	}
	defer func() {
		if err := n.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "nodeload: FAIL: stopping the node:", err)
		}
	}()
	inst, err := chartinstall.Install(ctx, n, prepared, chartinstall.Options{Namespaces: []string{nsWith, nsWithout}})
	if err != nil {
		return 1, err
	}
	if _, err := chartinstall.WaitProxied(ctx, n.Clientset, chartinstall.Replicas, time.Minute); err != nil {
		return 1, err
	}
	for ns, v := range map[string]string{nsWith: "enabled", nsWithout: "disabled"} {
		nsObj, err := n.Clientset.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			return 1, err
		}
		if nsObj.Labels == nil {
			nsObj.Labels = map[string]string{}
		}
		nsObj.Labels[inject.NamespaceLabel] = v
		if _, err := n.Clientset.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
			return 1, err
		}
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "gateway-proxy", Namespace: ns}}
		if _, err := n.Clientset.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			return 1, err
		}
	}
	root, err := node.RepoRoot()
	if err != nil {
		return 1, err
	}
	if gwPod, err = measure.ExamplePod(root, "gloo-gateway-proxy.yaml"); err != nil {
		return 1, err
	}
	// The injector patches its caBundle (self-managed certificates) and the
	// apiserver loads webhook configurations asynchronously: wait until a
	// dry-run create in nsWith comes back injected.
	started := time.Now()
	var last error
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p := gatewayPod(nsWith, "probe", "probe")
		got, err := n.Clientset.CoreV1().Pods(nsWith).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			last = err
			return false, nil
		}
		return got.Annotations[inject.AnnotationStatus] != "", nil
	})
	if err != nil {
		return 1, fmt.Errorf("a dry-run gateway pod in %s was not injected: %w (last error: %v)", nsWith, err, last)
	}
	fmt.Fprintf(os.Stderr, "nodeload: node %s Ready; prepare %s, control plane %s, kubelet to Ready %s, scheduler + kube-proxy %s; chart: %d injector pods Ready %s after helm install, injecting %s later\n",
		n.Name, prepared.PrepareTook.Round(time.Millisecond), n.ControlPlaneStart.Round(time.Millisecond), n.KubeletReady.Round(time.Millisecond),
		n.ServicesReady.Round(time.Millisecond), len(inst.Pods), inst.Took.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
	return m.Run(), nil
}

// runLabel marks the pods of one measured run (deleted after it).
const runLabel = "nodeload.sds-injector.test/run"

// gatewayPod is the Gloo Edge gateway-proxy pod of docs/examples in ns.
// It never runs: it names a scheduler that does not exist (kube-scheduler
// leaves it alone, so it stays Pending and unbound, and the kubelet never
// sees it) and, should anything schedule it, a node selector no node has.
// What is measured is admission and storage, not containers.
func gatewayPod(ns, run, name string) *corev1.Pod {
	p := gwPod.DeepCopy()
	p.Namespace, p.Name = ns, name
	p.Labels[runLabel] = run
	p.Spec.SchedulerName = "sds-injector.test/no-scheduler"
	p.Spec.NodeSelector = map[string]string{"nodeload.sds-injector.test/no-such-node": "true"}
	return p
}
