package discovery

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/istiod"
	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/istio"

	"github.com/sds-injector/sds-injector/test/harness"
)

// Next to a real Istio install: Istio's istio-discovery chart rendered by
// helm for a default revision (tag 1.28.10), a revision "canary" (1.30.3)
// and a tag "prod" -> canary; one real istiod per revision serving its
// injection webhook on the local apiserver; sds-injector's shipped
// namespace-mode webhook beside them (see istiod.InstallIstio for what
// differs from a cluster).
const (
	realImageDefault = "docker.io/istio/proxyv2:1.28.10"
	realImageCanary  = "docker.io/istio/proxyv2:1.30.3"
	realCADefault    = "istiod.istio-system.svc:15012"
	realCACanary     = "istiod-canary.istio-system.svc:15012"
)

func installRealIstio(t *testing.T, revs ...istiod.RevisionSpec) *istiod.Install {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	helm, err := controlplane.HelmBinary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in, err := istiod.InstallIstio(ctx, cp, helm, istiod.Options{}, revs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := in.Uninstall(context.Background()); err != nil {
			t.Errorf("uninstalling Istio: %v", err)
		}
	})
	return in
}

var (
	revDefault = istiod.RevisionSpec{Values: []string{"global.hub=docker.io/istio", "global.tag=1.28.10"}}
	revCanary  = istiod.RevisionSpec{Revision: "canary", Tags: []string{"prod"}, Values: []string{"global.hub=docker.io/istio", "global.tag=1.30.3"}}
)

// istioTouched reports what shows Istio's injector acted on a stored pod.
func istioTouched(pod *corev1.Pod) bool {
	if _, ok := pod.Annotations["sidecar.istio.io/status"]; ok {
		return true
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == "istio-init" {
			return true
		}
	}
	return false
}

type labelling struct {
	name       string
	ns         map[string]string
	podLabels  map[string]string
	podAnnots  map[string]string
	istio      bool   // Istio's injector takes the gateway
	cause      string // in our warning when istio
	revision   string // ours: the revision injected
	image, ca  string
	from       string // ours: Status.RevisionFrom
	warnReason string // ours skipped with this warning
}

var labellings = []labelling{
	{name: "our namespace label, revision", ns: map[string]string{inject.LabelIstioRevision: "canary"},
		revision: "canary", image: realImageCanary, ca: realCACanary, from: istio.SourceNamespaceLabel},
	{name: "our namespace label, tag", ns: map[string]string{inject.LabelIstioRevision: "prod"},
		revision: "canary", image: realImageCanary, ca: realCACanary, from: istio.SourceNamespaceLabel},
	{name: "pod annotation beats our namespace label", ns: map[string]string{inject.LabelIstioRevision: "canary"}, podAnnots: map[string]string{inject.AnnotationIstioRevision: "default"},
		revision: "default", image: realImageDefault, ca: realCADefault, from: istio.SourcePodAnnotation},
	{name: "nothing named: the default revision", revision: "default", image: realImageDefault, ca: realCADefault},
	{name: "namespace istio.io/rev revision", ns: map[string]string{istio.LabelRev: "canary"}, istio: true, cause: "namespace label istio.io/rev=canary"},
	{name: "namespace istio.io/rev tag", ns: map[string]string{istio.LabelRev: "prod"}, istio: true, cause: "namespace label istio.io/rev=prod"},
	{name: "namespace istio-injection with a default revision", ns: map[string]string{"istio-injection": "enabled"}, istio: true, cause: "namespace label istio-injection=enabled"},
	{name: "pod label istio.io/rev", podLabels: map[string]string{istio.LabelRev: "canary"}, istio: true, cause: "pod label istio.io/rev=canary"},
	{name: "namespace istio.io/rev, gateway opted out of Istio", ns: map[string]string{istio.LabelRev: "canary"}, podLabels: map[string]string{"sidecar.istio.io/inject": "false"},
		revision: "canary", image: realImageCanary, ca: realCACanary, from: istio.SourceNsIstioRev},
	{name: "unknown revision in our label", ns: map[string]string{inject.LabelIstioRevision: "1-99"}, warnReason: "unknown-revision"},
	{name: "ambient namespace", ns: map[string]string{inject.LabelIstioRevision: "canary", inject.LabelDataplaneMode: inject.DataplaneModeAmbient}, warnReason: "ambient"},
}

