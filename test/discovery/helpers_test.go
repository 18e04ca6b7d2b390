package discovery

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/istio"
	"github.com/sds-injector/sds-injector/webhook/server"

	"github.com/sds-injector/sds-injector/test/harness"
)

// countingTransport counts every request discovery sends to the API server.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int64
	mu   *sync.Mutex
	log  *[]string
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	c.mu.Lock()
	*c.log = append(*c.log, r.Method+" "+r.URL.RequestURI())
	c.mu.Unlock()
	return c.next.RoundTrip(r)
}

// webhook is one in-process sds-injector webhook with Istio discovery,
// wired as `sds-injector serve` wires it for "istio: auto".
type webhook struct {
	d        *istio.Discovery
	reg      *prometheus.Registry
	requests atomic.Int64
	mu       sync.Mutex
	log      []string
	cancel   context.CancelFunc
	done     chan struct{}
}

// startWebhook parses configYAML as `serve --config` does and runs the
// webhook with discovery watching istioNS.
func startWebhook(t *testing.T, configYAML, istioNS string, scan time.Duration) *webhook {
	t.Helper()
	cfg, err := inject.ParseConfig([]byte(configYAML))
	if err != nil {
		t.Fatal(err)
	}
	explicit, err := istio.ExplicitFields([]byte(configYAML))
	if err != nil {
		t.Fatal(err)
	}
	settings, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	w := &webhook{reg: prometheus.NewRegistry(), done: make(chan struct{})}
	rc := rest.CopyConfig(cp.Config)
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return countingTransport{next: rt, n: &w.requests, mu: &w.mu, log: &w.log}
	})
	w.d, err = istio.New(rc, istio.Options{
		Config: cfg, Explicit: explicit, Namespace: istioNS, StaleScanInterval: scan,
		Registerer: w.reg, Logger: logr.Discard(), SyncTimeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	o := cp.WebhookInstallOptions
	srv, err := server.New(server.Options{
		Settings: settings, Resolver: w.d, OnError: server.ErrorPolicyDeny,
		Host: o.LocalServingHost, Port: o.LocalServingPort, CertDir: o.LocalServingCertDir,
		MetricsAddr: "0", HealthAddr: "127.0.0.1:0", DrainDelay: -1, Logger: logr.Discard(),
		ReadyChecks: map[string]healthz.Checker{"istio-discovery": w.d.ReadyCheck},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = w.d.Start(ctx) }()
	go func() { defer wg.Done(); _ = srv.Start(ctx) }()
	go func() { wg.Wait(); close(w.done) }()
	t.Cleanup(func() {
		cancel()
		<-w.done
	})
	harness.WaitReady(t, 60*time.Second, "http://"+srv.HealthAddr()+"/readyz")
	harness.Eventually(t, 20*time.Second, "discovery to sync", func(context.Context) (bool, error) { return w.d.Synced(), nil })
	return w
}

func (w *webhook) requestLog() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.log...)
}

func gatewayPod(t *testing.T, ns, name string, labels, annotations map[string]string) *corev1.Pod {
	return harness.ExamplePod(t, "gloo-gateway-proxy.yaml", ns, name, labels, annotations)
}

// installIstio creates, in namespace ns, the ConfigMaps of the Istio
// release fixture (webhook/istio/testdata/istio-<version>.yaml, rendered
// from that release's istio-discovery chart). edit may change the values
// JSON or mesh YAML first.
func installIstio(t *testing.T, ns, version string, edit func(key, value string) string) {
	t.Helper()
	ensureNamespace(t, ns, nil)
	for _, cm := range istioConfigMaps(t, version) {
		cm.Namespace = ns
		if edit != nil {
			for k, v := range cm.Data {
				cm.Data[k] = edit(k, v)
			}
		}
		if err := cp.Client.Create(context.Background(), cm); err != nil {
			t.Fatal(err)
		}
	}
}

func istioConfigMaps(t *testing.T, version string) []*corev1.ConfigMap {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "webhook", "istio", "testdata", "istio-"+version+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var out []*corev1.ConfigMap
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var cm corev1.ConfigMap
		if err := yaml.UnmarshalStrict([]byte(doc), &cm); err != nil {
			t.Fatal(err)
		}
		if cm.Name != "" {
			out = append(out, &cm)
		}
	}
	return out
}

