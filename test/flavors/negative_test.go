package flavors

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/sds-injector/sds-injector/test/node"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// TestNegativeControlsOnRealNode: an injector configured wrongly, or a
// gateway that cannot see the agent's output, must leave the gateway
// without a certificate, for the stated reason, as the real kubelet, istiod
// and the agent report it. Every control runs for every flavor (Gloo,
// classic placement). The misconfigured ones run their own
// `sds-injector serve` behind a copy of the shipped namespace-mode webhook
// for namespaces labelled with the control's name.
func TestNegativeControlsOnRealNode(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: needs root and starts a real node (kubelet, containerd, control plane built on first use) and istiod in a private network namespace")
	}
	gw := gateways[0]
	withWebhook := func(t *testing.T, label, extra string, run func(t *testing.T, flavor inject.Flavor)) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stop, err := extraWebhook(ctx, label, extra)
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		for _, flavor := range inject.Flavors {
			t.Run(string(flavor), func(t *testing.T) { run(t, flavor) })
		}
	}

	t.Run("wrong-token-audience", func(t *testing.T) {
		withWebhook(t, "wrong-audience", "tokenAudience: not-istio\n", func(t *testing.T, flavor inject.Flavor) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			ns := nsFor("neg-wrong-audience", flavor)
			logFrom := len(ist.Log())
			p := createInjected(ctx, t, ns, "wrong-audience", flavor, gw)
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
			err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
				l := ist.Log()[logFrom:]
				return strings.Contains(l, want) || strings.Contains(l, strings.ReplaceAll(want, `\"`, `"`)), nil
			})
			if err != nil {
				t.Fatalf("istiod did not refuse the token for its audience (%s): %v\nistiod log (tail):\n%s", want, err, ist.LogTail(20))
			}
			t.Logf("istiod: %s", want)
			assertNoCertificate(ctx, t, p, gw.container, 10*time.Second, false)
		})
	})

	t.Run("missing-root-cert-configmap", func(t *testing.T) {
		const absent = "istio-ca-root-cert-absent"
		withWebhook(t, "absent-root", "rootCertConfigMap: "+absent+"\n", func(t *testing.T, flavor inject.Flavor) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			ns := nsFor("neg-absent-root", flavor)
			p := createInjected(ctx, t, ns, "absent-root", flavor, gw)
			// The real kubelet's FailedMount event.
			want := fmt.Sprintf(`MountVolume.SetUp failed for volume %q : configmap %q not found`, inject.VolumeIstiodCACert, absent)
			var got string
			err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
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
				t.Fatalf("no FailedMount event %q: %v", want, err)
			}
			t.Logf("kubelet: FailedMount: %s", got)
			assertNothingRan(ctx, t, ns, p.Name, 5*time.Second)
		})
	})

	// The ConfigMap exists but holds no root-cert.pem: the kubelet mounts
	// it, and the agent itself must refuse to run without the root
	// certificate (what the emulator once forced by ignoring the mount
	// failure, here as the kubelet really runs it).
	t.Run("root-cert-configmap-without-the-certificate", func(t *testing.T) {
		const empty = "istio-ca-root-cert-empty"
		withWebhook(t, "empty-root", "rootCertConfigMap: "+empty+"\n", func(t *testing.T, flavor inject.Flavor) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			ns := nsFor("neg-empty-root", flavor)
			p := createInjectedWith(ctx, t, ns, "empty-root", flavor, gw, func() {
				_, err := n.Clientset.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: empty},
					Data: map[string]string{"README": "no root-cert.pem here"}}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
			})
			st, _ := inject.ParseStatus(p.Annotations[inject.AnnotationStatus])
			agent := agentName(st)
			re := regexp.MustCompile(`root CA file for CA does not exist \S*var/run/secrets/istio/root-cert\.pem`)
			if flavor == inject.FlavorSDSAgent {
				re = regexp.MustCompile(`(?i)root[- _]?cert[^\n]*(no such file|not exist|missing)|(no such file|not exist)[^\n]*root-cert\.pem`)
			}
			logs := n.Logs(p)
			var evidence string
			err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
				lines, err := logs.Lines(agent, 0)
				if err != nil {
					return false, nil
				}
				for _, l := range lines {
					if m := re.FindString(l.Text); m != "" {
						evidence = l.Text
						return true, nil
					}
				}
				return false, nil
			})
			if err != nil {
				lines, _ := logs.Lines(agent, 0)
				t.Fatalf("the agent (%s) did not refuse for the missing root certificate (%s): %v\nits log:\n%s", agent, re, err, node.JoinLines(lines, 30))
			}
			t.Logf("agent %s without root-cert.pem: %s", agent, strings.TrimSpace(evidence))
			assertNoCertificate(ctx, t, p, gw.container, 10*time.Second, false)
		})
	})

	// The webhook's pod with the gateway's shared mounts taken out (a pod
	// the webhook never writes; it is taken from the webhook's dry-run
	// answer and created where no webhook injects): the agent works, the
	// gateway sees nothing.
	t.Run("gateway-without-shared-mount", func(t *testing.T) {
		for _, flavor := range inject.Flavors {
			t.Run(string(flavor), func(t *testing.T) { runWithoutSharedMount(t, flavor, gw) })
		}
	})
}