// TestRealIstioCoexistence runs every labelling against a real Istio
// install, with our webhook configuration after Istio's (its real name)
// and before (renamed to sort first): the README's recipe injects the
// revision's image and CA address without istio-init, no pod carries both
// status annotations, and every gateway Istio takes gets a kubectl-visible
// warning naming the label and the fix.
func TestRealIstioCoexistence(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	installRealIstio(t, revDefault, revCanary)
	w := startWebhook(t, zeroConfig, istio.DefaultIstioNamespace, 0)
	harness.Eventually(t, 30*time.Second, "discovery to see both revisions, the tag and Istio's webhooks", func(context.Context) (bool, error) {
		s := w.d.Snapshot()
		return s != nil && len(s.Revisions) == 2 && s.Tags["prod"] == "canary" && len(s.Injectors) >= 6, nil
	})

	mine := map[string]bool{}
	for _, order := range []string{"istio first", "sds-injector first"} {
		t.Run(order, func(t *testing.T) {
			if order == "sds-injector first" {
				sortFirst(t, "sds-injector-namespace", "a-sds-injector-namespace")
			}
			for _, l := range labellings {
				t.Run(l.name, func(t *testing.T) {
					ns := gatewayNamespace(t, l.ns)
					mine[ns] = true
					w.waitNamespace(t, ns)
					pod, warns := create(t, gatewayPod(t, ns, "gw", l.podLabels, l.podAnnots))
					_, ours := pod.Annotations[inject.AnnotationStatus]
					if ours && istioTouched(pod) {
						t.Fatalf("hybrid pod: both status annotations / istio-init: %v", pod.Annotations)
					}
					joined := strings.Join(warns, "\n")
					switch {
					case l.istio:
						if ours || !istioTouched(pod) {
							t.Fatalf("want Istio's sidecar only; ours %v, Istio's %v", ours, istioTouched(pod))
						}
						want := "istio-sidecar-present"
						if order == "sds-injector first" {
							want = "istio-will-inject"
						}
						if !strings.Contains(joined, "sds-injector: not injected ("+want+")") || !strings.Contains(joined, l.cause) ||
							!strings.Contains(joined, `sidecar.istio.io/inject: "false"`) || !strings.Contains(joined, inject.AnnotationIstioRevision+"=") {
							t.Errorf("warnings lack %s, the cause %q and the fix:\n%s", want, l.cause, joined)
						}
					case l.warnReason != "":
						if ours || istioTouched(pod) || !strings.Contains(joined, "not injected ("+l.warnReason+")") {
							t.Errorf("want skipped with %s; ours %v Istio %v warnings %v", l.warnReason, ours, istioTouched(pod), warns)
						}
					default:
						if istioTouched(pod) {
							t.Fatalf("Istio injected the gateway: init %v annotations %v", pod.Spec.InitContainers, pod.Annotations)
						}
						a := injected(t, pod)
						a.expect(t, l.revision, l.image, l.ca, "cluster.local")
						if a.status.RevisionFrom != l.from {
							t.Errorf("revisionFrom %q, want %q", a.status.RevisionFrom, l.from)
						}
						if len(warns) != 0 {
							t.Errorf("warnings: %v", warns)
						}
					}
				})
			}
		})
	}

	// Offline `inject --kubeconfig` decides as the webhook: a gateway Istio
	// takes is left unchanged, one in an ambient namespace too, one with
	// our label gets the revision.
	for name, labels := range map[string]map[string]string{
		"istio": {istio.LabelRev: "canary"}, "ours": {inject.LabelIstioRevision: "canary"},
		"ambient": {inject.LabelIstioRevision: "canary", inject.LabelDataplaneMode: inject.DataplaneModeAmbient},
	} {
		ns := gatewayNamespace(t, labels)
		data, err := yaml.Marshal(gatewayPod(t, ns, "offline", nil, nil))
		if err != nil {
			t.Fatal(err)
		}
		cfgFile := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(cfgFile, []byte(zeroConfig), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(injectorBin, "inject", "--kubeconfig", cp.KubeconfigPath, "--config", cfgFile, "-f", "-")
		cmd.Stdin = bytes.NewReader(data)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("inject --kubeconfig (%s): %v\n%s", name, err, stderr.String())
		}
		injectedOffline := strings.Contains(string(out), inject.AnnotationStatus)
		switch {
		case name == "istio" && (injectedOffline || !strings.Contains(stderr.String(), "istio-will-inject")):
			t.Errorf("offline inject of a gateway Istio takes: injected %v, stderr %s", injectedOffline, stderr.String())
		case name == "ambient" && (injectedOffline || !strings.Contains(stderr.String(), "ambient")):
			t.Errorf("offline inject of a gateway in an ambient namespace: injected %v, stderr %s", injectedOffline, stderr.String())
		case name == "ours" && (!injectedOffline || !strings.Contains(string(out), realImageCanary)):
			t.Errorf("offline inject with our label: injected %v\n%s\n%s", injectedOffline, out, stderr.String())
		}
	}

	// check lists the gateways Istio took, with the fix, and has no false
	// FAIL on the CA addresses.
	report := runCheck(t)
	// (Other tests of the package leave pods of their own: only this
	// test's namespaces are looked at.)
	pods := report.check("gateway-pods")
	if pods.Status == "pass" {
		t.Errorf("gateway-pods passes with gateways Istio took: %s", pods.Message)
	}
	fixFor := func(ns string) string {
		for _, f := range pods.Fix {
			if strings.HasPrefix(f, ns+"/pod/gw: ") {
				return f
			}
		}
		return ""
	}
	istioTaken := 0
	for _, p := range pods.Pods {
		if !mine[p.Namespace] {
			continue // left by the other tests of the package
		}
		if p.Problem == "istio-sidecar-present" {
			istioTaken++
			// The fix names the revision Istio's injector serves there.
			if f := fixFor(p.Namespace); !strings.Contains(f, `set label sidecar.istio.io/inject: "false" on its pod template and label namespace `+p.Namespace+" with "+inject.AnnotationIstioRevision+"=") ||
				strings.Contains(f, "<revision>") || !strings.Contains(f, "delete pod gw") {
				t.Errorf("gateway-pods fix for %s: %q", p.Namespace, f)
			}
		}
		if p.Problem == "not-injected" {
			t.Errorf("check claims %s/%s would be injected: %s", p.Namespace, p.Name, p.Message)
		}
	}
	// Four Istio labellings in each of the two orders.
	if istioTaken != 8 {
		t.Errorf("gateway-pods lists %d gateways Istio injected, want 8: %+v", istioTaken, pods.Pods)
	}
	if ca := report.check("istiod-address"); ca.Status == "fail" || !strings.Contains(ca.Message, "revision canary") || !strings.Contains(ca.Message, realCACanary) {
		t.Errorf("istiod-address: %s %s %v", ca.Status, ca.Message, ca.Fix)
	}
}

