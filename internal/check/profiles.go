package check

import (
	"context"
	"fmt"
	"slices"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// --- gateway profiles against the webhooks' match conditions ----------------

// gatewayConditionName is the match condition by which the chart narrows
// namespace and cluster-wide mode to pods that look like gateways
// (templates/_helpers.tpl, sds-injector.gatewayCondition). It is rendered
// from the chart's config.gatewayProfiles; a profile added to the
// configuration alone never reaches the engine.
const gatewayConditionName = "looks-like-a-gateway"

// checkProfileConditions asks, for every gateway profile of the
// configuration and every installed webhook that carries the
// looks-like-a-gateway condition, whether a pod the profile recognises
// passes the webhook's match conditions.
func (k *Env) checkProfileConditions(context.Context) Result {
	res := Result{Name: checkProfileConditions, Status: StatusPass}
	profiles := k.cfg.Profiles()
	narrowing := 0
	for _, mwc := range k.mwcs {
		for i := range mwc.Webhooks {
			w := &mwc.Webhooks[i]
			if !slices.ContainsFunc(w.MatchConditions, func(c admissionregistrationv1.MatchCondition) bool { return c.Name == gatewayConditionName }) {
				continue
			}
			narrowing++
			mw := newMatchWebhook(w)
			var missed []string
			for _, p := range profiles {
				ns, pod := profilePod(p)
				if _, versioned := createAttributes(ns, pod); !mw.conditionsMatch(versioned) {
					missed = append(missed, p.Name)
				}
			}
			if len(missed) == 0 {
				res.Details = append(res.Details, fmt.Sprintf("%s (%s): all %d gateway profiles pass its match conditions", mwc.Name, w.Name, len(profiles)))
				continue
			}
			res.Status = StatusFail
			res.Details = append(res.Details, fmt.Sprintf("%s (%s): the API server never sends pods of profile(s) %s: they fail its %s match condition",
				mwc.Name, w.Name, strings.Join(missed, ", "), gatewayConditionName))
		}
	}
	switch {
	case res.Status == StatusFail:
		res.Message = "a gateway profile of the configuration is missing from a webhook's " + gatewayConditionName + " condition, so its gateways are never injected"
		res.Fix = append(res.Fix, "give extra profiles as the chart's config.gatewayProfiles, which renders both the configuration and the condition (helm upgrade); with plain manifests, render them again with helm template instead of editing the ConfigMap alone")
	case narrowing == 0:
		res.Message = "no installed webhook narrows its calls by gateway profile (no " + gatewayConditionName + " condition)"
	default:
		res.Message = fmt.Sprintf("%d gateway profile(s) reach the %d webhook(s) narrowed by %s", len(profiles), narrowing, gatewayConditionName)
	}
	return res
}

// profilePod is a pod that profile p recognises, and its namespace: the
// selector's labels (the first value of an In, an empty value for Exists),
// the profile's first namespace, Envoy container and required container.
func profilePod(p inject.GatewayProfile) (string, *corev1.Pod) {
	ns := "default"
	if len(p.Namespaces) > 0 {
		ns = p.Namespaces[0]
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "profile-" + p.Name, Namespace: ns, Labels: map[string]string{}}}
	for k, v := range p.Selector.MatchLabels {
		pod.Labels[k] = v
	}
	for _, e := range p.Selector.MatchExpressions {
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			if len(e.Values) > 0 {
				pod.Labels[e.Key] = e.Values[0]
			}
		case metav1.LabelSelectorOpExists:
			pod.Labels[e.Key] = ""
		}
	}
	container := "envoy"
	if len(p.Containers) > 0 {
		container = p.Containers[0]
	}
	pod.Spec.Containers = []corev1.Container{{Name: container}}
	if len(p.RequireContainers) > 0 {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: p.RequireContainers[0]})
	}
	return ns, pod
}
