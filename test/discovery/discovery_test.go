package discovery

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/istio"

	"github.com/sds-injector/sds-injector/test/harness"
)

// zeroConfig is the whole sds-injector configuration of these tests: the
// chart's default (discovery on, nothing else set).
const zeroConfig = harness.ConfigHeader + "istio: auto\n"

const (
	image121 = "docker.io/istio/proxyv2:1.21.6"
	image128 = "docker.io/istio/proxyv2:1.28.10"
	ca121    = "istiod-1-21.istio-system.svc:15012"
	ca128    = "istiod-1-28.istio-system.svc:15012"
	// The 1.28 fixture was rendered with meshConfig.trustDomain set.
	td128 = "mesh.example.com"
)

// waitNamespace waits until the webhook's namespace cache has the labels
// (a namespace created a moment ago may not have reached the informer).
func (w *webhook) waitNamespace(t *testing.T, ns string) {
	t.Helper()
	var want corev1.Namespace
	if err := cp.Client.Get(context.Background(), client.ObjectKey{Name: ns}, &want); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 10*time.Second, "namespace "+ns+" in the informer cache", func(context.Context) (bool, error) {
		return reflect.DeepEqual(w.d.NamespaceLabels(ns), want.Labels), nil
	})
}

// TestZeroConfigNamespaceRevision is the "done when": a gateway in
// a namespace labelled for a revision is injected, through the real API
// server, with exactly that revision's image, CA address and trust domain,
// with no sds-injector configuration beyond the chart default.
func TestZeroConfigNamespaceRevision(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	installIstio(t, istio.DefaultIstioNamespace, "1.21.6", nil)
	installIstio(t, istio.DefaultIstioNamespace, "1.28.10", nil)
	t.Cleanup(func() {
		for _, v := range []string{"1.21.6", "1.28.10"} {
			for _, cm := range istioConfigMaps(t, v) {
				_ = cp.Client.Delete(context.Background(), cm)
			}
		}
	})
	w := startWebhook(t, zeroConfig, istio.DefaultIstioNamespace, 0)

	ns128 := gatewayNamespace(t, map[string]string{inject.LabelIstioRevision: "1-28"})
	ns121 := gatewayNamespace(t, map[string]string{inject.LabelIstioRevision: "1-21"})
	w.waitNamespace(t, ns128)
	w.waitNamespace(t, ns121)

	pod, warns := create(t, gatewayPod(t, ns128, "gw", nil, nil))
	a := injected(t, pod)
	a.expect(t, "1-28", image128, ca128, td128)
	if a.env["ISTIO_META_CLUSTER_ID"] != "east" || a.env["ISTIO_META_MESH_ID"] != "mesh-east" || a.status.IstioProfile != "1.22+" ||
		!strings.Contains(a.env["PROXY_CONFIG"], "istiod-1-28.istio-system.svc:15012") || len(warns) != 0 {
		t.Errorf("1-28: env %v profile %s warnings %v", a.env, a.status.IstioProfile, warns)
	}

	pod, _ = create(t, gatewayPod(t, ns121, "gw", nil, nil))
	a = injected(t, pod)
	a.expect(t, "1-21", image121, ca121, "cluster.local")
	if a.status.IstioProfile != "1.14-1.21" || a.env["JWT_POLICY"] != "third-party-jwt" || a.env["ISTIO_META_CLUSTER_ID"] != "Kubernetes" {
		t.Errorf("1-21: profile %s env %v", a.status.IstioProfile, a.env)
	}
}

