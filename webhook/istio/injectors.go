package istio

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// Istio's sidecar injector, as far as sds-injector must predict it: the
// apiserver calls mutating webhook configurations in name order, so when
// ours sorts before Istio's (a release named "a…") we see the pod before
// Istio does. Injecting it then would give a hybrid of both sidecars; we
// leave such pods to Istio and say so (inject.LeftToIstio).

const (
	// injectorWebhookSuffix ends the name of every webhook of Istio's
	// sidecar injector (rev.namespace., rev.object., namespace., object.,
	// auto. sidecar-injector.istio.io), also in revision tags.
	injectorWebhookSuffix = "sidecar-injector.istio.io"
	// keyConfig is the injector ConfigMap's key holding the injection
	// policy and the templates.
	keyConfig = "config"
	// keyPolicy is where trimConfigMap keeps the parsed policy in the
	// informer's copy (the templates are not kept).
	keyPolicy = "sds-injector.io/injection-policy"
	// labelNamespaceInjection is Istio's legacy namespace switch.
	labelNamespaceInjection = "istio-injection"
)

// ignoredNamespaces are never injected by Istio (its IgnoredNamespaces).
var ignoredNamespaces = map[string]bool{"kube-system": true, "kube-public": true, "kube-node-lease": true, "local-path-storage": true}

// InjectionPolicy is the part of the injector ConfigMap's `config` that
// decides whether Istio injects a pod its webhook is called for.
type InjectionPolicy struct {
	// Policy is "enabled" (inject unless the pod says false) or "disabled"
	// (inject only when the pod says true); Istio's default is enabled.
	Policy               string                 `json:"policy,omitempty"`
	NeverInjectSelector  []metav1.LabelSelector `json:"neverInjectSelector,omitempty"`
	AlwaysInjectSelector []metav1.LabelSelector `json:"alwaysInjectSelector,omitempty"`
}

// ParseInjectionPolicy reads the policy from the injector ConfigMap's
// `config` (YAML; the templates in it are ignored).
func ParseInjectionPolicy(config string) (InjectionPolicy, error) {
	var p InjectionPolicy
	if err := yaml.Unmarshal([]byte(config), &p); err != nil {
		return InjectionPolicy{}, fmt.Errorf("key %s: %w", keyConfig, err)
	}
	return p, nil
}

// Required mirrors Istio's own decision (pkg/kube/inject injectRequired,
// re-implemented from its documented behaviour) for a pod its webhook is
// called for.
func (p InjectionPolicy) Required(pod *corev1.Pod) bool {
	if pod.Spec.HostNetwork || ignoredNamespaces[pod.Namespace] {
		return false
	}
	value := pod.Annotations[inject.LabelIstioSidecarInject]
	if v, ok := pod.Labels[inject.LabelIstioSidecarInject]; ok {
		value = v // the label is the newer API and wins
	}
	explicit, want := false, false
	switch value {
	case "true":
		explicit, want = true, true
	case "false":
		explicit = true
	}
	podLabels := labels.Set(pod.Labels)
	if !explicit {
		for _, sel := range p.NeverInjectSelector {
			if s, err := metav1.LabelSelectorAsSelector(&sel); err == nil && !s.Empty() && s.Matches(podLabels) {
				explicit, want = true, false
				break
			}
		}
	}
	if !explicit {
		for _, sel := range p.AlwaysInjectSelector {
			if s, err := metav1.LabelSelectorAsSelector(&sel); err == nil && !s.Empty() && s.Matches(podLabels) {
				explicit, want = true, true
				break
			}
		}
	}
	switch p.Policy {
	case "", "enabled":
		return !explicit || want
	case "disabled":
		return explicit && want
	}
	return false // Istio turns injection off on an unknown policy
}

// Injector is one webhook of Istio's sidecar injector.
type Injector struct {
	// Configuration and Webhook name the MutatingWebhookConfiguration and
	// the webhook in it.
	Configuration, Webhook string
	// Revision is the revision whose istiod answers (label istio.io/rev);
	// Tag is set for revision tag webhooks.
	Revision, Tag string
	// MatchConditions is set when the webhook has CEL match conditions,
	// which are not evaluated here: the webhook is then assumed to match.
	MatchConditions bool

	nsSel, podSel labels.Selector
	nsReq, podReq []labels.Requirement
}

// injectorsOf returns the sidecar-injector webhooks of a configuration that
// belongs to the Istio in istioNS (nil for any other configuration).
func injectorsOf(w *admissionregistrationv1.MutatingWebhookConfiguration, istioNS string) []Injector {
	if w == nil {
		return nil
	}
	rev := w.Labels[LabelRev]
	if rev == "" {
		return nil
	}
	tag := w.Labels[LabelTag]
	var out []Injector
	for i := range w.Webhooks {
		wh := &w.Webhooks[i]
		if !strings.HasSuffix(wh.Name, injectorWebhookSuffix) {
			continue
		}
		if svc := wh.ClientConfig.Service; svc != nil && istioNS != "" && svc.Namespace != istioNS {
			continue // another control plane's
		}
		in := Injector{Configuration: w.Name, Webhook: wh.Name, Revision: rev, Tag: tag, MatchConditions: len(wh.MatchConditions) > 0}
		var err error
		if in.nsSel, in.nsReq, err = admissionSelector(wh.NamespaceSelector); err != nil {
			continue // the apiserver rejects such a configuration
		}
		if in.podSel, in.podReq, err = admissionSelector(wh.ObjectSelector); err != nil {
			continue
		}
		out = append(out, in)
	}
	return out
}

