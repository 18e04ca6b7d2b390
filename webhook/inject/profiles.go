package inject

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// ProfileGeneric is the profile reported for pods that name their Envoy
// container with the sds-injector.io/gateway-container annotation.
const ProfileGeneric = "generic"

// BuiltinProfiles returns the gateways recognised out of the box, in the
// order they are tried. The labels are those the gateways' own charts and
// operators put on their proxy pods.
func BuiltinProfiles() []GatewayProfile {
	return []GatewayProfile{
		{
			// Gloo Edge names each proxy's container after its
			// gateway-proxy-id (the default proxy is "gateway-proxy").
			Name:               "gloo-edge",
			Selector:           metav1.LabelSelector{MatchLabels: map[string]string{"gloo": "gateway-proxy"}},
			ContainerFromLabel: "gateway-proxy-id",
			Containers:         []string{"gateway-proxy"},
		},
		{
			Name: "envoy-gateway",
			Selector: metav1.LabelSelector{MatchLabels: map[string]string{
				"app.kubernetes.io/managed-by": "envoy-gateway",
				"app.kubernetes.io/component":  "proxy",
			}},
			Containers: []string{"envoy"},
		},
		{
			// Contour's Helm chart (Bitnami) labels its Envoy DaemonSet.
			Name: "contour",
			Selector: metav1.LabelSelector{MatchLabels: map[string]string{
				"app.kubernetes.io/name":      "contour",
				"app.kubernetes.io/component": "envoy",
			}},
			Containers: []string{"envoy"},
		},
		{
			// Contour's quickstart manifests only say app=envoy, which is too
			// generic on its own; the namespace pins it down.
			Name:       "contour-quickstart",
			Selector:   metav1.LabelSelector{MatchLabels: map[string]string{"app": "envoy"}},
			Namespaces: []string{"projectcontour"},
			Containers: []string{"envoy"},
		},
		{
			// Emissary-ingress runs Envoy inside its main container, named
			// after the chart (ambassador for pre-2.x installs).
			Name: "emissary-ingress",
			Selector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key:      "app.kubernetes.io/name",
				Operator: metav1.LabelSelectorOpIn,
				Values:   []string{"emissary-ingress", "ambassador"},
			}}},
			Containers: []string{"emissary-ingress", "ambassador"},
		},
	}
}

// gatewayMatch is the result of profile selection.
type gatewayMatch struct {
	profile   string
	container string // empty when the profile matched but no container did
	env       []corev1.EnvVar
}

// matchGateway finds the profile that recognises the pod. The generic
// annotation wins: it is the user's explicit statement about this pod.
func (s *Settings) matchGateway(pod *corev1.Pod) (gatewayMatch, bool) {
	if name, ok := pod.Annotations[AnnotationGatewayContainer]; ok {
		return gatewayMatch{profile: ProfileGeneric, container: name}, true
	}
	set := labels.Set(pod.Labels)
	for i := range s.profiles {
		p := &s.profiles[i]
		if len(p.namespaces) > 0 && !p.namespaces.Has(pod.Namespace) {
			continue
		}
		if !p.selector.Matches(set) {
			continue
		}
		m := gatewayMatch{profile: p.Name, env: p.Env}
		var candidates []string
		if p.ContainerFromLabel != "" {
			if v := pod.Labels[p.ContainerFromLabel]; v != "" {
				candidates = append(candidates, v)
			}
		}
		candidates = append(candidates, p.Containers...)
		for _, c := range candidates {
			if containerIndex(pod.Spec.Containers, c) >= 0 {
				m.container = c
				break
			}
		}
		return m, true
	}
	return gatewayMatch{}, false
}

func containerIndex(cs []corev1.Container, name string) int {
	for i := range cs {
		if cs[i].Name == name {
			return i
		}
	}
	return -1
}
