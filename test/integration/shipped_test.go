package integration

import (
	"slices"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestShippedConfigurations checks the rules every shipped webhook
// configuration must keep; the behaviour behind them is proven through the
// apiserver by the other tests in this package.
func TestShippedConfigurations(t *testing.T) {
	wantPolicy := map[Mode]admissionregistrationv1.FailurePolicyType{
		ModeNamespace:   admissionregistrationv1.Ignore,
		ModePerGateway:  admissionregistrationv1.Fail,
		ModeClusterWide: admissionregistrationv1.Ignore,
	}
	for mode, policy := range wantPolicy {
		t.Run(string(mode), func(t *testing.T) {
			mwc := loadShipped(t, mode)
			if len(mwc.Webhooks) == 0 {
				t.Fatal("no webhooks")
			}
			for _, w := range mwc.Webhooks {
				if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
					t.Errorf("%s: sideEffects must be None", w.Name)
				}
				if !slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
					t.Errorf("%s: admissionReviewVersions %v", w.Name, w.AdmissionReviewVersions)
				}
				if w.TimeoutSeconds == nil || *w.TimeoutSeconds < 1 || *w.TimeoutSeconds > 10 {
					t.Errorf("%s: an explicit timeoutSeconds of at most 10 is required", w.Name)
				}
				// One call per pod (values.yaml says why); IfNeeded is
				// the user's choice, proven by TestReinvocation.
				if w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != admissionregistrationv1.NeverReinvocationPolicy {
					t.Errorf("%s: reinvocationPolicy must be Never", w.Name)
				}
				if w.FailurePolicy == nil || *w.FailurePolicy != policy {
					t.Errorf("%s: failurePolicy %v, documented %s", w.Name, w.FailurePolicy, policy)
				}
				if len(w.Rules) != 1 || !slices.Equal(w.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) ||
					!slices.Equal(w.Rules[0].Resources, []string{"pods"}) {
					t.Errorf("%s: must match pod CREATE only: %+v", w.Name, w.Rules)
				}
				if w.ClientConfig.Service == nil || w.ClientConfig.Service.Path == nil || *w.ClientConfig.Service.Path != "/inject" || len(w.ClientConfig.CABundle) != 0 {
					t.Errorf("%s: clientConfig must name the service at /inject and carry no caBundle", w.Name)
				}
				if !excludes(w.NamespaceSelector, "kubernetes.io/metadata.name", "kube-system", "sds-injector") {
					t.Errorf("%s: namespaceSelector must exclude kube-system and the injector's own namespace", w.Name)
				}
				// The injector's own pods carry sds-injector.io/inject=false.
				if !excludes(w.ObjectSelector, labelInject, "false") && !requiresAbsent(w.ObjectSelector, labelInject) && !requiresIn(w.ObjectSelector, labelInject, "true") {
					t.Errorf("%s: objectSelector must keep pods labelled %s=false away", w.Name, labelInject)
				}
			}
		})
	}
}

func excludes(sel *metav1.LabelSelector, key string, values ...string) bool {
	if sel == nil {
		return false
	}
	for _, e := range sel.MatchExpressions {
		if e.Key == key && e.Operator == metav1.LabelSelectorOpNotIn {
			all := true
			for _, v := range values {
				all = all && slices.Contains(e.Values, v)
			}
			if all {
				return true
			}
		}
	}
	return false
}

func requiresAbsent(sel *metav1.LabelSelector, key string) bool {
	if sel == nil {
		return false
	}
	for _, e := range sel.MatchExpressions {
		if e.Key == key && e.Operator == metav1.LabelSelectorOpDoesNotExist {
			return true
		}
	}
	return false
}

func requiresIn(sel *metav1.LabelSelector, key, value string) bool {
	if sel == nil {
		return false
	}
	for _, e := range sel.MatchExpressions {
		if e.Key == key && e.Operator == metav1.LabelSelectorOpIn && slices.Equal(e.Values, []string{value}) {
			return true
		}
	}
	return false
}
