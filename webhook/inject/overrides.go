package inject

import (
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// podParams applies the pod's override annotations to the settings. Every
// override is validated; the first invalid one is reported with what to fix.
// The flavor is the pod's annotation, else the configuration's flavor
// setting, else the gateway profile's default; a flavor the profile says its
// gateway cannot consume is a *flavorError.
func (s *Settings) podParams(pod *corev1.Pod, match gatewayMatch) (podParams, error) {
	p := podParams{
		flavor:       s.flavor,
		version:      s.version,
		image:        s.istioImage,
		native:       s.native,
		resources:    s.resources,
		resourcesKey: s.resourcesKey,
	}
	ann := pod.Annotations
	prof := match.spec
	source := ""
	if v, ok := ann[AnnotationFlavor]; ok {
		f := Flavor(v)
		if !isFlavor(f) {
			return p, fmt.Errorf("annotation %s=%q is invalid: use one of %v", AnnotationFlavor, v, s.enabledFlavors())
		}
		p.flavor, source = f, "annotation"
	} else if s.flavorSet {
		source = "config"
	} else if prof != nil && prof.defaultFlavor() != "" {
		p.flavor, source = prof.defaultFlavor(), "profile"
	}
	if p.flavor == FlavorSPIRE && s.spire == nil {
		return p, &spireDisabledError{source: source}
	}
	if prof != nil && !prof.allows(p.flavor) {
		return p, &flavorError{profile: prof, flavor: p.flavor, source: source, can: s.enabledOf(prof.Flavors)}
	}
	if v, ok := ann[AnnotationIstioVersion]; ok {
		ver, err := ParseIstioVersion(v)
		if err != nil {
			return p, fmt.Errorf("annotation %s: %w", AnnotationIstioVersion, err)
		}
		if ver.Release == "" {
			return p, fmt.Errorf("annotation %s=%q names no patch release: use a full version such as %s so the agent image tag can be derived",
				AnnotationIstioVersion, v, DefaultIstioVersion)
		}
		if s.hub == "" {
			return p, fmt.Errorf("annotation %s needs the injector's hub setting to derive the image, and none is configured", AnnotationIstioVersion)
		}
		p.version = ver
		p.image = proxyImage(s.hub, ver.Release)
	}
	if v, ok := ann[AnnotationNativeSidecar]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil || (v != "true" && v != "false") {
			return p, fmt.Errorf("annotation %s=%q is invalid: use \"true\" or \"false\"", AnnotationNativeSidecar, v)
		}
		p.native = b
	}
	if err := p.version.SupportsFlavor(p.flavor); err != nil {
		return p, fmt.Errorf("%s: %w", flavorVersionSources(ann, source, prof, p), err)
	}
	switch p.flavor {
	case FlavorSDSAgent:
		p.image = s.sdsAgentImage
		p.glooDropIn = s.glooDropIn
	case FlavorSPIRE:
		// The wait container runs the sds-agent image.
		p.image = s.sdsAgentImage
	}
	if v, ok := ann[AnnotationGlooDropIn]; ok {
		if v != "true" && v != "false" {
			return p, fmt.Errorf("annotation %s=%q is invalid: use \"true\" or \"false\"", AnnotationGlooDropIn, v)
		}
		if v == "true" && p.flavor != FlavorSDSAgent {
			return p, fmt.Errorf("annotation %s: \"true\" needs flavor %s (the drop-in is served by that agent), but the pod gets %s: set annotation %s: %s too",
				AnnotationGlooDropIn, FlavorSDSAgent, p.flavor, AnnotationFlavor, FlavorSDSAgent)
		}
		p.glooDropIn = v == "true"
	}
	p.profile = p.version.Profile()

	quantities := []struct {
		annotation string
		limit      bool
		name       corev1.ResourceName
	}{
		{AnnotationAgentCPU, false, corev1.ResourceCPU},
		{AnnotationAgentMemory, false, corev1.ResourceMemory},
		{AnnotationAgentCPULimit, true, corev1.ResourceCPU},
		{AnnotationAgentMemoryLimit, true, corev1.ResourceMemory},
	}
	copied := false
	for _, q := range quantities {
		v, ok := ann[q.annotation]
		if !ok {
			continue
		}
		qty, err := resource.ParseQuantity(v)
		if err != nil || qty.Sign() <= 0 {
			return p, fmt.Errorf("annotation %s=%q is not a positive quantity (e.g. 100m for CPU, 128Mi for memory)", q.annotation, v)
		}
		if !copied {
			p.resources = *p.resources.DeepCopy()
			p.resourcesKey = ""
			copied = true
		}
		list := &p.resources.Requests
		if q.limit {
			list = &p.resources.Limits
		}
		if *list == nil {
			*list = corev1.ResourceList{}
		}
		(*list)[q.name] = qty
	}
	for name, req := range p.resources.Requests {
		if lim, ok := p.resources.Limits[name]; ok && req.Cmp(lim) > 0 {
			return p, fmt.Errorf("agent %s request %s exceeds its limit %s: adjust the %s annotations", name, req.String(), lim.String(), Prefix+"agent-*")
		}
	}
	return p, nil
}

// flavorError: the pod or the configuration asks for a flavor the gateway
// cannot consume.
type flavorError struct {
	profile *GatewayProfile
	flavor  Flavor
	source  string // "annotation", "config" or "profile"
	// can: the profile's flavors this installation enables.
	can []Flavor
}

func (e *flavorError) Error() string {
	can := fmt.Sprintf("gateway profile %q says its gateway can consume only %v (docs/gateway-wiring.md), so an agent of flavor %s would be of no use to it",
		e.profile.Name, e.can, e.flavor)
	if e.source == "annotation" {
		return fmt.Sprintf("annotation %s=%s asks for flavor %s, but %s: remove the annotation to get the gateway's default %s, or choose one of %v",
			AnnotationFlavor, e.flavor, e.flavor, can, e.profile.defaultFlavor(), e.can)
	}
	return fmt.Sprintf("the injector's configuration sets flavor %s for every gateway, but %s: set annotation %s: %s on the pod template, "+
		"or leave the configuration's flavor unset so that each gateway gets its profile's default",
		e.flavor, can, AnnotationFlavor, e.profile.defaultFlavor())
}

// flavorVersionSources says where the pod's flavor and Istio version came
// from: its annotations, the configuration, or the gateway profile's
// default flavor (Resolve already checked the configuration alone).
func flavorVersionSources(ann map[string]string, flavorSource string, prof *GatewayProfile, p podParams) string {
	var flavor string
	switch {
	case flavorSource == "annotation":
		flavor = fmt.Sprintf("annotation %s=%q", AnnotationFlavor, ann[AnnotationFlavor])
	case flavorSource == "config" || prof == nil || prof.defaultFlavor() == "":
		flavor = fmt.Sprintf("the configuration's flavor %s", p.flavor)
	default:
		flavor = fmt.Sprintf("gateway profile %q's default flavor %s", prof.Name, p.flavor)
	}
	version := fmt.Sprintf("the configuration's istioVersion %s", p.version)
	if v, ok := ann[AnnotationIstioVersion]; ok {
		version = fmt.Sprintf("annotation %s=%q", AnnotationIstioVersion, v)
	}
	return flavor + " with " + version
}