func runWithoutSharedMount(t *testing.T, flavor inject.Flavor, gw gateway) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cs := n.Clientset
	ns := nsFor("neg-no-mount", flavor)
	cp := preparePod(ctx, t, ns, "enabled", flavor, gw, false, engineIstioVersion())
	dry, err := cs.CoreV1().Pods(ns).Create(ctx, cp.pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatalf("dry-run create through the webhook: %v", err)
	}
	st, err := inject.ParseStatus(dry.Annotations[inject.AnnotationStatus])
	if err != nil || st == nil || len(st.GatewayMounts) == 0 {
		t.Fatalf("the webhook's dry-run answer: status %v, gateway mounts %v", err, st)
	}
	// No webhook for the real create: the namespace loses its label.
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{"sds-injection": nil}}})
	if _, err := cs.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := dry.DeepCopy()
	pod.ObjectMeta = metav1.ObjectMeta{Name: dry.Name, Namespace: ns, Labels: dry.Labels, Annotations: dry.Annotations}
	pod.Status = corev1.PodStatus{}
	var removed []string
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		if c.Name != st.GatewayContainer {
			continue
		}
		var kept []corev1.VolumeMount
		for _, m := range c.VolumeMounts {
			shared := false
			for _, gm := range st.GatewayMounts {
				shared = shared || gm.Name == m.Name
			}
			if shared {
				removed = append(removed, m.Name+" at "+m.MountPath)
			} else {
				kept = append(kept, m)
			}
		}
		c.VolumeMounts = kept
	}
	if len(removed) == 0 {
		t.Fatalf("the gateway container %s had none of the shared mounts %v", st.GatewayContainer, st.GatewayMounts)
	}
	got, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(t, ns, got.Name) })
	if got.Annotations[inject.AnnotationStatus] != dry.Annotations[inject.AnnotationStatus] || len(got.Spec.Containers) != len(dry.Spec.Containers) {
		t.Fatalf("the pod was changed on the way in (a webhook ran?)")
	}
	t.Logf("the webhook's pod without the gateway's shared mounts (%s)", strings.Join(removed, ", "))
	// The agent itself works, as the kubelet sees it ...
	agent := agentName(st)
	ready, err := n.WaitPod(ctx, ns, got.Name, 2*time.Minute, func(p *corev1.Pod) bool {
		s := node.StatusOf(p, agent)
		return s != nil && s.Ready
	})
	if err != nil {
		t.Fatalf("the agent %s not Ready: %v\n%s", agent, err, n.Describe(ready))
	}
	// ... but the gateway cannot see its output.
	evs, err := n.Logs(got).WaitEvents(ctx, gw.container, 0, time.Minute, func(evs []node.CheckerEvent) bool {
		return hasError(evs, "no such file or directory")
	})
	if err != nil {
		t.Fatalf("the gateway did not report the missing %s: %v", cp.path, err)
	}
	if evs[0].Event != "start" || evs[0].PresentAtStart == nil || *evs[0].PresentAtStart {
		t.Errorf("first gateway event %+v, want start with nothing at %s", evs[0], cp.path)
	}
	assertNoCertificate(ctx, t, got, gw.container, 5*time.Second, true)
	for _, e := range evs {
		if e.Event == "error" || e.Event == "stream-end" {
			t.Logf("gateway (agent %s Ready): %s", agent, e.Error)
			break
		}
	}
}

