package istio

import (
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// chartInjector builds the sidecar injector configuration Istio's
// istio-discovery chart renders (templates/mutatingwebhook.yaml): two
// webhooks per revision, two more for the default revision. The suites in
// test/discovery apply the real rendered chart; this keeps the unit tests
// free of helm.
func chartInjector(rev string) *admissionregistrationv1.MutatingWebhookConfiguration {
	label := rev
	name := InjectorConfigMap
	if rev == "" {
		label = DefaultRevision
	} else {
		name += "-" + rev
	}
	expr := func(key string, op metav1.LabelSelectorOperator, values ...string) metav1.LabelSelectorRequirement {
		return metav1.LabelSelectorRequirement{Key: key, Operator: op, Values: values}
	}
	sel := func(reqs ...metav1.LabelSelectorRequirement) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchExpressions: reqs}
	}
	wh := func(prefix string, ns, obj *metav1.LabelSelector) admissionregistrationv1.MutatingWebhook {
		return admissionregistrationv1.MutatingWebhook{Name: prefix + "sidecar-injector.istio.io", NamespaceSelector: ns, ObjectSelector: obj,
			ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{Namespace: "istio-system", Name: "istiod"}}}
	}
	notFalse := expr("sidecar.istio.io/inject", metav1.LabelSelectorOpNotIn, "false")
	w := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{LabelRev: label, "app": "sidecar-injector"}},
		Webhooks: []admissionregistrationv1.MutatingWebhook{
			wh("rev.namespace.", sel(expr(LabelRev, metav1.LabelSelectorOpIn, label), expr("istio-injection", metav1.LabelSelectorOpDoesNotExist)), sel(notFalse)),
			wh("rev.object.", sel(expr(LabelRev, metav1.LabelSelectorOpDoesNotExist), expr("istio-injection", metav1.LabelSelectorOpDoesNotExist)),
				sel(notFalse, expr(LabelRev, metav1.LabelSelectorOpIn, label))),
		},
	}
	if rev == "" {
		w.Webhooks = append(w.Webhooks,
			wh("namespace.", sel(expr("istio-injection", metav1.LabelSelectorOpIn, "enabled")), sel(notFalse)),
			wh("object.", sel(expr("istio-injection", metav1.LabelSelectorOpDoesNotExist), expr(LabelRev, metav1.LabelSelectorOpDoesNotExist)),
				sel(expr("sidecar.istio.io/inject", metav1.LabelSelectorOpIn, "true"), expr(LabelRev, metav1.LabelSelectorOpDoesNotExist))))
	}
	return w
}