// TestRevisionSelection: pod label and annotation beat the namespace,
// revision tags resolve, unknown revisions are skipped with a warning that
// names the installed ones, and tag changes apply without a restart.
func TestRevisionSelection(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	const ins = "istio-sel"
	installIstio(t, ins, "1.21.6", nil)
	installIstio(t, ins, "1.28.10", nil)
	w := startWebhook(t, zeroConfig, ins, 0)
	ns := gatewayNamespace(t, map[string]string{inject.LabelIstioRevision: "1-28"})
	plain := gatewayNamespace(t, nil)
	revisionTag(t, "prod", "1-21")
	tagged := gatewayNamespace(t, map[string]string{inject.LabelIstioRevision: "prod"})
	unknown := gatewayNamespace(t, map[string]string{inject.LabelIstioRevision: "1-30"})
	for _, n := range []string{ns, plain, tagged, unknown} {
		w.waitNamespace(t, n)
	}
	harness.Eventually(t, 10*time.Second, "tag prod to be discovered", func(context.Context) (bool, error) {
		return w.d.Snapshot().Tags["prod"] == "1-21", nil
	})

	t.Run("namespace label", func(t *testing.T) {
		pod, _ := create(t, gatewayPod(t, ns, "by-namespace", nil, nil))
		injected(t, pod).expect(t, "1-28", image128, ca128, td128)
	})
	t.Run("our namespace label beats istio.io/rev on the pod", func(t *testing.T) {
		pod, _ := create(t, gatewayPod(t, ns, "by-pod-label", map[string]string{istio.LabelRev: "1-21"}, nil))
		injected(t, pod).expect(t, "1-28", image128, ca128, td128)
	})
	t.Run("annotation beats pod label", func(t *testing.T) {
		pod, _ := create(t, gatewayPod(t, ns, "by-annotation", map[string]string{istio.LabelRev: "1-28"},
			map[string]string{inject.AnnotationIstioRevision: "1-21"}))
		injected(t, pod).expect(t, "1-21", image121, ca121, "cluster.local")
	})
	t.Run("tag resolves to its revision", func(t *testing.T) {
		pod, _ := create(t, gatewayPod(t, tagged, "by-tag", nil, nil))
		injected(t, pod).expect(t, "1-21", image121, ca121, "cluster.local")
	})
	t.Run("unknown revision is skipped with a warning", func(t *testing.T) {
		pod, warns := create(t, gatewayPod(t, unknown, "unknown", nil, nil))
		if _, ok := pod.Annotations[inject.AnnotationStatus]; ok || len(pod.Spec.Containers) != 1 {
			t.Fatal("pod of an unknown revision was injected")
		}
		if len(warns) != 1 || !strings.Contains(warns[0], "unknown-revision") || !strings.Contains(warns[0], `"1-30"`) ||
			!strings.Contains(warns[0], "installed revisions: 1-21, 1-28") || !strings.Contains(warns[0], "prod->1-21") {
			t.Errorf("warnings %q", warns)
		}
		// An ordinary pod there gets no warning.
		app := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: unknown, Name: "app"},
			Spec: corev1.PodSpec{ServiceAccountName: "gateway-proxy", Containers: []corev1.Container{{Name: "app", Image: "nginx"}}}}
		if _, warns := create(t, app); len(warns) != 0 {
			t.Errorf("app pod warnings %q", warns)
		}
	})
	t.Run("no revision and no default: warning, then the default tag applies", func(t *testing.T) {
		pod, warns := create(t, gatewayPod(t, plain, "no-default", nil, nil))
		if _, ok := pod.Annotations[inject.AnnotationStatus]; ok || len(warns) != 1 || !strings.Contains(warns[0], "no default revision") {
			t.Fatalf("injected %v, warnings %q", ok, warns)
		}
		revisionTag(t, "default", "1-28")
		harness.Eventually(t, 10*time.Second, "default tag to be discovered", func(context.Context) (bool, error) {
			return w.d.Snapshot().Default == "1-28", nil
		})
		pod, _ = create(t, gatewayPod(t, plain, "default-tag", nil, nil))
		injected(t, pod).expect(t, "1-28", image128, ca128, td128)
	})
}

