package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/webhook/inject"

	"github.com/sds-injector/sds-injector/test/harness"
)

const repoRoot = "../.."

// Mode names the shipped MutatingWebhookConfiguration files.
type Mode string

const (
	ModeNamespace   Mode = "namespace-mode"
	ModePerGateway  Mode = "per-gateway-mode"
	ModeClusterWide Mode = "cluster-wide-mode"
)

// loadShipped reads a webhook configuration from deploy/webhook exactly as
// users apply it.
func loadShipped(t *testing.T, mode Mode) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	return harness.ShippedWebhook(t, string(mode)+".yaml")
}

// installMode applies the shipped configuration for mode, pointing its
// client config at the in-process webhook, and removes it when the test
// ends. Everything else — selectors, matchConditions, failurePolicy,
// timeouts, reinvocation — is as shipped.
func installMode(t *testing.T, mode Mode) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	return installFile(t, filepath.Join(repoRoot, "deploy", "webhook", string(mode)+".yaml"))
}

// installFile is installMode for a configuration file of the test's own.
func installFile(t *testing.T, file string) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	mwc, err := cp.InstallMutatingWebhookFile(context.Background(), file)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeWebhooks(t, mwc) })
	waitWebhooks(t, mwc, true)
	return mwc
}

// waitWebhooks waits until the apiserver, whose webhook configuration cache
// updates asynchronously, calls (want) or no longer calls (!want) every
// webhook of mwc. It probes each webhook with a dry-run Gloo pod that the
// webhook selects, so it works whether or not a webhook server is running.
func waitWebhooks(t *testing.T, mwc *admissionregistrationv1.MutatingWebhookConfiguration, want bool) {
	t.Helper()
	// The suite's relabel webhook copies the namespace mode's selection.
	aliases := map[string]string{"relabel.test.sds-injector.io": "namespace.sds-injector.io"}
	if err := cp.WaitShippedWebhooks(context.Background(), mwc, want, aliases); err != nil {
		t.Fatal(err)
	}
}

// removeWebhooks deletes mwc and waits until the apiserver stops calling
// its webhooks, so that the next test starts from a clean apiserver.
func removeWebhooks(t *testing.T, mwc *admissionregistrationv1.MutatingWebhookConfiguration) {
	t.Helper()
	if err := cp.Client.Delete(context.Background(), mwc); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("removing %s: %v", mwc.Name, err)
		return
	}
	waitWebhooks(t, mwc, false)
}

var nsCounter int

// namespace creates a fresh namespace with the given labels and the
// ServiceAccounts the example pods use (envtest runs no ServiceAccount
// admission plugin, so pods must name an existing account).
func namespace(t *testing.T, labels map[string]string) string {
	t.Helper()
	nsCounter++
	name := fmt.Sprintf("it-%s-%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), nsCounter)
	if len(name) > 63 {
		name = fmt.Sprintf("it-%d-%s", nsCounter, name[len(name)-50:])
	}
	name = strings.Trim(strings.ReplaceAll(name, "_", "-"), "-")
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := cp.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"gateway-proxy", "envoy-default-eg-e41e7b31", "default", "gateway"} {
		if err := cp.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: name}}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = cp.Client.Delete(context.Background(), ns) })
	return name
}

func glooPod(t *testing.T, ns, name string, labels, annotations map[string]string) *corev1.Pod {
	return harness.ExamplePod(t, "gloo-gateway-proxy.yaml", ns, name, labels, annotations)
}

