package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Names Istio's own injector leaves in a pod it injected.
const (
	// istioInitContainer is the init container that sets up iptables
	// capture; istioValidationContainer replaces it when Istio's CNI plugin
	// does the capture.
	istioInitContainer       = "istio-init"
	istioValidationContainer = "istio-validation"
	// LabelIstioSidecarInject is Istio's per-pod switch for its injector
	// (label, or annotation of the same key).
	LabelIstioSidecarInject = "sidecar.istio.io/inject"
)

// IstioInjection is what discovery knows of Istio's own sidecar injector
// acting on a pod: the installed Istio webhook that selects it and why.
type IstioInjection struct {
	// Cause names what selects the pod, e.g. `namespace label
	// istio.io/rev=1-28 (webhook rev.namespace.sidecar-injector.istio.io of
	// istio-sidecar-injector-1-28)`.
	Cause string
	// Revision is the Istio revision (or tag) of that webhook, suggested
	// in the fix ("" when unknown).
	Revision string
}

// istioInjected returns what shows that Istio's injector already ran on the
// pod ("" when nothing does).
func istioInjected(pod *corev1.Pod) string {
	if _, ok := pod.Annotations[annotationIstioStatus]; ok {
		return "annotation " + annotationIstioStatus
	}
	for i := range pod.Spec.InitContainers {
		switch n := pod.Spec.InitContainers[i].Name; n {
		case istioInitContainer, istioValidationContainer:
			return "init container " + n
		}
	}
	return ""
}

// istioFix is how a user hands the gateway from Istio's injector to us.
func istioFix(in *IstioInjection) string {
	rev := "<revision>"
	if in != nil && in.Revision != "" {
		rev = in.Revision
	}
	return fmt.Sprintf("to give the gateway sds-injector's agent instead, set label %s: \"false\" on the gateway's pod template "+
		"and choose the Istio revision with the namespace label (or pod annotation) %s=%s", LabelIstioSidecarInject, AnnotationIstioRevision, rev)
}

func istioFirstMessage(evidence string, in *IstioInjection) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Istio's sidecar injector already injected this gateway (%s): it runs Istio's sidecar, which captures all of the gateway's traffic", evidence)
	if in != nil && in.Cause != "" {
		fmt.Fprintf(&b, "; Istio selected it through %s", in.Cause)
	}
	b.WriteString("; ")
	b.WriteString(istioFix(in))
	return b.String()
}

// LeftToIstio is the decision for a pod that Istio's own injector selects
// (in, from discovery): when our webhook runs first, Istio injects after
// us, and both injecting would make a broken hybrid. A pod the screen
// turns away keeps that decision (application pods in an Istio-injected
// namespace hear nothing from us); a gateway Istio already injected gets
// the explanation with its cause; any other gateway is skipped with
// ReasonIstioWillInject and a warning naming the cause and the fix.
func LeftToIstio(pod *corev1.Pod, s *Settings, in IstioInjection) Decision {
	if pod == nil || s == nil {
		return failed(ReasonInvalidInput, "no pod or no settings given")
	}
	d, match, _, final := s.screenFor(pod, &in)
	if final {
		return d
	}
	return warned(ReasonIstioWillInject, match.profile, fmt.Sprintf(
		"Istio's sidecar injector selects this gateway through %s and will add its own sidecar, which captures all of the gateway's traffic; sds-injector leaves the pod to it; %s",
		in.Cause, istioFix(&in)))
}
