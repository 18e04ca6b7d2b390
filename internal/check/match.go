package check

import (
	"slices"
	"sync"

	"github.com/google/cel-go/cel"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
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

// Matcher decides, as the API server does, whether a pod's creation is
// sent to one of a set of mutating webhooks: rules, namespace and object
// selectors, CEL match conditions. test/checkmatch compares its answers
// with a real kube-apiserver's over each shipped webhook configuration.
type Matcher struct {
	mwcs []*admissionregistrationv1.MutatingWebhookConfiguration
	cel  map[string]celProgram
}

// NewMatcher prepares a Matcher for the webhook configurations.
func NewMatcher(mwcs []*admissionregistrationv1.MutatingWebhookConfiguration) *Matcher {
	return &Matcher{mwcs: mwcs, cel: map[string]celProgram{}}
}

// Matches reports whether the creation of pod in namespace ns is sent to
// one of the webhooks. A nil namespace matches nothing.
func (m *Matcher) Matches(ns *corev1.Namespace, pod *corev1.Pod) bool {
	if ns == nil {
		return false
	}
	for _, mwc := range m.mwcs {
		for i := range mwc.Webhooks {
			w := &mwc.Webhooks[i]
			if !matchesPodCreate(w.Rules) || !selectorMatches(w.NamespaceSelector, ns.Labels) || !selectorMatches(w.ObjectSelector, pod.Labels) {
				continue
			}
			if m.conditionsMatch(w.MatchConditions, pod) {
				return true
			}
		}
	}
	return false
}

func matchesPodCreate(rules []admissionregistrationv1.RuleWithOperations) bool {
	for _, r := range rules {
		ops := slices.ContainsFunc(r.Operations, func(o admissionregistrationv1.OperationType) bool {
			return o == admissionregistrationv1.Create || o == admissionregistrationv1.OperationAll
		})
		if ops && (slices.Contains(r.APIGroups, "") || slices.Contains(r.APIGroups, "*")) &&
			(slices.Contains(r.Resources, "pods") || slices.Contains(r.Resources, "*")) {
			return true
		}
	}
	return false
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

type celProgram struct {
	prg cel.Program
	err error
}

// celEnv declares the variables of admission match conditions.
var celEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("object", cel.DynType),
		cel.Variable("oldObject", cel.DynType),
		cel.Variable("request", cel.DynType),
	)
})

// conditionsMatch evaluates match conditions with CEL over the pod as JSON,
// as the API server does for CREATE. A condition that cannot be compiled or
// evaluated here (e.g. one using the authorizer) counts as matching, so a
// gateway is reported rather than silently ignored.
func (m *Matcher) conditionsMatch(conds []admissionregistrationv1.MatchCondition, pod *corev1.Pod) bool {
	if len(conds) == 0 {
		return true
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(pod)
	if err != nil {
		return true
	}
	vars := map[string]any{
		"object":    obj,
		"oldObject": nil,
		"request": map[string]any{
			"kind":        map[string]any{"group": "", "version": "v1", "kind": "Pod"},
			"resource":    map[string]any{"group": "", "version": "v1", "resource": "pods"},
			"subResource": "",
			"name":        pod.Name,
			"namespace":   pod.Namespace,
			"operation":   "CREATE",
			"dryRun":      false,
		},
	}
	for _, c := range conds {
		p, ok := m.cel[c.Expression]
		if !ok {
			p = compileCEL(c.Expression)
			m.cel[c.Expression] = p
		}
		if p.err != nil {
			continue
		}
		out, _, err := p.prg.Eval(vars)
		if err != nil {
			continue
		}
		if b, ok := out.Value().(bool); ok && !b {
			return false
		}
	}
	return true
}

func compileCEL(expr string) celProgram {
	env, err := celEnv()
	if err != nil {
		return celProgram{err: err}
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return celProgram{err: iss.Err()}
	}
	prg, err := env.Program(ast)
	return celProgram{prg: prg, err: err}
}
