package inject

import (
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// The schema of the configuration file.
const (
	ConfigAPIVersion = "sds-injector.io/v1alpha1"
	ConfigKind       = "InjectorConfig"
)

// SupportedConfigVersions lists the apiVersions LoadConfig reads.
var SupportedConfigVersions = []string{ConfigAPIVersion}

// Presence records which of the fields that discovery or the CLI can fill
// the user set (in the file, to a value that is not null or "", or by a
// flag). Each field is named as the Config field it stands for (a test
// keeps the two in step), so a misspelt name is a compile error. What the
// user set always wins over discovered values.
type Presence struct {
	Flavor           bool
	IstioVersion     bool
	Hub              bool
	AgentImage       bool
	SDSAgentImage    bool
	CAAddress        bool
	DiscoveryAddress bool
	ClusterID        bool
	TrustDomain      bool
	MeshID           bool
	ClusterDomain    bool
	TokenAudience    bool
	NativeSidecar    bool
	Istio            bool
}

// presenceOverlay decodes the same file with pointer fields: nil is absent
// (or null).
type presenceOverlay struct {
	Flavor           *string `json:"flavor"`
	IstioVersion     *string `json:"istioVersion"`
	Hub              *string `json:"hub"`
	AgentImage       *string `json:"agentImage"`
	SDSAgentImage    *string `json:"sdsAgentImage"`
	CAAddress        *string `json:"caAddress"`
	DiscoveryAddress *string `json:"discoveryAddress"`
	ClusterID        *string `json:"clusterID"`
	TrustDomain      *string `json:"trustDomain"`
	MeshID           *string `json:"meshID"`
	ClusterDomain    *string `json:"clusterDomain"`
	TokenAudience    *string `json:"tokenAudience"`
	NativeSidecar    *bool   `json:"nativeSidecar"`
	Istio            *string `json:"istio"`
}

func set(p *string) bool { return p != nil && *p != "" }

func (o presenceOverlay) presence() Presence {
	return Presence{
		Flavor:           set(o.Flavor),
		IstioVersion:     set(o.IstioVersion),
		Hub:              set(o.Hub),
		AgentImage:       set(o.AgentImage),
		SDSAgentImage:    set(o.SDSAgentImage),
		CAAddress:        set(o.CAAddress),
		DiscoveryAddress: set(o.DiscoveryAddress),
		ClusterID:        set(o.ClusterID),
		TrustDomain:      set(o.TrustDomain),
		MeshID:           set(o.MeshID),
		ClusterDomain:    set(o.ClusterDomain),
		TokenAudience:    set(o.TokenAudience),
		NativeSidecar:    o.NativeSidecar != nil,
		Istio:            set(o.Istio),
	}
}

// LoadedConfig is a configuration file read over the built-in defaults.
type LoadedConfig struct {
	Config Config
	// Set lists the fields the file set.
	Set Presence
	// Warnings are problems that do not stop the configuration from being
	// used (today: a file without apiVersion/kind).
	Warnings []string
}

// LoadConfig reads a YAML or JSON configuration over the built-in defaults.
// Unknown fields are an error, so a typo never silently falls back to a
// default; an unknown apiVersion or kind is an error naming the supported
// ones. A non-empty file without apiVersion is read as ConfigAPIVersion
// with a deprecation warning. Empty data gives the defaults. The result
// still has to pass Resolve.
func LoadConfig(data []byte) (LoadedConfig, error) {
	out := LoadedConfig{Config: DefaultConfig()}
	if strings.TrimSpace(string(data)) == "" {
		return out, nil
	}
	cfg := DefaultConfig()
	// Lists replace the defaults rather than merging into them.
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return LoadedConfig{}, fmt.Errorf("config: %w", err)
	}
	// What the file itself says (the defaults fill both in).
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(data, &tm); err != nil {
		return LoadedConfig{}, fmt.Errorf("config: %w", err)
	}
	switch {
	case tm.APIVersion == "" && tm.Kind == "":
		out.Warnings = append(out.Warnings, fmt.Sprintf("config: no apiVersion/kind: read as %s %s; add \"apiVersion: %s\" and \"kind: %s\" (a later release will require them)",
			ConfigAPIVersion, ConfigKind, ConfigAPIVersion, ConfigKind))
	case tm.APIVersion == "":
		return LoadedConfig{}, fmt.Errorf("config: kind %q without apiVersion: set apiVersion: %s", tm.Kind, ConfigAPIVersion)
	case !isSupportedVersion(tm.APIVersion):
		return LoadedConfig{}, fmt.Errorf("config: apiVersion %q is not supported: supported: %s (kind %s)", tm.APIVersion, strings.Join(SupportedConfigVersions, ", "), ConfigKind)
	case tm.Kind != ConfigKind:
		return LoadedConfig{}, fmt.Errorf("config: kind %q is not supported: supported: %s (apiVersion %s)", tm.Kind, ConfigKind, ConfigAPIVersion)
	}
	var o presenceOverlay
	if err := yaml.Unmarshal(data, &o); err != nil {
		return LoadedConfig{}, fmt.Errorf("config: %w", err)
	}
	out.Config, out.Set = cfg, o.presence()
	return out, nil
}

func isSupportedVersion(v string) bool {
	for _, s := range SupportedConfigVersions {
		if v == s {
			return true
		}
	}
	return false
}

// ParseConfig is LoadConfig without the presence and the warnings.
func ParseConfig(data []byte) (Config, error) {
	l, err := LoadConfig(data)
	if err != nil {
		return Config{}, err
	}
	return l.Config, nil
}