// admissionSelector compiles a webhook selector the way the apiserver
// reads it: nil selects everything.
func admissionSelector(ls *metav1.LabelSelector) (labels.Selector, []labels.Requirement, error) {
	if ls == nil {
		return labels.Everything(), nil, nil
	}
	s, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return nil, nil, err
	}
	reqs, _ := s.Requirements()
	return s, reqs, nil
}

// Matches reports whether the apiserver calls this webhook for the pod.
func (in *Injector) Matches(pod *corev1.Pod, nsLabels map[string]string) bool {
	return in.nsSel.Matches(labels.Set(nsLabels)) && in.podSel.Matches(labels.Set(pod.Labels))
}

// cause names the labels through which the webhook selects the pod: the
// requirements that a label must be present for.
func (in *Injector) cause(pod *corev1.Pod, nsLabels map[string]string) string {
	var parts []string
	add := func(kind string, reqs []labels.Requirement, set map[string]string) {
		for _, r := range reqs {
			switch r.Operator() {
			case selection.In, selection.Equals, selection.DoubleEquals, selection.Exists:
				parts = append(parts, fmt.Sprintf("%s label %s=%s", kind, r.Key(), set[r.Key()]))
			}
		}
	}
	add("namespace", in.nsReq, nsLabels)
	add("pod", in.podReq, pod.Labels)
	what := strings.Join(parts, " and ")
	if what == "" {
		what = "selectors that match every pod without Istio labels"
	}
	extra := ""
	if in.MatchConditions {
		extra = "; its matchConditions were not evaluated"
	}
	return fmt.Sprintf("%s (webhook %s of MutatingWebhookConfiguration %s%s)", what, in.Webhook, in.Configuration, extra)
}

// fixRevision is the revision (or tag) to suggest in the fix.
func (in *Injector) fixRevision() string {
	if in.Tag != "" {
		return in.Tag
	}
	return in.Revision
}

// policyOf reads the parsed policy trimConfigMap kept (Istio's default
// when there is none).
func policyOf(cm *corev1.ConfigMap) InjectionPolicy {
	var p InjectionPolicy
	if raw, ok := cm.Data[keyPolicy]; ok {
		_ = json.Unmarshal([]byte(raw), &p)
		return p
	}
	if raw, ok := cm.Data[keyConfig]; ok {
		if parsed, err := ParseInjectionPolicy(raw); err == nil {
			return parsed
		}
	}
	return p
}

// IstioInjection predicts (or, for a pod Istio already injected,
// explains) Istio's own injector acting on the pod. It returns nil when no
// installed Istio webhook would inject it.
func (s *Snapshot) IstioInjection(pod *corev1.Pod, nsLabels map[string]string) *inject.IstioInjection {
	if s == nil || pod == nil {
		return nil
	}
	_, injected := pod.Annotations["sidecar.istio.io/status"]
	for i := range s.Injectors {
		in := &s.Injectors[i]
		if !in.Matches(pod, nsLabels) {
			continue
		}
		// A tag's configuration carries the label istio.io/rev of the
		// revision it points to, whose istiod answers.
		if !injected && !s.policies[in.Revision].Required(pod) {
			continue
		}
		return &inject.IstioInjection{Cause: in.cause(pod, nsLabels), Revision: in.fixRevision()}
	}
	if s.InjectorsUnknown && !injected {
		return guessIstioInjection(pod, nsLabels)
	}
	return nil
}

// guessIstioInjection is used when Istio's webhook configurations cannot
// be read (RBAC): Istio's labels are assumed to mean what its shipped
// webhooks make of them, so that a pod is never injected by both.
func guessIstioInjection(pod *corev1.Pod, nsLabels map[string]string) *inject.IstioInjection {
	if !(InjectionPolicy{}).Required(pod) {
		return nil
	}
	const unread = " (Istio's webhook configurations could not be read: assuming Istio's injector acts on it)"
	switch {
	case nsLabels[labelNamespaceInjection] == "enabled":
		return &inject.IstioInjection{Cause: "namespace label istio-injection=enabled" + unread, Revision: DefaultRevision}
	case nsLabels[LabelRev] != "":
		return &inject.IstioInjection{Cause: "namespace label istio.io/rev=" + nsLabels[LabelRev] + unread, Revision: nsLabels[LabelRev]}
	case nsLabels[labelNamespaceInjection] == "" && pod.Labels[LabelRev] != "":
		return &inject.IstioInjection{Cause: "pod label istio.io/rev=" + pod.Labels[LabelRev] + unread, Revision: pod.Labels[LabelRev]}
	case nsLabels[labelNamespaceInjection] == "" && pod.Labels[inject.LabelIstioSidecarInject] == "true":
		return &inject.IstioInjection{Cause: "pod label sidecar.istio.io/inject=true" + unread, Revision: DefaultRevision}
	}
	return nil
}

// sortInjectors orders the webhooks as the apiserver calls them (by
// configuration name, then position), so that the cause named is the
// webhook that acts first.
func sortInjectors(in []Injector) {
	sort.SliceStable(in, func(i, j int) bool { return in[i].Configuration < in[j].Configuration })
}
