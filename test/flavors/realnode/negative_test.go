package realnode

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// TestNegativeControlsOnRealNode: an injector configured wrongly must give a
// gateway that never starts, for the stated reason, as the real kubelet and
// istiod report it. Each control runs its own `sds-injector serve` behind a
// copy of the shipped namespace-mode webhook for namespaces labelled with
// the control's name (sds-agent flavor, Gloo, classic placement: the
// postStart wait must hold the gateway back).
func TestNegativeControlsOnRealNode(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: needs root and starts a real node (kubelet, containerd, control plane built on first use) and istiod in a private network namespace")
	}
	gw := gateways[0]
	t.Run("wrong-token-audience", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		stop, err := extraWebhook(ctx, "wrong-audience", "tokenAudience: not-istio\n")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		ns := "neg-wrong-audience"
		logFrom := len(ist.Log())
		p := createInjected(ctx, t, ns, "wrong-audience", gw)
		for _, v := range p.Spec.Volumes {
			if v.Projected != nil {
				for _, src := range v.Projected.Sources {
					if src.ServiceAccountToken != nil && src.ServiceAccountToken.Audience != "not-istio" {
						t.Fatalf("injected token audience %q, want the configured not-istio", src.ServiceAccountToken.Audience)
					}
				}
			}
		}
		// istiod refuses the kubelet-minted token for its audience.
		want := `token audiences [\"not-istio\"] is invalid for the target audiences [\"istio-ca\"]`
		err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
			l := ist.Log()[logFrom:]
			return strings.Contains(l, want) || strings.Contains(l, strings.ReplaceAll(want, `\"`, `"`)), nil
		})
		if err != nil {
			t.Fatalf("istiod did not refuse the token for its audience (%s): %v\nistiod log (tail):\n%s", want, err, ist.LogTail(20))
		}
		t.Logf("istiod: %s", want)
		assertGatewayNeverStarted(ctx, t, ns, gw.container, 10*time.Second)
	})
	t.Run("missing-root-cert-configmap", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		const absent = "istio-ca-root-cert-absent"
		stop, err := extraWebhook(ctx, "absent-root", "rootCertConfigMap: "+absent+"\n")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		ns := "neg-absent-root"
		createInjected(ctx, t, ns, "absent-root", gw)
		// The real kubelet's FailedMount event.
		want := fmt.Sprintf(`configmap "%s" not found`, absent)
		var got string
		err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			evs, err := n.Clientset.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, nil
			}
			for _, e := range evs.Items {
				if e.Reason == "FailedMount" && strings.Contains(e.Message, want) {
					got = e.Message
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("no FailedMount event naming %s: %v", want, err)
		}
		t.Logf("kubelet: FailedMount: %s", got)
		assertGatewayNeverStarted(ctx, t, ns, gw.container, 5*time.Second)
	})
}

// createInjected creates the gateway pod in a namespace labelled
// sds-injection=<label> and checks the webhook injected it.
func createInjected(ctx context.Context, t *testing.T, ns, label string, gw gateway) *corev1.Pod {
	t.Helper()
	cp := preparePod(ctx, t, ns, label, inject.FlavorSDSAgent, gw, false)
	got, err := n.Clientset.CoreV1().Pods(ns).Create(ctx, cp.pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the pod: %v", err)
	}
	t.Cleanup(func() { deletePod(t, ns, "gw") })
	if st, err := inject.ParseStatus(got.Annotations[inject.AnnotationStatus]); err != nil || st == nil {
		t.Fatalf("the %s webhook did not inject the pod: %v", label, err)
	}
	return got
}

// assertGatewayNeverStarted watches the pod for a while: the gateway
// container must never run and the pod never be Ready.
func assertGatewayNeverStarted(ctx context.Context, t *testing.T, ns, container string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last *corev1.Pod
	for time.Now().Before(deadline) {
		p, err := n.Clientset.CoreV1().Pods(ns).Get(ctx, "gw", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		last = p
		if s := containerStatus(p, container); s != nil && (s.State.Running != nil || s.State.Terminated != nil || s.RestartCount > 0) {
			t.Fatalf("the gateway container ran: %+v", s.State)
		}
		if podReady(p) {
			t.Fatalf("the pod became Ready")
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Logf("for %s the gateway container %s never started (pod phase %s, not Ready)", d, container, last.Status.Phase)
}