// create submits the pod and returns what the apiserver stored.
func create(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	if err := cp.Client.Create(context.Background(), pod); err != nil {
		t.Fatalf("creating %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	var stored corev1.Pod
	if err := cp.Client.Get(context.Background(), client.ObjectKeyFromObject(pod), &stored); err != nil {
		t.Fatal(err)
	}
	return &stored
}

// injectedStatus returns the parsed status annotation, or nil.
func injectedStatus(t *testing.T, pod *corev1.Pod) *inject.Status {
	t.Helper()
	v, ok := pod.Annotations[inject.AnnotationStatus]
	if !ok {
		return nil
	}
	st, err := inject.ParseStatus(v)
	if err != nil {
		t.Fatalf("stored pod has a bad status: %v", err)
	}
	return st
}

func assertInjected(t *testing.T, pod *corev1.Pod) *inject.Status {
	t.Helper()
	st := injectedStatus(t, pod)
	if st == nil {
		t.Fatalf("pod %s/%s was not injected; containers %v", pod.Namespace, pod.Name, containerNames(pod))
	}
	agents := 0
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name == "istio-proxy" || c.Name == "sds-agent" {
			agents++
		}
	}
	if agents != 1 {
		t.Fatalf("pod %s/%s has %d agent containers: %v", pod.Namespace, pod.Name, agents, containerNames(pod))
	}
	return st
}

func assertNotInjected(t *testing.T, pod *corev1.Pod, wantContainers int) {
	t.Helper()
	if st := injectedStatus(t, pod); st != nil || len(pod.Spec.Containers) != wantContainers || len(pod.Spec.InitContainers) != 0 {
		t.Fatalf("pod %s/%s was changed: containers %v, init %d, status %v", pod.Namespace, pod.Name, containerNames(pod), len(pod.Spec.InitContainers), st != nil)
	}
}

func containerNames(pod *corev1.Pod) []string {
	var n []string
	for _, c := range pod.Spec.InitContainers {
		n = append(n, "init:"+c.Name)
	}
	for _, c := range pod.Spec.Containers {
		n = append(n, c.Name)
	}
	return n
}

func getPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	var p corev1.Pod
	err := cp.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &p)
	return &p, err
}

func restClient() (rest.Interface, error) {
	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		return nil, err
	}
	return cs.CoreV1().RESTClient(), nil
}

// admissionLoad keeps creating opted-in gateway pods (dry-run, so nothing
// accumulates) through the API server until stopped, counting admissions
// that failed or came back uninjected.
type admissionLoad struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	stopCh     chan struct{}
	wg         sync.WaitGroup
}

func startAdmissionLoad(t *testing.T, ns string, workers int) *admissionLoad {
	t.Helper()
	l := &admissionLoad{stopCh: make(chan struct{})}
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func(w int) {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stopCh:
					return
				default:
				}
				pod := glooPod(t, ns, fmt.Sprintf("load-%d-%d", w, i), map[string]string{labelInject: "true"}, nil)
				err := cp.Client.Create(context.Background(), pod, client.DryRunAll)
				if err == nil && pod.Annotations[inject.AnnotationStatus] == "" {
					err = fmt.Errorf("pod admitted without injection")
				}
				if err != nil {
					l.failed.Add(1)
					l.firstErr.CompareAndSwap(nil, err)
					continue
				}
				l.ok.Add(1)
			}
		}(w)
	}
	return l
}

// waitMore waits until the load has made n more successful admissions than
// when it was called: the load, not a clock, measures "a while".
func (l *admissionLoad) waitMore(t *testing.T, n int64, what string) {
	t.Helper()
	target := l.ok.Load() + n
	harness.Eventually(t, time.Minute, fmt.Sprintf("%d more admissions %s", n, what), func(context.Context) (bool, error) {
		if l.failed.Load() != 0 {
			return false, fmt.Errorf("an admission failed %s: %v", what, l.firstErr.Load())
		}
		return l.ok.Load() >= target, nil
	})
}

// waitInjectedDryRun waits until a dry-run create of pod comes back injected
// (for example once the apiserver trusts a new caBundle).
func waitInjectedDryRun(t *testing.T, what string, pod *corev1.Pod) {
	t.Helper()
	harness.Eventually(t, time.Minute, what, func(ctx context.Context) (bool, error) {
		p := pod.DeepCopy()
		if err := cp.Client.Create(ctx, p, client.DryRunAll); err != nil {
			return false, nil
		}
		return p.Annotations[inject.AnnotationStatus] != "", nil
	})
}

// stop ends the load and fails the test on any failed admission or when
// too few admissions ran to have exercised anything.
func (l *admissionLoad) stop(t *testing.T, what string, atLeast int64) {
	t.Helper()
	close(l.stopCh)
	l.wg.Wait()
	t.Logf("admissions %s: %d ok, %d failed", what, l.ok.Load(), l.failed.Load())
	if l.failed.Load() != 0 {
		t.Fatalf("%d admissions failed %s; first: %v", l.failed.Load(), what, l.firstErr.Load())
	}
	if l.ok.Load() < atLeast {
		t.Fatalf("only %d admissions ran %s", l.ok.Load(), what)
	}
}