// updateIstio rewrites one key of an installed ConfigMap.
func updateIstio(t *testing.T, ns, name string, edit func(key, value string) string) {
	t.Helper()
	ctx := context.Background()
	var cm corev1.ConfigMap
	if err := cp.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &cm); err != nil {
		t.Fatal(err)
	}
	for k, v := range cm.Data {
		cm.Data[k] = edit(k, v)
	}
	if err := cp.Client.Update(ctx, &cm); err != nil {
		t.Fatal(err)
	}
}

// revisionTag creates what `istioctl tag set <tag> --revision <rev>`
// creates for discovery's purposes: a MutatingWebhookConfiguration
// istio-revision-tag-<tag> labelled istio.io/tag and istio.io/rev. Its
// webhooks are left out, because no istiod answers them here.
func revisionTag(t *testing.T, tag, rev string) {
	t.Helper()
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{
		Name: istio.TagWebhookPrefix + tag, Labels: map[string]string{istio.LabelTag: tag, istio.LabelRev: rev}}}
	if err := cp.Client.Create(context.Background(), mwc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Client.Delete(context.Background(), mwc) })
}

func ensureNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := cp.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := cp.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "gateway-proxy", Namespace: name}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

var nsCounter atomic.Int64

// gatewayNamespace creates a namespace opted in to injection (namespace
// mode) with extra labels, e.g. istio.io/rev.
func gatewayNamespace(t *testing.T, labels map[string]string) string {
	t.Helper()
	// A DNS label: lower-case alphanumerics and '-', at most 63.
	name := strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '-'
	}, fmt.Sprintf("gw-%d-%s", nsCounter.Add(1), strings.ToLower(t.Name())))
	if len(name) > 60 {
		name = name[:60]
	}
	name = strings.TrimRight(name, "-")
	all := map[string]string{inject.NamespaceLabel: "enabled"}
	for k, v := range labels {
		all[k] = v
	}
	ensureNamespace(t, name, all)
	return name
}

// warnings collects admission warnings.
type warnings struct {
	mu  sync.Mutex
	all []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	w.all = append(w.all, text)
	w.mu.Unlock()
}

// create submits the pod through the API server and returns what it
// stored and the admission warnings.
func create(t *testing.T, pod *corev1.Pod) (*corev1.Pod, []string) {
	t.Helper()
	w := &warnings{}
	rc := rest.CopyConfig(cp.Config)
	rc.WarningHandler = w
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := cs.CoreV1().Pods(pod.Namespace).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return stored, w.all
}

// agent describes what the webhook injected into a stored pod.
type agent struct {
	status *inject.Status
	image  string
	env    map[string]string
}

func injected(t *testing.T, pod *corev1.Pod) agent {
	t.Helper()
	v, ok := pod.Annotations[inject.AnnotationStatus]
	if !ok {
		t.Fatalf("pod %s/%s was not injected: containers %d, annotations %v", pod.Namespace, pod.Name, len(pod.Spec.Containers), pod.Annotations)
	}
	st, err := inject.ParseStatus(v)
	if err != nil {
		t.Fatal(err)
	}
	a := agent{status: st, env: map[string]string{}}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name == "istio-proxy" || c.Name == "sds-agent" {
			a.image = c.Image
			for _, e := range c.Env {
				a.env[e.Name] = e.Value
			}
		}
	}
	return a
}

// expect checks the injected agent against a revision's settings.
func (a agent) expect(t *testing.T, revision, image, caAddr, trustDomain string) {
	t.Helper()
	if a.status.Revision != revision || a.status.Image != image || a.image != image ||
		a.env["CA_ADDR"] != caAddr || a.env["TRUST_DOMAIN"] != trustDomain {
		t.Errorf("injected revision %q image %q (status %q) CA_ADDR %q TRUST_DOMAIN %q; want %q %q %q %q",
			a.status.Revision, a.image, a.status.Image, a.env["CA_ADDR"], a.env["TRUST_DOMAIN"], revision, image, caAddr, trustDomain)
	}
}

// gauge sums the samples of a metric in reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) (float64, []string) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	var series []string
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetGauge().GetValue()
			var l []string
			for _, lp := range m.GetLabel() {
				l = append(l, lp.GetName()+"="+lp.GetValue())
			}
			series = append(series, strings.Join(l, ",")+fmt.Sprintf(" %g", m.GetGauge().GetValue()))
		}
	}
	return sum, series
}