func TestIstioInjection(t *testing.T) {
	tag := tagWebhook("prod", "1-28")
	// A tag configuration carries the same selectors with the tag's name.
	tag.Webhooks = chartInjector("prod").Webhooks
	for i := range tag.Webhooks {
		tag.Webhooks[i].ClientConfig.Service.Name = "istiod-1-28"
	}
	cms := twoRevisions(t)
	withDefault := build(t, inject.DefaultConfig(), inject.Presence{}, cms, chartInjector("1-21"), chartInjector("1-28"), chartInjector(""), tag)
	revOnly := build(t, inject.DefaultConfig(), inject.Presence{}, cms, chartInjector("1-21"), chartInjector("1-28"))

	for name, tc := range map[string]struct {
		snap        *Snapshot
		ns          map[string]string
		podLabels   map[string]string
		podAnnots   map[string]string
		hostNetwork bool
		namespace   string
		cause       string // "" = Istio does not inject
	}{
		"namespace istio.io/rev revision":              {snap: revOnly, ns: map[string]string{LabelRev: "1-28"}, cause: "namespace label istio.io/rev=1-28 (webhook rev.namespace.sidecar-injector.istio.io of MutatingWebhookConfiguration istio-sidecar-injector-1-28)"},
		"namespace istio.io/rev tag":                   {snap: withDefault, ns: map[string]string{LabelRev: "prod"}, cause: "namespace label istio.io/rev=prod (webhook rev.namespace.sidecar-injector.istio.io of MutatingWebhookConfiguration istio-revision-tag-prod)"},
		"istio-injection with a default revision":      {snap: withDefault, ns: map[string]string{"istio-injection": "enabled"}, cause: "namespace label istio-injection=enabled"},
		"istio-injection, only non-default revisions":  {snap: revOnly, ns: map[string]string{"istio-injection": "enabled"}},
		"pod label istio.io/rev":                       {snap: revOnly, podLabels: map[string]string{LabelRev: "1-21"}, cause: "pod label istio.io/rev=1-21"},
		"pod label sidecar.istio.io/inject=true":       {snap: withDefault, podLabels: map[string]string{"sidecar.istio.io/inject": "true"}, cause: "pod label sidecar.istio.io/inject=true"},
		"our label only":                               {snap: withDefault, ns: map[string]string{inject.LabelIstioRevision: "1-28", "sds-injection": "enabled"}},
		"namespace istio.io/rev, pod label opts out":   {snap: revOnly, ns: map[string]string{LabelRev: "1-28"}, podLabels: map[string]string{"sidecar.istio.io/inject": "false"}},
		"namespace istio.io/rev, pod annotation false": {snap: revOnly, ns: map[string]string{LabelRev: "1-28"}, podAnnots: map[string]string{"sidecar.istio.io/inject": "false"}},
		"namespace istio.io/rev, hostNetwork":          {snap: revOnly, ns: map[string]string{LabelRev: "1-28"}, hostNetwork: true},
		"namespace istio.io/rev, kube-system":          {snap: revOnly, ns: map[string]string{LabelRev: "1-28"}, namespace: "kube-system"},
		"revision not installed":                       {snap: revOnly, ns: map[string]string{LabelRev: "1-30"}},
		"no Istio webhooks":                            {snap: build(t, inject.DefaultConfig(), inject.Presence{}, cms), ns: map[string]string{LabelRev: "1-28"}},
	} {
		t.Run(name, func(t *testing.T) {
			pod := gatewayPod()
			pod.Namespace = "gloo-system"
			if tc.namespace != "" {
				pod.Namespace = tc.namespace
			}
			pod.Labels, pod.Annotations, pod.Spec.HostNetwork = tc.podLabels, tc.podAnnots, tc.hostNetwork
			got := tc.snap.IstioInjection(pod, tc.ns)
			switch {
			case tc.cause == "" && got != nil:
				t.Fatalf("predicted Istio injection through %q", got.Cause)
			case tc.cause != "" && got == nil:
				t.Fatalf("predicted no Istio injection, want %q", tc.cause)
			case got != nil && !strings.HasPrefix(got.Cause, tc.cause):
				t.Fatalf("cause %q, want prefix %q", got.Cause, tc.cause)
			}
		})
	}
}