func nsFor(control string, flavor inject.Flavor) string {
	return control + "-" + strings.ReplaceAll(string(flavor), "_", "-")
}

// createInjected creates the gateway pod in a namespace labelled
// sds-injection=<label> and checks the webhook injected it.
func createInjected(ctx context.Context, t *testing.T, ns, label string, flavor inject.Flavor, gw gateway) *corev1.Pod {
	return createInjectedWith(ctx, t, ns, label, flavor, gw, nil)
}

// createInjectedWith is createInjected with before run after the namespace
// exists and before the pod is created.
func createInjectedWith(ctx context.Context, t *testing.T, ns, label string, flavor inject.Flavor, gw gateway, before func()) *corev1.Pod {
	t.Helper()
	cp := preparePod(ctx, t, ns, label, flavor, gw, false, engineIstioVersion())
	if before != nil {
		before()
	}
	got, err := n.Clientset.CoreV1().Pods(ns).Create(ctx, cp.pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the pod: %v", err)
	}
	t.Cleanup(func() { deletePod(t, ns, got.Name) })
	if st, err := inject.ParseStatus(got.Annotations[inject.AnnotationStatus]); err != nil || st == nil || st.Flavor != flavor {
		t.Fatalf("the %s webhook did not inject the pod with flavor %s: %v (status %v)", label, flavor, err, st)
	}
	return got
}

// assertNothingRan watches the pod for d: no container may run and the pod
// is never Ready.
func assertNothingRan(ctx context.Context, t *testing.T, ns, name string, d time.Duration) {
	t.Helper()
	last := watchPodFor(ctx, t, ns, name, d, false, func(p *corev1.Pod) string {
		for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			if s.State.Running != nil || s.State.Terminated != nil || s.RestartCount > 0 {
				return fmt.Sprintf("container %s ran: %+v", s.Name, s.State)
			}
		}
		return ""
	})
	t.Logf("for %s no container ran (pod phase %s, not Ready)", d, last.Status.Phase)
}

// assertNoCertificate watches the pod for d: the gateway container either
// never runs (the agent's startup gate holds it back) or runs without ever
// verifying a certificate, and the pod is never Ready -- unless readyOK:
// the gateway-checker container has no readiness probe of its own (Envoy's
// are removed), so a pod whose agent is fine is Ready whatever the gateway
// sees.
func assertNoCertificate(ctx context.Context, t *testing.T, pod *corev1.Pod, container string, d time.Duration, readyOK bool) {
	t.Helper()
	logs := n.Logs(pod)
	started := false
	last := watchPodFor(ctx, t, pod.Namespace, pod.Name, d, readyOK, func(p *corev1.Pod) string {
		if s := node.StatusOf(p, container); s != nil && (s.State.Running != nil || s.State.Terminated != nil || s.RestartCount > 0) {
			started = true
		}
		if !started {
			return ""
		}
		evs, _ := logs.Events(container, 0)
		if n := node.CountEvents(evs, "cert"); n > 0 {
			return fmt.Sprintf("the gateway verified %d certificate(s)", n)
		}
		return ""
	})
	if !started {
		t.Logf("for %s the gateway container %s never started (pod phase %s, not Ready)", d, container, last.Status.Phase)
		return
	}
	evs, _ := logs.Events(container, 0)
	var errs []string
	for _, e := range evs {
		if e.Error != "" && !slices.Contains(errs, e.Error) {
			errs = append(errs, e.Error)
		}
	}
	ready := "not Ready"
	if node.PodReady(last) {
		ready = "Ready: its agent is"
	}
	if len(errs) == 0 {
		errs = []string{"no answer"}
	}
	t.Logf("for %s the gateway container %s ran without a certificate (pod %s); it saw: %s", d, container, ready, strings.Join(errs, " | "))
}

// watchPodFor polls the pod for d and fails the test as soon as bad
// returns a reason or (unless readyOK) the pod is Ready; it returns the last
// pod seen.
func watchPodFor(ctx context.Context, t *testing.T, ns, name string, d time.Duration, readyOK bool, bad func(*corev1.Pod) string) *corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(d)
	var last *corev1.Pod
	for {
		p, err := n.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		last = p
		if why := bad(p); why != "" {
			t.Fatal(why)
		}
		if !readyOK && node.PodReady(p) {
			t.Fatalf("the pod became Ready")
		}
		if !time.Now().Before(deadline) {
			return last
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}