// TestUpgradeWithoutRestart: changes to Istio's ConfigMaps reach new pods
// without restarting the injector, and pods injected before the change are
// reported (metric and `sds-injector check`) with their restart command.
func TestUpgradeWithoutRestart(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	const ins = "istio-up"
	installIstio(t, ins, "1.28.10", nil)
	w := startWebhook(t, zeroConfig, ins, time.Hour) // scans run on demand below
	ns := gatewayNamespace(t, nil)                   // one revision: it is the default
	w.waitNamespace(t, ns)

	before, _ := create(t, gatewayPod(t, ns, "before", nil, nil))
	injected(t, before).expect(t, "1-28", image128, ca128, td128)
	if stale, err := w.d.ScanNow(context.Background()); err != nil || containsPod(stale, ns, "before") {
		t.Fatalf("fresh pod reported stale: %v %v", stale, err)
	}

	// Simulated in-place upgrade of revision 1-28 to a new patch release,
	// which also moves the trust domain.
	updateIstio(t, ins, "istio-sidecar-injector-1-28", func(k, v string) string {
		return strings.Replace(v, `"tag": "1.28.10"`, `"tag": "1.28.11"`, 1)
	})
	updateIstio(t, ins, "istio-1-28", func(k, v string) string {
		return strings.Replace(v, "trustDomain: mesh.example.com", "trustDomain: upgraded.example.com", 1)
	})
	harness.Eventually(t, 10*time.Second, "the new values to be discovered", func(context.Context) (bool, error) {
		r := w.d.Snapshot().Revisions["1-28"]
		return r != nil && r.Image == "docker.io/istio/proxyv2:1.28.11" && r.Settings.TrustDomain() == "upgraded.example.com", nil
	})
	after, _ := create(t, gatewayPod(t, ns, "after", nil, nil))
	injected(t, after).expect(t, "1-28", "docker.io/istio/proxyv2:1.28.11", ca128, "upgraded.example.com")

	stale, err := w.d.ScanNow(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !containsPod(stale, ns, "before") || containsPod(stale, ns, "after") {
		t.Fatalf("stale agents %+v", stale)
	}
	_, series := gauge(t, w.reg, "sds_injector_stale_agents")
	if !slicesContain(series, "namespace="+ns+",revision=1-28,want_revision=1-28 1") {
		t.Errorf("metric series %v", series)
	}

	// sds-injector check lists the pod with the command that re-injects it.
	report := runCheck(t, "--istio-namespace", ins)
	found := false
	for _, c := range report.Checks {
		switch c.Name {
		case "istio-revisions":
			if c.Status != "pass" || !strings.Contains(strings.Join(c.Details, "\n"), "1-28: Istio 1.28.11, image docker.io/istio/proxyv2:1.28.11") {
				t.Errorf("istio-revisions: %s %s %v", c.Status, c.Message, c.Details)
			}
		case "stale-agents":
			if c.Status != "warn" {
				t.Errorf("stale-agents: %s %s", c.Status, c.Message)
			}
			for _, p := range c.Pods {
				if p.Namespace == ns && p.Name == "before" {
					found = strings.Contains(p.Command, "kubectl -n "+ns+" delete pod before") && strings.Contains(p.Message, "1.28.11")
				}
				if p.Namespace == ns && p.Name == "after" {
					t.Error("check reports the re-injected pod")
				}
			}
		}
	}
	if !found {
		t.Errorf("check does not list the stale pod with its restart command: %+v", report.Checks)
	}
}

func containsPod(list []istio.StaleAgent, ns, name string) bool {
	for _, s := range list {
		if s.Namespace == ns && s.Name == name {
			return true
		}
	}
	return false
}

func slicesContain(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestFallbackWithoutIstio: with no Istio installed the webhook becomes
// ready and injects with the built-in defaults.
func TestFallbackWithoutIstio(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	w := startWebhook(t, zeroConfig, "istio-none", 0)
	ns := gatewayNamespace(t, nil)
	w.waitNamespace(t, ns)
	pod, warns := create(t, gatewayPod(t, ns, "gw", nil, nil))
	injected(t, pod).expect(t, "", "docker.io/istio/proxyv2:"+inject.DefaultIstioVersion, inject.DefaultCAAddress, inject.DefaultTrustDomain)
	if len(warns) != 0 {
		t.Errorf("warnings %q", warns)
	}
}

// TestExplicitConfigAndAnnotationsWin: fields set in the configuration and
// per-pod annotations beat the discovered values; the rest is discovered.
func TestExplicitConfigAndAnnotationsWin(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	const ins = "istio-prec"
	installIstio(t, ins, "1.28.10", nil)
	w := startWebhook(t, zeroConfig+"trustDomain: corp.example\ncaAddress: istiod-custom.istio-system.svc:15012\n", ins, 0)
	ns := gatewayNamespace(t, nil)
	w.waitNamespace(t, ns)

	pod, _ := create(t, gatewayPod(t, ns, "config", nil, nil))
	a := injected(t, pod)
	a.expect(t, "1-28", image128, "istiod-custom.istio-system.svc:15012", "corp.example")
	if a.env["ISTIO_META_CLUSTER_ID"] != "east" {
		t.Errorf("discovered cluster ID lost: %v", a.env)
	}
	pod, _ = create(t, gatewayPod(t, ns, "annotated", nil, map[string]string{inject.AnnotationIstioVersion: "1.22.3"}))
	a = injected(t, pod)
	a.expect(t, "1-28", "docker.io/istio/proxyv2:1.22.3", "istiod-custom.istio-system.svc:15012", "corp.example")
	if a.status.IstioVersion != "1.22.3" {
		t.Errorf("status version %s", a.status.IstioVersion)
	}
}

// TestNoAPICallsPerAdmission: admissions are answered from the informer
// caches; discovery sends no request to the API server while N pods are
// created (every request of its client is counted).
func TestNoAPICallsPerAdmission(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	const ins = "istio-count"
	installIstio(t, ins, "1.21.6", nil)
	installIstio(t, ins, "1.28.10", nil)
	w := startWebhook(t, zeroConfig, ins, 0)
	ns := gatewayNamespace(t, map[string]string{inject.LabelIstioRevision: "1-28"})
	w.waitNamespace(t, ns)
	// Informers list, then watch: wait until every collection discovery
	// listed is being watched, so that no start-up request is counted.
	var unwatched []string
	harness.Eventually(t, 30*time.Second, "discovery's informers to watch what they listed", func(context.Context) (bool, error) {
		unwatched = notWatched(w.requestLog())
		if len(unwatched) > 0 {
			t.Logf("listed, not yet watched: %v", unwatched)
		}
		return len(unwatched) == 0, nil
	})
	before := w.requests.Load()
	log := len(w.requestLog())
	const n = 20
	for i := 0; i < n; i++ {
		var annotations map[string]string
		if i%2 == 1 {
			annotations = map[string]string{inject.AnnotationIstioRevision: "1-21"}
		}
		pod, _ := create(t, gatewayPod(t, ns, "count-"+string(rune('a'+i)), nil, annotations))
		want := "1-28"
		if i%2 == 1 {
			want = "1-21"
		}
		if got := injected(t, pod).status.Revision; got != want {
			t.Fatalf("pod %d: revision %s, want %s", i, got, want)
		}
	}
	if after := w.requests.Load(); after != before {
		t.Errorf("discovery sent %d API request(s) during %d admissions: %v", after-before, n, w.requestLog()[log:])
	}
	if before == 0 {
		t.Error("the counter saw no requests at all: is it wired into discovery's client?")
	}
	var buf bytes.Buffer
	for _, l := range w.requestLog()[:log] {
		buf.WriteString(l + "\n")
	}
	t.Logf("discovery's requests before the admissions (informer lists and watches):\n%s", buf.String())
}

// TestShippedRBACSuffices: discovery running as a ServiceAccount with only
// the Istio discovery RBAC of the shipped manifests syncs and scans.
func TestShippedRBACSuffices(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	ctx := context.Background()
	rc := shippedDiscoveryRBAC(t, "sds-injector", nil)
	d, _ := startDiscovery(t, rc)
	harness.Eventually(t, 15*time.Second, "discovery to sync with the shipped RBAC", func(context.Context) (bool, error) { return d.Synced() && d.Snapshot() != nil, nil })
	if _, err := d.ScanNow(ctx); err != nil {
		t.Errorf("stale-agent scan with the shipped RBAC: %v", err)
	}
	if !d.WebhooksReadable() || d.Snapshot().InjectorsUnknown {
		t.Errorf("the shipped RBAC cannot read Istio's webhook configurations")
	}
}

// TestWebhooksUnreadable: without RBAC on mutatingwebhookconfigurations,
// discovery still syncs (at once, not after the sync timeout), says so
// once in its log, and guesses Istio's injection from its labels so that a
// gateway is never injected by both.
func TestWebhooksUnreadable(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	rc := shippedDiscoveryRBAC(t, "sds-injector-norbac", func(u *unstructured.Unstructured) {
		if u.GetKind() != "ClusterRole" {
			return
		}
		rules, _, _ := unstructured.NestedSlice(u.Object, "rules")
		var kept []any
		for _, r := range rules {
			if !strings.Contains(fmt.Sprint(r), "mutatingwebhookconfigurations") {
				kept = append(kept, r)
			}
		}
		if len(kept) == len(rules) {
			t.Fatal("the shipped ClusterRole has no mutatingwebhookconfigurations rule to remove")
		}
		if err := unstructured.SetNestedSlice(u.Object, kept, "rules"); err != nil {
			t.Fatal(err)
		}
	})
	var requests atomic.Int64
	var mu sync.Mutex
	var uris []string
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return countingTransport{next: rt, n: &requests, mu: &mu, log: &uris}
	})
	webhookLists := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, u := range uris {
			if strings.Contains(u, "mutatingwebhookconfigurations") {
				n++
			}
		}
		return n
	}
	start := time.Now()
	d, logs := startDiscovery(t, rc)
	harness.Eventually(t, 10*time.Second, "discovery to sync without webhook RBAC", func(context.Context) (bool, error) { return d.Synced() && d.Snapshot() != nil, nil })
	if took := time.Since(start); took >= 15*time.Second {
		t.Errorf("synced only after the sync timeout (%s)", took)
	}
	if d.WebhooksReadable() || !d.Snapshot().InjectorsUnknown {
		t.Fatalf("discovery does not know it cannot read Istio's webhook configurations")
	}
	pod := gatewayPod(t, "gw-unreadable", "gw", nil, nil)
	nsLabels := map[string]string{istio.LabelRev: "1-28"}
	if in := d.Snapshot().IstioInjection(pod, nsLabels); in == nil || !strings.Contains(in.Cause, "could not be read") {
		t.Errorf("Istio's injection not guessed from istio.io/rev: %+v", in)
	}
	if in := d.Snapshot().IstioInjection(pod, map[string]string{inject.LabelIstioRevision: "1-28"}); in != nil {
		t.Errorf("guessed Istio injection from our own label: %q", in.Cause)
	}
	// Said once, although the informer keeps retrying.
	harness.Eventually(t, 30*time.Second, "the informer to retry listing webhook configurations", func(context.Context) (bool, error) {
		return webhookLists() >= 3, nil
	})
	if n := logs.count("cannot list Istio's MutatingWebhookConfigurations"); n != 1 {
		t.Errorf("the RBAC problem was logged %d times, want once", n)
	}
}