// TestRealIstioRevisionOnly: with only a revisioned istiod (no default, no
// tag), a gateway naming the revision is injected, one naming nothing is
// refused with the installed list, and check tests that revision's CA
// address: no false FAIL for the built-in istiod.istio-system.svc.
func TestRealIstioRevisionOnly(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	installRealIstio(t, istiod.RevisionSpec{Revision: "canary", Values: revCanary.Values})
	w := startWebhook(t, zeroConfig, istio.DefaultIstioNamespace, 0)
	harness.Eventually(t, 30*time.Second, "discovery to see the revision", func(context.Context) (bool, error) {
		s := w.d.Snapshot()
		return s != nil && s.Revisions["canary"] != nil && len(s.Injectors) >= 2, nil
	})
	ns := gatewayNamespace(t, map[string]string{inject.LabelIstioRevision: "canary"})
	w.waitNamespace(t, ns)
	pod, _ := create(t, gatewayPod(t, ns, "gw", nil, nil))
	injected(t, pod).expect(t, "canary", realImageCanary, realCACanary, "cluster.local")
	// istio-injection=enabled with no default revision: Istio does nothing,
	// and so sds-injector is not held back by it.
	nsLegacy := gatewayNamespace(t, map[string]string{"istio-injection": "enabled", inject.LabelIstioRevision: "canary"})
	w.waitNamespace(t, nsLegacy)
	pod, _ = create(t, gatewayPod(t, nsLegacy, "gw", nil, nil))
	if istioTouched(pod) {
		t.Errorf("Istio injected without a default revision")
	}
	injected(t, pod).expect(t, "canary", realImageCanary, realCACanary, "cluster.local")

	report := runCheck(t)
	ca := report.check("istiod-address")
	if ca.Status == "fail" || strings.Contains(ca.Message, realCADefault) || !strings.Contains(ca.Message, realCACanary) {
		t.Errorf("istiod-address on a revision-only install: %s %s %v", ca.Status, ca.Message, ca.Fix)
	}
}

