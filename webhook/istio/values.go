// Package istio discovers the installed Istio control plane(s) and turns
// each revision's own settings into engine Settings.
//
// It reads what istiod's injector reads: the values of the
// istio-sidecar-injector[-<rev>] ConfigMap (image hub, tag and variant,
// mesh ID, cluster name, CA address, token audience, ...) and the mesh
// configuration in the istio[-<rev>] ConfigMap (trust domain, discovery
// address, proxy metadata), plus the revision tags
// (istio-revision-tag-<tag> MutatingWebhookConfigurations). Discovery
// watches them with informers, so admission requests never cause an API
// call; Snapshot (pure) does the resolution, so the webhook, the offline
// CLI and `sds-injector check` agree.
package istio

import (
	"encoding/json"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// Names of the objects Istio creates (istio-discovery chart).
const (
	// InjectorConfigMap is istio-sidecar-injector[-<rev>], keys config and values.
	InjectorConfigMap = "istio-sidecar-injector"
	// MeshConfigMap is istio[-<rev>], key mesh.
	MeshConfigMap = "istio"
	// TagWebhookPrefix names revision tag webhook configurations:
	// istio-revision-tag-<tag>[-<istio namespace>].
	TagWebhookPrefix = "istio-revision-tag-"
	// LabelTag is set on revision tag webhook configurations.
	LabelTag = "istio.io/tag"
	// LabelRev is Istio's revision label (namespaces, pods, Istio's objects).
	LabelRev = "istio.io/rev"
	// DefaultRevision names the revision of an install without a revision
	// (and the default tag).
	DefaultRevision = "default"
	// DefaultIstioNamespace is where Istio is installed unless told otherwise.
	DefaultIstioNamespace = "istio-system"

	keyValues = "values"
	keyMesh   = "mesh"
)

// Values are the fields of the injector ConfigMap's `values` (the
// istio-discovery chart's values, as JSON) that matter to the agent.
type Values struct {
	Hub     string
	Tag     string
	Variant string
	// ProxyImage is global.proxy.image: an image name under Hub, or a full
	// image when it contains a "/".
	ProxyImage        string
	MeshID            string
	ClusterName       string
	Network           string
	CAAddress         string
	PilotCertProvider string
	TokenAudience     string
	IstioNamespace    string
	ClusterDomain     string
	TrustDomain       string // global.trustDomain (old releases)
	Revision          string
}

type rawValues struct {
	Global struct {
		Hub          string          `json:"hub"`
		Tag          json.RawMessage `json:"tag"`
		Variant      string          `json:"variant"`
		MeshID       string          `json:"meshID"`
		MultiCluster struct {
			ClusterName string `json:"clusterName"`
		} `json:"multiCluster"`
		Network           string `json:"network"`
		CAAddress         string `json:"caAddress"`
		PilotCertProvider string `json:"pilotCertProvider"`
		Sds               struct {
			Token struct {
				Aud string `json:"aud"`
			} `json:"token"`
		} `json:"sds"`
		IstioNamespace string `json:"istioNamespace"`
		TrustDomain    string `json:"trustDomain"`
		Proxy          struct {
			Image         string `json:"image"`
			ClusterDomain string `json:"clusterDomain"`
			Variant       string `json:"variant"`
		} `json:"proxy"`
	} `json:"global"`
	Revision string `json:"revision"`
}

// ParseValues decodes the injector ConfigMap's values (JSON; YAML is
// accepted too). Unknown fields are ignored: the document is the whole
// chart's values and changes with every Istio release.
func ParseValues(data string) (Values, error) {
	var r rawValues
	if err := yaml.Unmarshal([]byte(data), &r); err != nil {
		return Values{}, fmt.Errorf("values: %w", err)
	}
	g := r.Global
	v := Values{
		Hub:               strings.TrimSpace(g.Hub),
		Tag:               scalar(g.Tag),
		Variant:           strings.TrimSpace(g.Variant),
		ProxyImage:        strings.TrimSpace(g.Proxy.Image),
		MeshID:            g.MeshID,
		ClusterName:       g.MultiCluster.ClusterName,
		Network:           g.Network,
		CAAddress:         strings.TrimSpace(g.CAAddress),
		PilotCertProvider: g.PilotCertProvider,
		TokenAudience:     g.Sds.Token.Aud,
		IstioNamespace:    g.IstioNamespace,
		ClusterDomain:     g.Proxy.ClusterDomain,
		TrustDomain:       g.TrustDomain,
		Revision:          r.Revision,
	}
	if v.Variant == "" {
		v.Variant = strings.TrimSpace(g.Proxy.Variant)
	}
	return v, nil
}

// scalar reads a JSON string or number ("tag: 1.22" in a values file is
// a number to YAML).
func scalar(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return strings.TrimSpace(s)
	}
	return strings.TrimSpace(string(raw))
}

// Mesh is the part of the mesh configuration (istio[-<rev>] ConfigMap, key
// mesh) that matters to the agent.
type Mesh struct {
	TrustDomain      string
	DiscoveryAddress string
	MeshID           string
	// ImageType is defaultConfig.image.imageType (the variant).
	ImageType     string
	ProxyMetadata map[string]string
}

type rawMesh struct {
	TrustDomain   string `json:"trustDomain"`
	DefaultConfig struct {
		DiscoveryAddress string            `json:"discoveryAddress"`
		MeshID           string            `json:"meshId"`
		ProxyMetadata    map[string]string `json:"proxyMetadata"`
		Image            struct {
			ImageType string `json:"imageType"`
		} `json:"image"`
	} `json:"defaultConfig"`
}

// ParseMesh decodes a mesh configuration (YAML).
func ParseMesh(data string) (Mesh, error) {
	var r rawMesh
	if err := yaml.Unmarshal([]byte(data), &r); err != nil {
		return Mesh{}, fmt.Errorf("mesh: %w", err)
	}
	return Mesh{
		TrustDomain:      strings.TrimSpace(r.TrustDomain),
		DiscoveryAddress: strings.TrimSpace(r.DefaultConfig.DiscoveryAddress),
		MeshID:           r.DefaultConfig.MeshID,
		ImageType:        strings.TrimSpace(r.DefaultConfig.Image.ImageType),
		ProxyMetadata:    r.DefaultConfig.ProxyMetadata,
	}, nil
}

// ExplicitFields returns the fields a configuration file sets to a value
// (present, not null, not an empty string): inject.LoadConfig's Presence.
// Discovered values fill only the other fields: what the user wrote always
// wins.
func ExplicitFields(data []byte) (inject.Presence, error) {
	l, err := inject.LoadConfig(data)
	if err != nil {
		return inject.Presence{}, err
	}
	return l.Set, nil
}
