package istio

import (
	"fmt"
	"net"
	"sort"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// Revision is one installed Istio revision and the engine settings
// resolved for it.
type Revision struct {
	// Name is the revision ("default" for an install without one).
	Name string
	// InjectorConfigMap and MeshConfigMap are the objects read ("" when
	// the mesh ConfigMap is missing).
	InjectorConfigMap, MeshConfigMap string
	Values                           Values
	Mesh                             *Mesh
	// Version is the Istio version whose agent contract is used.
	Version string
	// Image is the Istio agent image (istio-proxy, istio-agent-files).
	Image string
	// Settings are nil when Err is set.
	Settings *inject.Settings
	// Notes explain choices a user may not expect (e.g. a tag that is not
	// a version, a setting that was not applied).
	Notes []string
	Err   error
	// bySource are Settings recording what chose the revision.
	bySource map[string]*inject.Settings
}

// Input is what a Snapshot is built from.
type Input struct {
	// Config is the user's configuration (defaults filled in) and Explicit
	// the fields the user set; discovered values fill only the others.
	Config   inject.Config
	Explicit inject.Presence
	// Namespace is where Istio is installed.
	Namespace  string
	ConfigMaps []*corev1.ConfigMap
	// Webhooks are Istio's MutatingWebhookConfigurations (label
	// istio.io/rev): its sidecar injector per revision and the revision
	// tags. Others are ignored.
	Webhooks []*admissionregistrationv1.MutatingWebhookConfiguration
	// WebhooksUnknown is set when the webhook configurations could not be
	// read (RBAC): Istio's injection is then guessed from its labels.
	WebhooksUnknown bool
}

// Snapshot is the discovered state at one moment; it is immutable.
type Snapshot struct {
	// Base are the settings without discovery: for pods that name no
	// revision when no Istio is installed.
	Base      *inject.Settings
	Revisions map[string]*Revision
	// Tags maps revision tags to revisions.
	Tags map[string]string
	// Default is the revision of pods that name none ("" when there is
	// none: no Istio, or several revisions and no default tag).
	Default string
	// Injectors are the webhooks of Istio's sidecar injector, in the order
	// the apiserver calls them; InjectorsUnknown is set when they could
	// not be read.
	Injectors        []Injector
	InjectorsUnknown bool
	policies         map[string]InjectionPolicy
	namespace        string
}

// Build resolves every revision in the input. base must be the result of
// in.Config.Resolve() (passed in so it is resolved once).
func Build(in Input, base *inject.Settings) *Snapshot {
	s := &Snapshot{Base: base, Revisions: map[string]*Revision{}, Tags: map[string]string{}, namespace: in.Namespace,
		policies: map[string]InjectionPolicy{}, InjectorsUnknown: in.WebhooksUnknown}
	injectors := map[string]*corev1.ConfigMap{}
	meshes := map[string]*corev1.ConfigMap{}
	for _, cm := range in.ConfigMaps {
		if cm == nil || (in.Namespace != "" && cm.Namespace != in.Namespace) {
			continue
		}
		if rev, ok := revisionOf(cm.Name, InjectorConfigMap); ok {
			if _, has := cm.Data[keyValues]; has {
				injectors[rev] = cm
			}
			s.policies[rev] = policyOf(cm)
			continue
		}
		if rev, ok := revisionOf(cm.Name, MeshConfigMap); ok {
			if _, has := cm.Data[keyMesh]; has {
				meshes[rev] = cm
			}
		}
	}
	for rev, cm := range injectors {
		r := &Revision{Name: rev, InjectorConfigMap: cm.Name}
		r.resolve(in, cm, meshes[rev])
		s.Revisions[rev] = r
	}
	for _, w := range in.Webhooks {
		tag, rev, ok := tagOf(w, in.Namespace)
		if ok {
			s.Tags[tag] = rev
		}
		s.Injectors = append(s.Injectors, injectorsOf(w, in.Namespace)...)
	}
	sortInjectors(s.Injectors)
	switch {
	case s.Tags[DefaultRevision] != "":
		s.Default = s.Tags[DefaultRevision]
	case s.Revisions[DefaultRevision] != nil:
		s.Default = DefaultRevision
	case len(s.Revisions) == 1:
		for name := range s.Revisions {
			s.Default = name
		}
	}
	return s
}

func namespaceOr(ns, other string) string {
	if ns == "" {
		return other
	}
	return ns
}

// revisionOf recognises <prefix> ("default") and <prefix>-<rev>.
func revisionOf(name, prefix string) (string, bool) {
	if name == prefix {
		return DefaultRevision, true
	}
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok || rest == "" {
		return "", false
	}
	return rest, true
}

// tagOf reads a revision tag webhook configuration: the tag from label
// istio.io/tag (else the name), the revision from label istio.io/rev.
func tagOf(w *admissionregistrationv1.MutatingWebhookConfiguration, istioNS string) (tag, rev string, ok bool) {
	if w == nil {
		return "", "", false
	}
	tag = w.Labels[LabelTag]
	if tag == "" {
		t, found := strings.CutPrefix(w.Name, TagWebhookPrefix)
		if !found {
			return "", "", false
		}
		tag = t
	}
	rev = w.Labels[LabelRev]
	if rev == "" {
		return "", "", false
	}
	// A tag of another control plane (Istio in another namespace) is not
	// ours.
	for _, wh := range w.Webhooks {
		if svc := wh.ClientConfig.Service; svc != nil && istioNS != "" && svc.Namespace != istioNS {
			return "", "", false
		}
	}
	return tag, rev, true
}

// resolve fills the revision's settings from its ConfigMaps.
func (r *Revision) resolve(in Input, injector, mesh *corev1.ConfigMap) {
	v, err := ParseValues(injector.Data[keyValues])
	if err != nil {
		r.Err = fmt.Errorf("ConfigMap %s/%s: %w", injector.Namespace, injector.Name, err)
		return
	}
	r.Values = v
	if mesh != nil {
		m, err := ParseMesh(mesh.Data[keyMesh])
		if err != nil {
			r.Err = fmt.Errorf("ConfigMap %s/%s: %w", mesh.Namespace, mesh.Name, err)
			return
		}
		r.Mesh, r.MeshConfigMap = &m, mesh.Name
	} else {
		r.Notes = append(r.Notes, fmt.Sprintf("mesh ConfigMap %s not found: trust domain and discovery address are not discovered", meshName(r.Name)))
	}
	istioNS := v.IstioNamespace
	if istioNS == "" {
		istioNS = namespaceOr(in.Namespace, injector.Namespace)
	}
	cfg := in.Config
	cfg.GatewayProfiles = append([]inject.GatewayProfile(nil), in.Config.GatewayProfiles...)
	set := in.Explicit
	m := r.Mesh
	if m == nil {
		m = &Mesh{}
	}

	// Image and version: <hub>/<proxy image>:<tag>[-<variant>], as
	// Istio's injector builds it.
	hub := cfg.Hub
	if !set.Hub && v.Hub != "" {
		hub = v.Hub
		cfg.Hub = v.Hub
	}
	variant := v.Variant
	if m.ImageType != "" {
		variant = m.ImageType
	}
	if variant == "default" {
		variant = ""
	}
	tagVersion := ""
	if v.Tag != "" {
		if ver, err := inject.ParseIstioVersion(v.Tag); err == nil && ver.Release != "" {
			tagVersion = v.Tag
		}
	}
	if !set.IstioVersion {
		switch {
		case tagVersion != "":
			cfg.IstioVersion = tagVersion
		case v.Tag == "":
			r.Notes = append(r.Notes, fmt.Sprintf("values name no global.tag: the agent contract follows istioVersion %s", cfg.IstioVersion))
		default:
			r.Notes = append(r.Notes, fmt.Sprintf("tag %q is not an Istio release: the agent contract follows the configured istioVersion %s (set istioVersion to the release this tag is)", v.Tag, cfg.IstioVersion))
		}
	}
	if !set.AgentImage && !set.IstioVersion {
		switch {
		case strings.Contains(v.ProxyImage, "/"):
			cfg.AgentImage = v.ProxyImage
		case v.Tag != "":
			name := v.ProxyImage
			if name == "" {
				name = "proxyv2"
			}
			image := strings.TrimSuffix(hub, "/") + "/" + name + ":" + v.Tag
			if variant != "" {
				image += "-" + variant
			}
			cfg.AgentImage = image
		}
	}

	if !set.CAAddress {
		switch {
		case m.ProxyMetadata["CA_ADDR"] != "":
			cfg.CAAddress = m.ProxyMetadata["CA_ADDR"]
		case v.CAAddress != "":
			cfg.CAAddress = v.CAAddress
		default:
			svc := "istiod"
			if r.Name != DefaultRevision {
				svc += "-" + r.Name
			}
			cfg.CAAddress = net.JoinHostPort(svc+"."+istioNS+".svc", "15012")
		}
	}
	if !set.DiscoveryAddress && m.DiscoveryAddress != "" {
		cfg.DiscoveryAddress = m.DiscoveryAddress
	}
	if !set.ClusterID && v.ClusterName != "" {
		cfg.ClusterID = v.ClusterName
	}
	if !set.TrustDomain {
		switch {
		case m.TrustDomain != "":
			cfg.TrustDomain = m.TrustDomain
		case v.TrustDomain != "":
			cfg.TrustDomain = v.TrustDomain
		}
	}
	if !set.MeshID {
		switch {
		case v.MeshID != "":
			cfg.MeshID = v.MeshID
		case m.MeshID != "":
			cfg.MeshID = m.MeshID
		}
	}
	if !set.TokenAudience && v.TokenAudience != "" {
		cfg.TokenAudience = v.TokenAudience
	}
	if !set.ClusterDomain && v.ClusterDomain != "" {
		cfg.ClusterDomain = v.ClusterDomain
	}
	if p := v.PilotCertProvider; p != "" && p != "istiod" {
		r.Notes = append(r.Notes, fmt.Sprintf("global.pilotCertProvider is %q: the agent still trusts istiod's root from %s (PILOT_CERT_PROVIDER=istiod)", p, cfg.RootCertConfigMap))
	}
	s, err := cfg.Resolve()
	if err != nil {
		r.Err = fmt.Errorf("settings from ConfigMap %s/%s: %w", injector.Namespace, injector.Name, err)
		return
	}
	r.Settings = s.WithRevision(r.Name)
	r.bySource = map[string]*inject.Settings{}
	for _, src := range []string{SourcePodAnnotation, SourceNamespaceLabel, SourcePodIstioRev, SourceNsIstioRev} {
		r.bySource[src] = s.WithRevisionFrom(r.Name, src)
	}
	r.Version = s.IstioVersion().String()
	r.Image = s.AgentImage()
}

func meshName(rev string) string {
	if rev == DefaultRevision {
		return MeshConfigMap
	}
	return MeshConfigMap + "-" + rev
}

// Names lists the installed revisions, sorted.
func (s *Snapshot) Names() []string {
	out := make([]string, 0, len(s.Revisions))
	for n := range s.Revisions {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// TagNames lists the revision tags, sorted.
func (s *Snapshot) TagNames() []string {
	out := make([]string, 0, len(s.Tags))
	for n := range s.Tags {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Selection is the outcome of choosing a revision for a pod.
type Selection struct {
	// Settings are never nil: on a Problem they are the base settings, to
	// screen the pod with (inject.RevisionUnavailable).
	Settings *inject.Settings
	// Revision is the chosen revision ("" for the base settings).
	Revision string
	// Requested is what the pod or namespace asked for, and Source where
	// it came from.
	Requested, Source string
	// Problem is set when the requested revision cannot be used.
	Problem string
}

// Sources of a revision request, recorded in the status annotation
// (Status.RevisionFrom).
const (
	SourcePodAnnotation  = "pod annotation " + inject.AnnotationIstioRevision
	SourceNamespaceLabel = "namespace label " + inject.LabelIstioRevision
	SourcePodIstioRev    = "pod label " + inject.LabelIstioRev
	SourceNsIstioRev     = "namespace label " + inject.LabelIstioRev
)

// Requested reads a pod's revision request: the pod annotation
// sds-injector.io/istio-revision, else the namespace label of the same
// key, else Istio's own istio.io/rev on the pod, then on the namespace.
// (Istio's own webhooks let the namespace win; for gateways the pod is the
// more specific statement.) istio.io/rev also selects the pod for Istio's
// injector, so it only matters where that injector does not act on the pod
// (Discovery then leaves the pod to Istio, see IstioInjection): e.g. a pod
// labelled sidecar.istio.io/inject: "false", or a revision not installed.
func Requested(podLabels, podAnnotations, nsLabels map[string]string) (rev, source string) {
	if v := strings.TrimSpace(podAnnotations[inject.AnnotationIstioRevision]); v != "" {
		return v, SourcePodAnnotation
	}
	if v := strings.TrimSpace(nsLabels[inject.LabelIstioRevision]); v != "" {
		return v, SourceNamespaceLabel
	}
	if v := strings.TrimSpace(podLabels[LabelRev]); v != "" {
		return v, SourcePodIstioRev
	}
	if v := strings.TrimSpace(nsLabels[LabelRev]); v != "" {
		return v, SourceNsIstioRev
	}
	return "", ""
}

// Select chooses the settings for a pod from its labels and annotations
// and its namespace's labels.
func (s *Snapshot) Select(podLabels, podAnnotations, nsLabels map[string]string) Selection {
	req, source := Requested(podLabels, podAnnotations, nsLabels)
	sel := Selection{Settings: s.Base, Requested: req, Source: source}
	name := req
	if name == "" || name == DefaultRevision {
		// Istio's "default": the default tag, else the install without a
		// revision, else the only revision.
		name = s.Default
		if name == "" {
			if req == "" && len(s.Revisions) == 0 {
				return sel // no Istio: built-in defaults and configuration
			}
			sel.Problem = s.problem(req, source, "no default revision")
			return sel
		}
	} else if _, isRev := s.Revisions[name]; !isRev {
		if target, isTag := s.Tags[name]; isTag {
			name = target
		}
	}
	rev := s.Revisions[name]
	switch {
	case rev == nil:
		sel.Problem = s.problem(req, source, "not installed")
	case rev.Err != nil:
		sel.Problem = fmt.Sprintf("Istio revision %q cannot be used: %v", name, rev.Err)
	default:
		sel.Settings, sel.Revision = rev.settingsFrom(source), rev.Name
	}
	return sel
}

// settingsFrom returns the revision's settings recording source as what
// chose it (precomputed: one copy per source).
func (r *Revision) settingsFrom(source string) *inject.Settings {
	if s, ok := r.bySource[source]; ok {
		return s
	}
	return r.Settings
}

func (s *Snapshot) problem(req, source, what string) string {
	var b strings.Builder
	switch req {
	case "", DefaultRevision:
		fmt.Fprintf(&b, "the pod names no Istio revision and there is %s", what)
		if len(s.Revisions) > 1 {
			b.WriteString(" (no default tag and several revisions)")
		}
	default:
		target := ""
		if t, ok := s.Tags[req]; ok {
			target = fmt.Sprintf(" (tag for revision %q)", t)
		}
		fmt.Fprintf(&b, "Istio revision %q%s from %s is %s", req, target, source, what)
	}
	if len(s.Revisions) == 0 {
		fmt.Fprintf(&b, "; no Istio revision is installed (no %s ConfigMap in namespace %s)", InjectorConfigMap, s.namespace)
	} else {
		fmt.Fprintf(&b, "; installed revisions: %s", strings.Join(s.Names(), ", "))
		if len(s.Tags) > 0 {
			var tags []string
			for _, t := range s.TagNames() {
				tags = append(tags, t+"->"+s.Tags[t])
			}
			fmt.Fprintf(&b, "; tags: %s", strings.Join(tags, ", "))
		}
		fmt.Fprintf(&b, "; set the namespace label (or pod annotation) %s to one of them", inject.AnnotationIstioRevision)
	}
	return b.String()
}

// Resolve is Select for a pod.
func (s *Snapshot) Resolve(pod *corev1.Pod, nsLabels map[string]string) Selection {
	return s.Select(pod.Labels, pod.Annotations, nsLabels)
}
