package node_test

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

	"github.com/sds-injector/sds-injector/test/node"
)

var n *node.Node

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// Every test skips with the reason (skipShort).
		os.Exit(m.Run())
	}
	os.Exit(node.Main(nil, func(p *node.Prepared) int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		var err error
		n, err = node.Start(ctx, p, node.Options{})
		if err != nil {
			fmt.Fprintln(os.Stderr, "node: FAIL: starting the node:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "node: %s Ready on %s (%s link): control plane %s, containerd %s, image import %s, kubelet to Ready %s\n",
			n.Name, n.IP, p.Link, n.ControlPlaneStart.Round(time.Millisecond), n.ContainerdStart.Round(time.Millisecond),
			n.ImportTook.Round(time.Millisecond), n.KubeletReady.Round(time.Millisecond))
		code := m.Run()
		if err := n.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "node: FAIL: stopping the node:", err)
			return 1
		}
		return code
	}))
}

// TestNodeRunsAPod: a hostNetwork pod of the locally imported pause image
// is run by the real kubelet and reported Running and Ready; the namespace
// still has no route out.
func TestNodeRunsAPod(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: needs root and starts a real node (kubelet, containerd, control plane built on first use) in a private network namespace")
	}
	ctx := context.Background()
	if err := node.CheckNoRouteOut(); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "pause", Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeName: n.Name, HostNetwork: true, AutomountServiceAccountToken: new(bool),
			Containers: []corev1.Container{{Name: "pause", Image: node.PauseRef, ImagePullPolicy: corev1.PullNever}},
		},
	}
	started := time.Now()
	if _, err := n.Clientset.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := n.Clientset.CoreV1().Pods("default").Get(ctx, "pause", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		got = p
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod not Ready: %v; status %+v\nkubelet log:\n%s", err, got.Status, n.LogTail("kubelet", 30))
	}
	t.Logf("pod Ready %s after create; pod IP %s (host network)", time.Since(started).Round(time.Millisecond), got.Status.PodIP)
	if got.Status.PodIP != n.IP {
		t.Errorf("hostNetwork pod IP %s, want the node IP %s", got.Status.PodIP, n.IP)
	}
}
