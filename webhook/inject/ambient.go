package inject

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// Istio ambient enrolment: the pod label wins over the namespace label, and
// "none" on the pod takes it out of an enrolled namespace (Istio's rules).
const (
	LabelDataplaneMode   = "istio.io/dataplane-mode"
	DataplaneModeAmbient = "ambient"
	DataplaneModeNone    = "none"
)

// AmbientEnrolled reports whether Istio ambient captures a pod with these
// labels in a namespace with nsLabels (nil: namespace unknown).
func AmbientEnrolled(podLabels, nsLabels map[string]string) bool {
	if v, ok := podLabels[LabelDataplaneMode]; ok {
		return v == DataplaneModeAmbient
	}
	return nsLabels[LabelDataplaneMode] == DataplaneModeAmbient
}

// ambientSource says where the enrolment comes from, for messages.
func ambientSource(podLabels map[string]string) string {
	if podLabels[LabelDataplaneMode] == DataplaneModeAmbient {
		return "pod label " + LabelDataplaneMode + "=" + DataplaneModeAmbient
	}
	return "namespace label " + LabelDataplaneMode + "=" + DataplaneModeAmbient
}

func ambientMessage(podLabels map[string]string) string {
	return fmt.Sprintf("the gateway is enrolled in Istio ambient (%s): ztunnel already gives it its mesh identity, "+
		"so no agent is injected. That identity is applied by ztunnel at L4 (HBONE): Envoy itself holds no client certificate "+
		"and cannot apply per-upstream TLS settings; to use sds-injector's agent instead, set pod label %s=%s",
		ambientSource(podLabels), LabelDataplaneMode, DataplaneModeNone)
}

// ambientHostNetworkCaveat is said of a hostNetwork gateway that ambient
// would enrol: ztunnel cannot capture host-network pods.
func ambientHostNetworkCaveat(podLabels map[string]string) string {
	return fmt.Sprintf("the gateway runs on the host network, which Istio ambient cannot capture despite %s: it gets no identity from ztunnel, only from the injected agent",
		ambientSource(podLabels))
}

// Ambient is the decision for a pod whose namespace enrols it in Istio
// ambient. The engine sees only the pod, so it acts on the pod label by
// itself; the webhook, which knows the namespace's labels (nsLabels),
// calls Ambient before Inject: when ok, d is the answer (a gateway is
// skipped with ReasonAmbient and a warning). A pod the screen already
// turns away, a pod the namespace does not enrol, and a hostNetwork pod
// (ambient cannot capture it; see AmbientHostNetworkWarning) give ok
// false, and Inject decides as usual.
func Ambient(pod *corev1.Pod, s *Settings, nsLabels map[string]string) (d Decision, ok bool) {
	if pod == nil || s == nil {
		return failed(ReasonInvalidInput, "no pod or no settings given"), true
	}
	if pod.Spec.HostNetwork || !AmbientEnrolled(pod.Labels, nsLabels) {
		return Decision{}, false
	}
	d, match, _, final := s.screen(pod)
	if final {
		return d, false
	}
	return warned(ReasonAmbient, match.profile, ambientMessage(pod.Labels)), true
}

// AmbientHostNetworkWarning is the admission warning for a hostNetwork
// gateway that ambient would enrol (pod label or nsLabels) but cannot
// capture; "" otherwise. The webhook adds it to the response of a pod it
// injects.
func AmbientHostNetworkWarning(pod *corev1.Pod, nsLabels map[string]string) string {
	if pod == nil || !pod.Spec.HostNetwork || !AmbientEnrolled(pod.Labels, nsLabels) {
		return ""
	}
	return ambientHostNetworkCaveat(pod.Labels)
}
