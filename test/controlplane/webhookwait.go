package controlplane

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// webhookCallsMetric counts every call the apiserver makes to an admission
// webhook, whatever its outcome (answered, rejected, failed open or closed).
const webhookCallsMetric = "apiserver_admission_webhook_admission_duration_seconds"

// WebhookCalls returns how many times the apiserver has called the admission
// webhook named name (the webhook's name inside its configuration), read from
// the apiserver's own metrics.
func (cp *ControlPlane) WebhookCalls(ctx context.Context, name string) (uint64, error) {
	families, err := cp.APIServerMetrics(ctx)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, m := range families[webhookCallsMetric].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "name" && l.GetValue() == name {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n, nil
}

// APIServerMetrics scrapes the apiserver's /metrics.
func (cp *ControlPlane) APIServerMetrics(ctx context.Context) (map[string]*dto.MetricFamily, error) {
	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		return nil, err
	}
	body, err := cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the apiserver's metrics: %w", err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(strings.NewReader(string(body)))
}

// WaitWebhook waits until the apiserver's view of its webhook configurations
// (an informer cache, updated asynchronously after a configuration is
// created, changed or deleted) agrees with want: an admission made by probe
// does (want true) or does not (want false) call the webhook named name.
//
// probe must submit one request that the webhook selects when it is
// installed, typically a dry-run create; its error is ignored, since a
// fail-closed webhook whose server is not running yet refuses the request
// while still proving that the apiserver calls it. The cache only moves
// forward, so one probe that does not call a removed webhook proves it gone.
func (cp *ControlPlane) WaitWebhook(ctx context.Context, name string, want bool, probe func(context.Context) error) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		before, err := cp.WebhookCalls(ctx, name)
		if err != nil {
			last = err
			return false, nil
		}
		_ = probe(ctx)
		after, err := cp.WebhookCalls(ctx, name)
		if err != nil {
			last = err
			return false, nil
		}
		return (after > before) == want, nil
	})
	if err != nil {
		state := "called"
		if !want {
			state = "no longer called"
		}
		return fmt.Errorf("webhook %q is not %s by the apiserver after a minute (last error: %w): %w", name, state, last, err)
	}
	return nil
}

// OptIn is what makes one of sds-injector's shipped webhooks select a
// gateway pod: labels on its namespace, labels or annotations on the pod.
type OptIn struct {
	NamespaceLabels, PodLabels, PodAnnotations map[string]string
}

// ShippedOptIn returns the opt-in each webhook of the shipped
// configurations (deploy/webhook, the chart) selects, for building probes
// for WaitWebhook. ok is false for a webhook name it does not know.
func ShippedOptIn(webhook string) (o OptIn, ok bool) {
	switch webhook {
	case "namespace.sds-injector.io":
		return OptIn{NamespaceLabels: map[string]string{"sds-injection": "enabled"}}, true
	case "object-label.sds-injector.io":
		return OptIn{PodLabels: map[string]string{"sds-injector.io/inject": "true"}}, true
	case "object-annotation.sds-injector.io":
		return OptIn{PodAnnotations: map[string]string{"sds-injector.io/inject": "true"}}, true
	case "cluster-wide.sds-injector.io":
		return OptIn{}, true
	}
	return OptIn{}, false
}

// Probe namespaces: a namespace-mode probe needs a namespace labelled for
// injection, which `sds-injector check` then (rightly) lists among the
// opted-in namespaces; suites that run check remove them with
// RemoveProbeNamespaces.
const (
	probeNamespacePlain    = "webhook-probe-plain"
	probeNamespaceLabelled = "webhook-probe-labelled"
)

// RemoveProbeNamespaces deletes the namespaces ShippedProbe created and,
// where a controller-manager finalizes namespaces, waits until they are gone.
func (cp *ControlPlane) RemoveProbeNamespaces(ctx context.Context) error {
	for _, name := range []string{probeNamespacePlain, probeNamespaceLabelled} {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if err := cp.Client.Delete(ctx, ns); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		if cp.KubectlPath == "" { // no controller-manager: nothing finalizes it
			continue
		}
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			err := cp.Client.Get(ctx, client.ObjectKeyFromObject(ns), &corev1.Namespace{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			return fmt.Errorf("probe namespace %s not gone: %w", name, err)
		}
	}
	return nil
}

// ShippedProbe returns a probe for WaitWebhook that one of sds-injector's
// shipped webhooks selects: a dry-run create of the Gloo Edge example pod
// (docs/examples/gloo-gateway-proxy.yaml) with the webhook's opt-in, in a
// probe namespace it creates when missing (see RemoveProbeNamespaces).
func (cp *ControlPlane) ShippedProbe(ctx context.Context, webhook string) (func(context.Context) error, error) {
	opt, ok := ShippedOptIn(webhook)
	if !ok {
		return nil, fmt.Errorf("no probe for webhook %q: not one of the shipped webhooks", webhook)
	}
	_, file, _, _ := runtime.Caller(0)
	const exampleName = "gloo-gateway-proxy.yaml"
	inRepo := filepath.Join(filepath.Dir(file), "..", "..", "docs", "examples", exampleName)
	example, err := LocateScript(inRepo, filepath.Join("docs", "examples"), exampleName)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(example)
	if err != nil {
		return nil, err
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		return nil, fmt.Errorf("%s: %w", example, err)
	}
	ns := probeNamespacePlain
	if len(opt.NamespaceLabels) > 0 {
		ns = probeNamespaceLabelled
	}
	err = cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: opt.NamespaceLabels}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: pod.Spec.ServiceAccountName, Namespace: ns}}
	if sa.Name == "" {
		sa.Name = "default"
	}
	if err := cp.Client.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	pod.Namespace, pod.Name = ns, "probe"
	for k, v := range opt.PodLabels {
		if pod.Labels == nil {
			pod.Labels = map[string]string{}
		}
		pod.Labels[k] = v
	}
	for k, v := range opt.PodAnnotations {
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[k] = v
	}
	return func(ctx context.Context) error {
		return cp.Client.Create(ctx, pod.DeepCopy(), client.DryRunAll)
	}, nil
}

// WaitShippedWebhooks waits until the apiserver calls (want) or no longer
// calls (!want) every webhook of mwc, a shipped configuration, probing each
// with ShippedProbe. aliases maps a test's own webhook names to the shipped
// webhook whose selection they copy.
func (cp *ControlPlane) WaitShippedWebhooks(ctx context.Context, mwc *admissionregistrationv1.MutatingWebhookConfiguration, want bool, aliases map[string]string) error {
	for _, wh := range mwc.Webhooks {
		name := wh.Name
		if a, ok := aliases[name]; ok {
			name = a
		}
		probe, err := cp.ShippedProbe(ctx, name)
		if err != nil {
			return err
		}
		if err := cp.WaitWebhook(ctx, wh.Name, want, probe); err != nil {
			return err
		}
	}
	return nil
}
