package check

import (
	"context"
	"slices"
	"sync"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	celplugin "k8s.io/apiserver/pkg/admission/plugin/cel"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/matchconditions"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/predicates/object"
	"k8s.io/apiserver/pkg/admission/plugin/webhook/predicates/rules"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/cel/environment"
)

// inScope reports whether the API server would send the pod's creation to
// one of the injector's webhooks: rules, namespace and object selectors and
// CEL match conditions, evaluated as the API server does.
func (k *Env) inScope(pod *corev1.Pod) bool {
	if k.match == nil {
		k.match = NewMatcher(k.mwcs)
	}
	return k.match.Matches(k.ns[pod.Namespace], pod)
}

// Matcher decides whether a pod's creation is sent to one of a set of
// mutating webhooks with the API server's own code
// (k8s.io/apiserver/pkg/admission/plugin/webhook: the rules and object
// selector predicates and the CEL match conditions, compiled with the
// apiserver's CEL environment; the namespace selector against the
// namespace's labels). test/checkmatch compares its answers with a real
// kube-apiserver's over each shipped webhook configuration.
//
// One deliberate difference: a match condition that cannot be evaluated
// here (e.g. one that calls the authorizer, which check does not have)
// counts as matching, so a gateway is reported rather than silently
// ignored.
type Matcher struct {
	webhooks []matchWebhook
}

// matchWebhook is one webhook, prepared: parsed selectors, compiled
// conditions.
type matchWebhook struct {
	rules             []admissionregistrationv1.RuleWithOperations
	namespace, object labels.Selector
	conditions        matchconditions.Matcher // nil: none
}

// GetParsedObjectSelector makes matchWebhook the object predicate's
// ObjectSelectorProvider.
func (w *matchWebhook) GetParsedObjectSelector() (labels.Selector, error) { return w.object, nil }

var conditionCompiler = sync.OnceValue(func() celplugin.ConditionCompiler {
	return celplugin.NewConditionCompiler(environment.MustBaseEnvSet(environment.DefaultCompatibilityVersion()))
})

// parseSelector reads a webhook selector as the apiserver stores it: absent
// is {} (everything); an invalid one matches nothing.
func parseSelector(sel *metav1.LabelSelector) labels.Selector {
	if sel == nil {
		return labels.Everything()
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return labels.Nothing()
	}
	return s
}

// NewMatcher prepares a Matcher for the webhook configurations.
func NewMatcher(mwcs []*admissionregistrationv1.MutatingWebhookConfiguration) *Matcher {
	m := &Matcher{}
	for _, mwc := range mwcs {
		for i := range mwc.Webhooks {
			m.webhooks = append(m.webhooks, newMatchWebhook(&mwc.Webhooks[i]))
		}
	}
	return m
}

// newMatchWebhook prepares one webhook: parsed selectors, compiled
// conditions.
func newMatchWebhook(w *admissionregistrationv1.MutatingWebhook) matchWebhook {
	mw := matchWebhook{rules: w.Rules, namespace: parseSelector(w.NamespaceSelector), object: parseSelector(w.ObjectSelector)}
	if len(w.MatchConditions) > 0 {
		exprs := make([]celplugin.ExpressionAccessor, len(w.MatchConditions))
		for j, c := range w.MatchConditions {
			exprs[j] = &matchconditions.MatchCondition{Name: c.Name, Expression: c.Expression}
		}
		// Fail, whatever the webhook says: an evaluation error must
		// surface to be told apart from a false condition.
		fail := admissionregistrationv1.Fail
		mw.conditions = matchconditions.NewMatcher(conditionCompiler().CompileCondition(exprs,
			celplugin.OptionalVariableDeclarations{HasAuthorizer: true}, environment.StoredExpressions),
			&fail, "webhook", "admit", w.Name)
	}
	return mw
}

var (
	podKind     = schema.GroupVersionKind{Version: "v1", Kind: "Pod"}
	podResource = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
)

// Matches reports whether the creation of pod in namespace ns is sent to
// one of the webhooks. A nil namespace matches nothing.
func (m *Matcher) Matches(ns *corev1.Namespace, pod *corev1.Pod) bool {
	if ns == nil {
		return false
	}
	attr, versioned := createAttributes(ns.Name, pod)
	for i := range m.webhooks {
		w := &m.webhooks[i]
		if !w.namespace.Matches(labels.Set(ns.Labels)) {
			continue
		}
		if ok, err := (&object.Matcher{}).MatchObjectSelector(w, attr); !ok || err != nil {
			continue
		}
		if !slices.ContainsFunc(w.rules, func(r admissionregistrationv1.RuleWithOperations) bool {
			return (&rules.Matcher{Rule: r, Attr: attr}).Matches()
		}) {
			continue
		}
		if w.conditionsMatch(versioned) {
			return true
		}
	}
	return false
}

// createAttributes are the admission attributes of the creation of pod in
// namespace ns, as the webhook matchers read them.
func createAttributes(ns string, pod *corev1.Pod) (admission.Attributes, *admission.VersionedAttributes) {
	obj := pod.DeepCopy()
	obj.Namespace = ns
	obj.APIVersion, obj.Kind = "v1", "Pod"
	attr := admission.NewAttributesRecord(obj, nil, podKind, ns, pod.Name, podResource, "", admission.Create,
		&metav1.CreateOptions{}, false, &user.DefaultInfo{Name: "sds-injector-check"})
	return attr, &admission.VersionedAttributes{Attributes: attr, VersionedKind: podKind, VersionedObject: admission.NewLazyObject(obj)}
}

// conditionsMatch evaluates the webhook's CEL match conditions alone (true
// without any; an evaluation error counts as a match, see Matcher).
func (w *matchWebhook) conditionsMatch(versioned *admission.VersionedAttributes) bool {
	if w.conditions == nil {
		return true
	}
	res := w.conditions.Match(context.Background(), versioned, nil, nil)
	return res.Error != nil || res.Matches
}

// selectorMatches follows the webhook API: a nil selector matches
// everything; an invalid one matches nothing.
func selectorMatches(sel *metav1.LabelSelector, l map[string]string) bool {
	if sel == nil {
		return true
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false
	}
	return s.Matches(labels.Set(l))
}
