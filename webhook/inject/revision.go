package inject

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// IstioMode is the Config.Istio switch.
type IstioMode string

const (
	// IstioOff uses only the configuration and the built-in defaults.
	IstioOff IstioMode = "off"
	// IstioAuto follows the installed Istio control plane(s).
	IstioAuto IstioMode = "auto"
)

// Auto reports whether discovery of the installed Istio is asked for.
func (m IstioMode) Auto() bool { return m == IstioAuto }

func validateIstioMode(p *field.Path, m IstioMode) field.ErrorList {
	switch m {
	case "", IstioOff, IstioAuto:
		return nil
	}
	return field.ErrorList{field.NotSupported(p, m, []string{string(IstioAuto), string(IstioOff)})}
}

// Revision labels and annotations. Reading them is the discovery's job (it
// knows the installed revisions and the namespace's labels); they are
// listed here with the engine's other names.
const (
	// AnnotationIstioRevision on a pod, or the label of the same key on its
	// namespace (LabelIstioRevision), selects the Istio revision (or
	// revision tag) whose settings the agent gets; the pod annotation wins.
	// Istio's injector does not read it, so it never switches Istio's own
	// sidecar injection on.
	AnnotationIstioRevision = Prefix + "istio-revision"
	LabelIstioRevision      = AnnotationIstioRevision
	// LabelIstioRev is Istio's own revision label. It selects the pod for
	// Istio's injector, so it is read only as a last resort, where Istio's
	// injector does not act on the pod (e.g. sidecar.istio.io/inject:
	// "false").
	LabelIstioRev = "istio.io/rev"
)

// WithRevision returns a copy of the settings that records revision in
// the status annotation of the pods it injects. The copy has its own
// encoding cache; s is not modified.
func (s *Settings) WithRevision(revision string) *Settings {
	return s.WithRevisionFrom(revision, "")
}

// WithRevisionFrom is WithRevision that also records what chose the
// revision (Status.RevisionFrom).
func (s *Settings) WithRevisionFrom(revision, from string) *Settings {
	c := *s
	c.revision, c.revisionFrom = revision, from
	c.cache = &encodedCache{}
	return &c
}

// RevisionFrom is what chose the revision (see WithRevisionFrom).
func (s *Settings) RevisionFrom() string { return s.revisionFrom }

// Revision is the Istio revision recorded in the status annotation, or "".
func (s *Settings) Revision() string { return s.revision }

// AgentImage is the image of the Istio agent flavors (istio-proxy,
// istio-agent-files) before per-pod overrides.
func (s *Settings) AgentImage() string { return s.istioImage }

// CAAddress is istiod's certificate service (CA_ADDR).
func (s *Settings) CAAddress() string { return s.caAddress }

// DiscoveryAddress is istiod's xDS address in PROXY_CONFIG.
func (s *Settings) DiscoveryAddress() string { return s.discoveryAddress }

// TrustDomain is TRUST_DOMAIN.
func (s *Settings) TrustDomain() string { return s.trustDomain }

// ClusterID is ISTIO_META_CLUSTER_ID.
func (s *Settings) ClusterID() string { return s.clusterID }

// MeshID is ISTIO_META_MESH_ID.
func (s *Settings) MeshID() string { return s.meshID }

// TokenAudience is the audience of the projected istio-token.
func (s *Settings) TokenAudience() string { return s.tokenAudience }

// AgentImageFor is the agent image Inject would give this pod now, after
// its override annotations (flavor, Istio version). Comparing it with the
// image in a running pod's status annotation tells whether the pod's agent
// is out of date.
func (s *Settings) AgentImageFor(pod *corev1.Pod) (string, error) {
	if pod == nil || s == nil {
		return "", fmt.Errorf("no pod or no settings given")
	}
	match, _ := s.matchGateway(pod)
	p, err := s.podParams(pod, match)
	if err != nil {
		return "", err
	}
	return p.image, nil
}

// RevisionUnavailable is the decision for a pod that asks for an Istio
// revision for which there are no settings (not installed, or a tag that
// points nowhere). s are the settings to screen the pod with (any will do:
// screening does not depend on the revision). A pod the screen already
// turns away keeps that decision, so that application pods in a namespace
// labelled for a removed revision cause no warnings; a gateway is skipped
// with a warning carrying msg, which should name the revisions that exist.
func RevisionUnavailable(pod *corev1.Pod, s *Settings, msg string) Decision {
	if pod == nil || s == nil {
		return failed(ReasonInvalidInput, "no pod or no settings given")
	}
	d, match, _, final := s.screen(pod)
	if final {
		return d
	}
	return warned(ReasonUnknownRevision, match.profile, msg)
}