// lineLog is a logr sink that keeps the messages.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		l.lines = append(l.lines, args)
		l.mu.Unlock()
	}, funcr.Options{})
}

func (l *lineLog) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, substr) {
			n++
		}
	}
	return n
}

func startDiscovery(t *testing.T, rc *rest.Config) (*istio.Discovery, *lineLog) {
	t.Helper()
	cfg, err := inject.ParseConfig([]byte(zeroConfig))
	if err != nil {
		t.Fatal(err)
	}
	logs := &lineLog{}
	d, err := istio.New(rc, istio.Options{Config: cfg, Namespace: istio.DefaultIstioNamespace, StaleScanInterval: time.Hour,
		SyncTimeout: 15 * time.Second, Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Start(runCtx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return d, logs
}

// shippedDiscoveryRBAC applies the Istio discovery RBAC of the shipped
// manifests (edit may change each object first) for a ServiceAccount named
// name and returns a client configuration authenticating as it.
func shippedDiscoveryRBAC(t *testing.T, name string, edit func(*unstructured.Unstructured)) *rest.Config {
	t.Helper()
	ctx := context.Background()
	data, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "manifests", "namespace-self-managed.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ensureNamespace(t, "sds-injector", nil)
	ensureNamespace(t, istio.DefaultIstioNamespace, nil)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "sds-injector", Name: name}}
	if err := cp.Client.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	applied := 0
	for _, doc := range strings.Split(string(data), "\n---\n") {
		if !strings.Contains(doc, "name: sds-injector-istio-discovery") {
			continue
		}
		var u unstructured.Unstructured
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatal(err)
		}
		// One set of objects per ServiceAccount.
		u.SetName(name + "-istio-discovery")
		if subjects, ok, _ := unstructured.NestedSlice(u.Object, "subjects"); ok {
			for _, s := range subjects {
				s.(map[string]any)["name"] = name
			}
			_ = unstructured.SetNestedSlice(u.Object, subjects, "subjects")
			_ = unstructured.SetNestedField(u.Object, name+"-istio-discovery", "roleRef", "name")
		}
		if edit != nil {
			edit(&u)
		}
		if err := cp.Client.Create(ctx, &u); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		obj := u.DeepCopy()
		t.Cleanup(func() { _ = cp.Client.Delete(context.Background(), obj) })
		applied++
	}
	if applied != 4 {
		t.Fatalf("want the discovery Role, ClusterRole and their bindings, found %d objects", applied)
	}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(3600))}}
	if err := cp.Client.SubResource("token").Create(ctx, sa, tr); err != nil {
		t.Fatal(err)
	}
	rc := rest.AnonymousClientConfig(cp.Config)
	rc.BearerToken = tr.Status.Token
	// The API server authorizes with RBAC: anything else is refused.
	saClient, err := client.New(rc, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := saClient.List(ctx, &corev1.SecretList{}, client.InNamespace(istio.DefaultIstioNamespace)); !apierrors.IsForbidden(err) {
		t.Fatalf("the ServiceAccount may list Secrets (%v): is RBAC enforced?", err)
	}
	return rc
}

// notWatched returns the collections listed in log (the "METHOD
// request-URI" lines of a counting transport) that have no watch request
// yet, or ["nothing watched"] before the first watch. (client-go's
// informers list through their watch, sendInitialEvents=true, where the
// apiserver supports it, and list then watch where it does not.)
func notWatched(log []string) []string {
	listed, watched := map[string]bool{}, map[string]bool{}
	for _, line := range log {
		method, uri, _ := strings.Cut(line, " ")
		u, err := url.Parse(uri)
		if err != nil || method != http.MethodGet {
			continue
		}
		if u.Query().Get("watch") == "true" {
			watched[u.Path] = true
		} else {
			listed[u.Path] = true
		}
	}
	if len(watched) == 0 {
		return []string{"nothing watched"}
	}
	var missing []string
	for p := range listed {
		if !watched[p] {
			missing = append(missing, p)
		}
	}
	return missing
}
