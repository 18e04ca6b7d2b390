package inject

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// ProfileGeneric is the profile reported for pods that name their Envoy
// container with the sds-injector.io/gateway-container annotation, or that
// opt in explicitly without matching a profile.
const ProfileGeneric = "generic"

// socketFlavors are the flavors that serve SDS on the workload socket, the
// only thing a gateway whose configuration names an SDS cluster can use.
// spire is one of them (the SPIRE agent's socket serves SDS) but is only
// offered where the configuration enables it (Settings.enabledOf).
var socketFlavors = []Flavor{FlavorIstioProxy, FlavorSDSAgent, FlavorSPIRE}

// EnvEmissaryCertsDir is where Emissary-ingress looks for the Istio
// certificate files (its default is /etc/istio-certs).
const EnvEmissaryCertsDir = "AMBASSADOR_ISTIO_SECRET_DIR"

// contourOptInReason is why Contour is injected only on explicit opt-in.
const contourOptInReason = "Contour generates every upstream TLS context from Kubernetes Secrets over its own xDS and its bootstrap takes no extra clusters, so its Envoy cannot use the mesh identity (docs/gateway-wiring.md#contour)"

// BuiltinProfiles returns the gateways recognised out of the box, in the
// order they are tried. The labels are those the gateways' own charts and
// operators put on their proxy pods; Flavors are what each gateway can
// consume (docs/gateway-wiring.md).
func BuiltinProfiles() []GatewayProfile {
	return []GatewayProfile{
		{
			// Gloo Edge names each proxy's container after its
			// gateway-proxy-id (the default proxy is "gateway-proxy").
			// Its Upstreams name an SDS cluster; file references are
			// never reloaded (solo-io/gloo#3295).
			Name:               "gloo-edge",
			Selector:           metav1.LabelSelector{MatchLabels: map[string]string{"gloo": "gateway-proxy"}},
			ContainerFromLabel: "gateway-proxy-id",
			Containers:         []string{"gateway-proxy"},
			Flavors:            socketFlavors,
			DefaultFlavor:      FlavorIstioProxy,
		},
		{
			// kgateway (Gloo Gateway v2): its deployer's chart labels every
			// proxy pod kgateway=kube-gateway; the Envoy container is named
			// after the chart (kgateway-proxy, kgateway in 2.0).
			Name:          "kgateway",
			Selector:      metav1.LabelSelector{MatchLabels: map[string]string{"kgateway": "kube-gateway"}},
			Containers:    []string{"kgateway-proxy", "kgateway"},
			Flavors:       socketFlavors,
			DefaultFlavor: FlavorIstioProxy,
		},
		{
			// Gloo Gateway v2 as solo-io/gloo 1.17+ and early kgateway
			// deployed it: gloo=kube-gateway, container gloo-gateway.
			Name:          "gloo-gateway",
			Selector:      metav1.LabelSelector{MatchLabels: map[string]string{"gloo": "kube-gateway"}},
			Containers:    []string{"gloo-gateway", "kgateway"},
			Flavors:       socketFlavors,
			DefaultFlavor: FlavorIstioProxy,
		},
		{
			Name: "envoy-gateway",
			Selector: metav1.LabelSelector{MatchLabels: map[string]string{
				"app.kubernetes.io/managed-by": "envoy-gateway",
				"app.kubernetes.io/component":  "proxy",
			}},
			Containers:    []string{"envoy"},
			Flavors:       socketFlavors,
			DefaultFlavor: FlavorIstioProxy,
		},
		{
			// Contour's Helm chart (Bitnami) labels its Envoy DaemonSet.
			Name: "contour",
			Selector: metav1.LabelSelector{MatchLabels: map[string]string{
				"app.kubernetes.io/name":      "contour",
				"app.kubernetes.io/component": "envoy",
			}},
			Containers:  []string{"envoy"},
			OptInOnly:   true,
			OptInReason: contourOptInReason,
		},
		{
			// Contour's quickstart manifests only say app=envoy, which is too
			// generic on its own; Contour's shutdown-manager sidecar (or its
			// envoy-initconfig init container) pins it down, in any namespace.
			Name:              "contour-quickstart",
			Selector:          metav1.LabelSelector{MatchLabels: map[string]string{"app": "envoy"}},
			RequireContainers: []string{"shutdown-manager", "envoy-initconfig"},
			Containers:        []string{"envoy"},
			OptInOnly:         true,
			OptInReason:       contourOptInReason,
		},
		{
			// Emissary-ingress runs Envoy inside its main container, named
			// after the chart (ambassador for pre-2.x installs). Its
			// TLSContext reads files and cannot name an SDS cluster.
			Name: "emissary-ingress",
			Selector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key:      "app.kubernetes.io/name",
				Operator: metav1.LabelSelectorOpIn,
				Values:   []string{"emissary-ingress", "ambassador"},
			}}},
			Containers:    []string{"emissary-ingress", "ambassador"},
			Flavors:       []Flavor{FlavorIstioAgentFiles},
			DefaultFlavor: FlavorIstioAgentFiles,
			CertsDirEnv:   EnvEmissaryCertsDir,
		},
	}
}

// gatewayMatch is the result of profile selection.
type gatewayMatch struct {
	profile   string
	container string // empty when the profile matched but no container did
	env       []corev1.EnvVar
	// spec is the matched profile; nil for the generic profile, which can
	// use any flavor.
	spec *GatewayProfile
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
		if len(p.RequireContainers) > 0 && !hasAnyContainer(pod, p.RequireContainers) {
			continue
		}
		m := gatewayMatch{profile: p.Name, env: p.Env, spec: &p.GatewayProfile}
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

func hasAnyContainer(pod *corev1.Pod, names []string) bool {
	for _, n := range names {
		if containerIndex(pod.Spec.Containers, n) >= 0 || containerIndex(pod.Spec.InitContainers, n) >= 0 {
			return true
		}
	}
	return false
}

func containerIndex(cs []corev1.Container, name string) int {
	for i := range cs {
		if cs[i].Name == name {
			return i
		}
	}
	return -1
}

// envoyImages are image repositories that run Envoy as the container's
// main process: upstream Envoy's builds, Gloo's and kgateway's Envoy
// wrappers, Emissary-ingress and Ambassador.
var envoyImages = []string{
	"envoyproxy/envoy", "envoyproxy/envoy-distroless", "envoyproxy/envoy-contrib", "envoyproxy/envoy-dev",
	"solo-io/gloo-envoy-wrapper", "kgateway-dev/envoy-wrapper",
	"emissaryingress/emissary", "emissary-ingress/emissary", "datawire/emissary", "datawire/ambassador", "datawire/aes",
	"bitnami/envoy",
}

// isEnvoyImage reports whether image (any registry, tag or digest) is one
// of envoyImages.
func isEnvoyImage(image string) bool {
	repo := image
	if i := strings.IndexByte(repo, '@'); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	for _, e := range envoyImages {
		if repo == e || strings.HasSuffix(repo, "/"+e) {
			return true
		}
	}
	return false
}

// envoyContainers lists the pod's containers that run an Envoy image.
func envoyContainers(pod *corev1.Pod) []string {
	var out []string
	for i := range pod.Spec.Containers {
		if isEnvoyImage(pod.Spec.Containers[i].Image) {
			out = append(out, pod.Spec.Containers[i].Name)
		}
	}
	return out
}