// TestRealIstioUpgradeAndRemoval: moving the tag from one revision to the
// other makes the gateways injected through it stale (metric and check
// list them with the restart command); removing Istio lets the defaults
// apply without touching readiness.
func TestRealIstioUpgradeAndRemoval(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	in := installRealIstio(t, revDefault, revCanary)
	w := startWebhook(t, zeroConfig, istio.DefaultIstioNamespace, time.Hour)
	harness.Eventually(t, 30*time.Second, "discovery to see the tag", func(context.Context) (bool, error) {
		s := w.d.Snapshot()
		return s != nil && s.Tags["prod"] == "canary", nil
	})
	ns := gatewayNamespace(t, map[string]string{inject.LabelIstioRevision: "prod"})
	w.waitNamespace(t, ns)
	pod, _ := create(t, gatewayPod(t, ns, "before", nil, nil))
	injected(t, pod).expect(t, "canary", realImageCanary, realCACanary, "cluster.local")

	// `istioctl tag set prod --revision default --overwrite`: the tag's
	// configuration now names the default revision and calls its istiod.
	ctx := context.Background()
	var tag admissionregistrationv1.MutatingWebhookConfiguration
	if err := cp.Client.Get(ctx, client.ObjectKey{Name: istio.TagWebhookPrefix + "prod"}, &tag); err != nil {
		t.Fatal(err)
	}
	tag.Labels[istio.LabelRev] = "default"
	url := "https://" + in.Istiods["default"].WebhookAddr + "/inject"
	for i := range tag.Webhooks {
		tag.Webhooks[i].ClientConfig.URL = &url
	}
	if err := cp.Client.Update(ctx, &tag); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, "the stale-agent metric to list the gateway", func(context.Context) (bool, error) {
		_, series := gauge(t, w.reg, "sds_injector_stale_agents")
		return slicesContain(series, "namespace="+ns+",revision=canary,want_revision=default 1"), nil
	})
	stale := runCheck(t).check("stale-agents")
	if stale.Status != "warn" || len(stale.Pods) == 0 {
		t.Fatalf("stale-agents: %s %s", stale.Status, stale.Message)
	}
	found := false
	for _, p := range stale.Pods {
		found = found || (p.Namespace == ns && p.Name == "before" && strings.Contains(p.Command, "kubectl -n "+ns+" delete pod before"))
	}
	if !found {
		t.Errorf("check does not list %s/before with its restart command: %+v", ns, stale.Pods)
	}
	pod, _ = create(t, gatewayPod(t, ns, "after", nil, nil))
	injected(t, pod).expect(t, "default", realImageDefault, realCADefault, "cluster.local")

	// Istio removed: gateways naming no revision get the defaults; the
	// webhook stays ready.
	if err := in.Uninstall(ctx); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, "discovery to see Istio gone", func(context.Context) (bool, error) {
		s := w.d.Snapshot()
		return s != nil && len(s.Revisions) == 0 && len(s.Injectors) == 0, nil
	})
	plain := gatewayNamespace(t, nil)
	w.waitNamespace(t, plain)
	pod, warns := create(t, gatewayPod(t, plain, "gw", nil, nil))
	a := injected(t, pod)
	if a.status.Revision != "" || a.env["CA_ADDR"] != inject.DefaultConfig().CAAddress || len(warns) != 0 {
		t.Errorf("after removal: revision %q CA %q warnings %v", a.status.Revision, a.env["CA_ADDR"], warns)
	}
	if err := w.d.ReadyCheck(nil); err != nil {
		t.Errorf("not ready after Istio was removed: %v", err)
	}
}

