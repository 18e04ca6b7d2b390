package inject

import (
	"encoding/json"
	"fmt"
)

// statusVersion is bumped when Status changes incompatibly; Uninject refuses
// versions it does not know rather than guess.
const statusVersion = 1

// Status is recorded in the sds-injector.io/status annotation. It lists
// exactly what the engine added, so that re-injection is a no-op and
// Uninject restores the original pod.
type Status struct {
	Version      int    `json:"version"`
	Flavor       Flavor `json:"flavor"`
	IstioVersion string `json:"istioVersion"`
	IstioProfile string `json:"istioProfile"`
	Image        string `json:"image"`
	Revision     string `json:"revision,omitempty"` // Istio revision used (discovery only)
	// RevisionFrom says what chose the revision, e.g. "namespace label
	// sds-injector.io/istio-revision" (discovery only; empty for the
	// default revision).
	RevisionFrom string `json:"revisionFrom,omitempty"`
	// IdentityProvider is "spire" for the spire flavor (empty: istiod),
	// and SocketSource where its socket comes from ("csi", "hostPath").
	IdentityProvider string `json:"identityProvider,omitempty"`
	SocketSource     string `json:"socketSource,omitempty"`
	Placement        string `json:"placement"`
	GatewayProfile   string `json:"gatewayProfile"`
	// GatewayContainer is the container that received the mounts and env.
	GatewayContainer string   `json:"gatewayContainer"`
	Containers       []string `json:"containers,omitempty"`
	InitContainers   []string `json:"initContainers,omitempty"`
	// Volumes lists volumes the engine added; compatible volumes the pod
	// already had are reused and not listed.
	Volumes       []string   `json:"volumes,omitempty"`
	GatewayMounts []MountRef `json:"gatewayMounts,omitempty"`
	GatewayEnv    []string   `json:"gatewayEnv,omitempty"`
	// Annotations lists annotations added besides the status itself.
	Annotations []string `json:"annotations,omitempty"`
}

// MountRef identifies a volume mount.
type MountRef struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
}

const (
	PlacementNative  = "native"
	PlacementClassic = "classic"
	// PlacementInit: a run-to-completion init container (spire flavor).
	PlacementInit = "init"
)

// ParseStatus decodes a status annotation value.
func ParseStatus(value string) (*Status, error) {
	var st Status
	if err := json.Unmarshal([]byte(value), &st); err != nil {
		return nil, fmt.Errorf("annotation %s is not valid JSON: %w", AnnotationStatus, err)
	}
	if st.Version != statusVersion {
		return nil, fmt.Errorf("annotation %s has version %d; this sds-injector understands version %d", AnnotationStatus, st.Version, statusVersion)
	}
	return &st, nil
}

func (st *Status) encode() string {
	b, err := json.Marshal(st)
	if err != nil {
		// Status holds only strings, ints and slices of them.
		panic(err)
	}
	return string(b)
}