func TestIstioInjectionPolicy(t *testing.T) {
	cms := twoRevisions(t)
	for _, cm := range cms {
		if cm.Name == InjectorConfigMap+"-1-28" {
			cm.Data[keyConfig] = "policy: disabled\nneverInjectSelector:\n- matchLabels:\n    gloo: gateway-proxy\ntemplates:\n  sidecar: |\n    spec: {}\n"
		}
	}
	s := build(t, inject.DefaultConfig(), inject.Presence{}, cms, chartInjector("1-28"))
	ns := map[string]string{LabelRev: "1-28"}
	pod := gatewayPod()
	if got := s.IstioInjection(pod, ns); got != nil {
		t.Errorf("policy disabled: predicted injection %q", got.Cause)
	}
	pod.Annotations = map[string]string{"sidecar.istio.io/inject": "true"}
	if got := s.IstioInjection(pod, ns); got == nil {
		t.Errorf("policy disabled + annotation true: predicted no injection")
	}
	p, err := ParseInjectionPolicy(cms[0].Data[keyConfig])
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		policy InjectionPolicy
		labels map[string]string
		want   bool
	}{
		"enabled":                      {InjectionPolicy{Policy: "enabled"}, nil, true},
		"empty means enabled":          {InjectionPolicy{}, nil, true},
		"unknown turns injection off":  {InjectionPolicy{Policy: "sometimes"}, nil, false},
		"never selector":               {InjectionPolicy{NeverInjectSelector: []metav1.LabelSelector{{MatchLabels: map[string]string{"a": "b"}}}}, map[string]string{"a": "b"}, false},
		"label beats never selector":   {InjectionPolicy{NeverInjectSelector: []metav1.LabelSelector{{MatchLabels: map[string]string{"a": "b"}}}}, map[string]string{"a": "b", "sidecar.istio.io/inject": "true"}, true},
		"always selector with disable": {InjectionPolicy{Policy: "disabled", AlwaysInjectSelector: []metav1.LabelSelector{{MatchLabels: map[string]string{"a": "b"}}}}, map[string]string{"a": "b"}, true},
		"chart's own policy":           {p, nil, true},
	} {
		t.Run(name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "gw", Labels: tc.labels}}
			if got := tc.policy.Required(pod); got != tc.want {
				t.Errorf("Required = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestIstioInjectionGuessedWhenWebhooksUnreadable(t *testing.T) {
	s := Build(Input{Config: inject.DefaultConfig(), Namespace: "istio-system", ConfigMaps: twoRevisions(t), WebhooksUnknown: true}, inject.DefaultConfig().MustResolve())
	pod := gatewayPod()
	if got := s.IstioInjection(pod, map[string]string{LabelRev: "1-28"}); got == nil || !strings.Contains(got.Cause, "could not be read") {
		t.Errorf("unreadable webhooks, namespace istio.io/rev: %+v", got)
	}
	if got := s.IstioInjection(pod, map[string]string{inject.LabelIstioRevision: "1-28"}); got != nil {
		t.Errorf("unreadable webhooks, our label: predicted %q", got.Cause)
	}
	pod.Labels = map[string]string{"sidecar.istio.io/inject": "false"}
	if got := s.IstioInjection(pod, map[string]string{LabelRev: "1-28"}); got != nil {
		t.Errorf("unreadable webhooks, opted out of Istio: predicted %q", got.Cause)
	}
}

func TestRequestedSources(t *testing.T) {
	for name, tc := range map[string]struct {
		podLabels, podAnnots, ns map[string]string
		rev, source              string
	}{
		"pod annotation wins":           {map[string]string{LabelRev: "c"}, map[string]string{inject.AnnotationIstioRevision: "a"}, map[string]string{inject.LabelIstioRevision: "b"}, "a", SourcePodAnnotation},
		"our namespace label":           {map[string]string{LabelRev: "c"}, nil, map[string]string{inject.LabelIstioRevision: "b", LabelRev: "d"}, "b", SourceNamespaceLabel},
		"istio.io/rev on the pod":       {map[string]string{LabelRev: "c"}, nil, map[string]string{LabelRev: "d"}, "c", SourcePodIstioRev},
		"istio.io/rev on the namespace": {nil, nil, map[string]string{LabelRev: "d"}, "d", SourceNsIstioRev},
		"nothing":                       {nil, nil, nil, "", ""},
	} {
		t.Run(name, func(t *testing.T) {
			rev, source := Requested(tc.podLabels, tc.podAnnots, tc.ns)
			if rev != tc.rev || source != tc.source {
				t.Errorf("got %q from %q, want %q from %q", rev, source, tc.rev, tc.source)
			}
		})
	}
	// The status annotation records the source.
	s := build(t, inject.DefaultConfig(), inject.Presence{}, twoRevisions(t))
	sel := s.Select(nil, nil, map[string]string{inject.LabelIstioRevision: "1-28"})
	if sel.Settings.RevisionFrom() != SourceNamespaceLabel || sel.Revision != "1-28" {
		t.Errorf("selection %+v records %q", sel, sel.Settings.RevisionFrom())
	}
	res := inject.Inject(gatewayPod(), sel.Settings)
	st, err := inject.ParseStatus(res.Pod.Annotations[inject.AnnotationStatus])
	if err != nil || st.Revision != "1-28" || st.RevisionFrom != SourceNamespaceLabel {
		t.Errorf("status %+v (%v)", st, err)
	}
}