// sortFirst replaces our webhook configuration by a copy whose name sorts
// before istio-* (as a Helm release named "a…" would), for the test. It
// returns once the apiserver calls the copy first: a dry-run gateway in a
// namespace Istio injects is then seen by us before Istio touched it.
func sortFirst(t *testing.T, name, first string) {
	t.Helper()
	ctx := context.Background()
	var orig admissionregistrationv1.MutatingWebhookConfiguration
	if err := cp.Client.Get(ctx, client.ObjectKey{Name: name}, &orig); err != nil {
		t.Fatal(err)
	}
	renamed := orig.DeepCopy()
	renamed.ObjectMeta = metav1.ObjectMeta{Name: first, Labels: orig.Labels}
	if err := cp.Client.Create(ctx, renamed); err != nil {
		t.Fatal(err)
	}
	if err := cp.Client.Delete(ctx, &orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cp.Client.Delete(context.Background(), renamed)
		restored := orig.DeepCopy()
		restored.ResourceVersion, restored.UID = "", ""
		if err := cp.Client.Create(context.Background(), restored); err != nil {
			t.Errorf("restoring %s: %v", name, err)
		}
	})
	probeNS := gatewayNamespace(t, map[string]string{istio.LabelRev: "canary"})
	harness.Eventually(t, 20*time.Second, "the apiserver to call "+first+" before Istio", func(ctx context.Context) (bool, error) {
		w := &warnings{}
		rc := rest.CopyConfig(cp.Config)
		rc.WarningHandler = w
		cs, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return false, err
		}
		stored, err := cs.CoreV1().Pods(probeNS).Create(ctx, gatewayPod(t, probeNS, "probe", nil, nil), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, err
		}
		// Ours saw the pod before Istio did: it says Istio will inject, or
		// (were it not to predict Istio) it injected before Istio did.
		_, oursInjected := stored.Annotations[inject.AnnotationStatus]
		return oursInjected || strings.Contains(strings.Join(w.all, "\n"), "(istio-will-inject)"), nil
	})
}

type checkReport struct {
	Checks []checkEntry
}

type checkEntry struct {
	Name, Status, Message string
	Details, Fix          []string
	Pods                  []struct{ Namespace, Name, Problem, Message, Command string }
}

func (r checkReport) check(name string) checkEntry {
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	return checkEntry{Name: name, Status: "missing"}
}

// runCheck runs `sds-injector check` with the zero configuration (and
// extra flags).
func runCheck(t *testing.T, extra ...string) checkReport {
	t.Helper()
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfgFile, []byte(zeroConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"check", "--kubeconfig", cp.KubeconfigPath, "--config", cfgFile, "-o", "json"}, extra...)
	out, _ := exec.Command(injectorBin, args...).Output()
	var r checkReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("check output: %v\n%s", err, out)
	}
	return r
}
