package inject

import (
	"fmt"
	"github.com/sds-injector/sds-injector/internal/agentcontract"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Flavor selects which certificate agent is injected.
type Flavor string

const (
	// FlavorIstioProxy runs stock `pilot-agent proxy router` with its Envoy
	// enabled: the only configuration in which the stock agent serves SDS on
	// the workload socket. The agent's own Envoy idles.
	FlavorIstioProxy Flavor = "istio-proxy"
	// FlavorIstioAgentFiles runs stock pilot-agent with DISABLE_ENVOY=true;
	// it writes key.pem, cert-chain.pem and root-cert.pem into a shared
	// in-memory volume that the gateway reads.
	FlavorIstioAgentFiles Flavor = "istio-agent-files"
	// FlavorSDSAgent runs the project's own slim agent, which serves SDS on
	// the workload socket without an idle Envoy.
	FlavorSDSAgent Flavor = "sds-agent"
	// FlavorSPIRE injects no agent: the gateway's Envoy gets the SPIRE
	// agent's Workload API socket (which serves SDS with Istio's names)
	// through the SPIFFE CSI driver or a hostPath, and a run-to-completion
	// init container of the sds-agent image holds the gateway back until
	// the socket answers. It needs identityProvider.spire (docs/spire.md).
	FlavorSPIRE Flavor = "spire"
)

// Flavors lists the agent flavors (an Istio certificate agent fed by
// istiod) in documentation order.
var Flavors = []Flavor{FlavorIstioProxy, FlavorIstioAgentFiles, FlavorSDSAgent}

// ProviderFlavors are the flavors that inject no agent and take the identity
// from another provider, enabled by the configuration's identityProvider
// section: spire.
var ProviderFlavors = []Flavor{FlavorSPIRE}

// AllFlavors lists every flavor, agent flavors first.
func AllFlavors() []Flavor { return append(append([]Flavor(nil), Flavors...), ProviderFlavors...) }

// Built-in defaults: everything works with no configuration file.
const (
	DefaultIstioVersion      = "1.30.0"
	DefaultHub               = "docker.io/istio"
	DefaultSDSAgentImage     = "ghcr.io/sds-injector/sds-agent:v0.1.0"
	DefaultCAAddress         = agentcontract.DefaultCAAddr
	DefaultClusterID         = agentcontract.DefaultClusterID
	DefaultTrustDomain       = agentcontract.DefaultTrustDomain
	DefaultClusterDomain     = "cluster.local"
	DefaultTokenAudience     = "istio-ca"
	DefaultRootCertConfigMap = "istio-ca-root-cert"
	// DefaultTokenExpirationSeconds matches Istio's injection templates.
	DefaultTokenExpirationSeconds int64 = 43200
)

// Config is the user-facing configuration, read from YAML by both
// `sds-injector serve` and `sds-injector inject`. Resolve validates it once
// and produces the Settings the engine runs on.
type Config struct {
	// APIVersion and Kind identify the file's schema: ConfigAPIVersion and
	// ConfigKind (the defaults). A file without them is read as that
	// version, with a deprecation warning (see LoadConfig).
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`

	// Flavor, when set, is the flavor every gateway gets unless its pod
	// overrides it with the sds-injector.io/flavor annotation; a gateway
	// whose profile cannot use it is skipped with a warning. Empty (the
	// default) gives each gateway its profile's default flavor, and
	// istio-proxy to gateways whose profile names none.
	Flavor Flavor `json:"flavor,omitempty"`
	// IstioVersion selects the agent contract (see IstioProfile) and, unless
	// AgentImage is set, the proxyv2 image tag.
	IstioVersion string `json:"istioVersion,omitempty"`
	// Hub is the registry path of Istio's images: <hub>/proxyv2:<version>.
	Hub string `json:"hub,omitempty"`
	// AgentImage pins the image of the istio-proxy and istio-agent-files
	// flavors (e.g. a digest-pinned or private-registry image).
	AgentImage string `json:"agentImage,omitempty"`
	// SDSAgentImage is the image of the sds-agent flavor.
	SDSAgentImage   string            `json:"sdsAgentImage,omitempty"`
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// CAAddress is istiod's certificate service (CA_ADDR).
	CAAddress string `json:"caAddress,omitempty"`
	// DiscoveryAddress is istiod's xDS address; defaults to CAAddress.
	DiscoveryAddress string `json:"discoveryAddress,omitempty"`
	ClusterID        string `json:"clusterID,omitempty"`
	TrustDomain      string `json:"trustDomain,omitempty"`
	// MeshID defaults to the trust domain, as in Istio.
	MeshID        string `json:"meshID,omitempty"`
	ClusterDomain string `json:"clusterDomain,omitempty"`
	// TokenAudience is the audience of the projected token istiod accepts.
	TokenAudience string `json:"tokenAudience,omitempty"`
	// RootCertConfigMap is the ConfigMap istiod publishes its root into.
	RootCertConfigMap string `json:"rootCertConfigMap,omitempty"`
	// CertsDir is where the istio-agent-files flavor writes the PEM files.
	CertsDir string `json:"certsDir,omitempty"`

	// GlooDropIn makes the sds-agent flavor also serve its secrets on
	// loopback TCP 127.0.0.1:8234, where Gloo Edge's own Istio integration
	// expects its sds container: Gloo's bootstrap cluster gateway_proxy_sds
	// and Upstreams naming istio_server_cert / istio_validation_context (the
	// agent serves those names as aliases of default / ROOTCA, on the socket
	// too) then work unchanged. Pods may override it with the
	// sds-injector.io/gloo-drop-in annotation. It applies to sds-agent pods
	// only, and never on the host network (loopback is the node's there).
	GlooDropIn bool `json:"glooDropIn,omitempty"`

	// NativeSidecar places the agent in initContainers with
	// restartPolicy: Always (Kubernetes 1.29+).
	NativeSidecar  bool                        `json:"nativeSidecar,omitempty"`
	AgentResources corev1.ResourceRequirements `json:"agentResources,omitempty"`

	// ExcludedNamespaces are never injected, whatever the labels say.
	ExcludedNamespaces []string `json:"excludedNamespaces,omitempty"`
	// GatewayProfiles are tried, in order, before the built-in ones.
	GatewayProfiles []GatewayProfile `json:"gatewayProfiles,omitempty"`
	// DisableBuiltinProfiles leaves only GatewayProfiles (and the generic
	// sds-injector.io/gateway-container annotation) in effect.
	DisableBuiltinProfiles bool `json:"disableBuiltinProfiles,omitempty"`

	// IdentityProvider configures identity providers other than istiod
	// that a flavor can consume; today SPIRE (the spire flavor). Absent,
	// the spire flavor is disabled and pods asking for it are skipped.
	IdentityProvider IdentityProviderConfig `json:"identityProvider,omitempty"`

	// Istio is "auto" to follow the installed Istio (its revisions, image,
	// CA address, trust domain; see docs/discovery.md) where this
	// configuration does not set a value; empty or "off" uses only this
	// configuration and the built-in defaults. The engine itself never
	// talks to the cluster: discovery produces Settings per revision.
	Istio IstioMode `json:"istio,omitempty"`
}

// DefaultConfig returns the built-in defaults.
func DefaultConfig() Config {
	return Config{
		APIVersion:        ConfigAPIVersion,
		Kind:              ConfigKind,
		IstioVersion:      DefaultIstioVersion,
		Hub:               DefaultHub,
		SDSAgentImage:     DefaultSDSAgentImage,
		ImagePullPolicy:   corev1.PullIfNotPresent,
		CAAddress:         DefaultCAAddress,
		ClusterID:         DefaultClusterID,
		TrustDomain:       DefaultTrustDomain,
		ClusterDomain:     DefaultClusterDomain,
		TokenAudience:     DefaultTokenAudience,
		RootCertConfigMap: DefaultRootCertConfigMap,
		CertsDir:          DefaultCertsDir,
		AgentResources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("50m"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("1"),
				corev1.ResourceMemory: resource.MustParse("512Mi"),
			},
		},
		ExcludedNamespaces: []string{"kube-system", "kube-public", "kube-node-lease"},
	}
}

// Settings is a validated configuration, ready for the engine. It is
// immutable and safe for concurrent use.
type Settings struct {
	// flavor is the default flavor; flavorSet says the configuration
	// chose it for every gateway (Config.Flavor), rather than leaving the
	// choice to each gateway's profile.
	flavor            Flavor
	flavorSet         bool
	version           IstioVersion
	istioImage        string
	hub               string
	sdsAgentImage     string
	pullPolicy        corev1.PullPolicy
	caAddress         string
	discoveryAddress  string
	clusterID         string
	trustDomain       string
	meshID            string
	clusterDomain     string
	tokenAudience     string
	rootCertConfigMap string
	certsDir          string
	native            bool
	glooDropIn        bool
	resources         corev1.ResourceRequirements
	resourcesKey      string // resourcesKey(resources), for cacheKey
	excluded          sets.Set[string]
	profiles          []compiledProfile
	proxyConfigJSON   string
	cache             *encodedCache
	hints             *hints
	// spire is the validated identityProvider.spire; nil: disabled.
	spire *spireSettings
	// revision is the Istio revision these settings were discovered for
	// (recorded in the status annotation); empty without discovery.
	revision string
	// revisionFrom says what chose revision (status annotation).
	revisionFrom string
}

// Flavor is the default flavor: the configured one, or istio-proxy, the
// default of gateways whose profile names none, when none is configured.
func (s *Settings) Flavor() Flavor { return s.flavor }

// FlavorConfigured reports whether the configuration sets the flavor for
// every gateway (otherwise each gateway's profile chooses).
func (s *Settings) FlavorConfigured() bool { return s.flavorSet }

// IstioVersion is the configured Istio version.
func (s *Settings) IstioVersion() IstioVersion { return s.version }

// ClusterDomain is the cluster's DNS domain.
func (s *Settings) ClusterDomain() string { return s.clusterDomain }

// Native reports whether native sidecar placement is the default.
func (s *Settings) Native() bool { return s.native }

// Resolve validates the configuration and returns the engine's settings.
// All problems are reported at once, each with the field it concerns.
func (c Config) Resolve() (*Settings, error) {
	var errs field.ErrorList
	root := field.NewPath("")
	fp := func(name string) *field.Path { return root.Child(name) }

	if c.Flavor != "" && !isFlavor(c.Flavor) {
		errs = append(errs, field.NotSupported(fp("flavor"), c.Flavor, flavorStrings()))
	}
	version, err := ParseIstioVersion(c.IstioVersion)
	if err != nil {
		errs = append(errs, field.Invalid(fp("istioVersion"), c.IstioVersion, err.Error()))
	}
	if err == nil && isFlavor(c.Flavor) {
		if ferr := version.SupportsFlavor(c.Flavor); ferr != nil {
			errs = append(errs, field.Invalid(fp("flavor"), c.Flavor, "with istioVersion "+c.IstioVersion+": "+ferr.Error()))
		}
	}
	istioImage := c.AgentImage
	if istioImage == "" && err == nil {
		if version.Release == "" {
			errs = append(errs, field.Invalid(fp("istioVersion"), c.IstioVersion,
				"names no patch release, so the proxyv2 image tag cannot be derived: use a full version such as 1.30.0 or set agentImage"))
		} else {
			istioImage = proxyImage(c.Hub, version.Release)
		}
	}
	if c.AgentImage == "" && c.Hub == "" {
		errs = append(errs, field.Required(fp("hub"), "needed to derive the proxyv2 image when agentImage is not set"))
	}
	errs = append(errs, validateImage(fp("agentImage"), c.AgentImage, true)...)
	errs = append(errs, validateImage(fp("sdsAgentImage"), c.SDSAgentImage, false)...)
	switch c.ImagePullPolicy {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, field.NotSupported(fp("imagePullPolicy"), c.ImagePullPolicy,
			[]string{string(corev1.PullAlways), string(corev1.PullIfNotPresent), string(corev1.PullNever)}))
	}
	errs = append(errs, validateHostPort(fp("caAddress"), c.CAAddress, true)...)
	errs = append(errs, validateHostPort(fp("discoveryAddress"), c.DiscoveryAddress, false)...)
	if strings.TrimSpace(c.ClusterID) == "" {
		errs = append(errs, field.Required(fp("clusterID"), "istio-agent has required ISTIO_META_CLUSTER_ID since Istio 1.7"))
	}
	for _, f := range []struct {
		name, value string
	}{{"trustDomain", c.TrustDomain}, {"clusterDomain", c.ClusterDomain}} {
		if f.value == "" {
			errs = append(errs, field.Required(fp(f.name), ""))
		} else if msgs := validation.IsDNS1123Subdomain(f.value); len(msgs) > 0 {
			errs = append(errs, field.Invalid(fp(f.name), f.value, strings.Join(msgs, "; ")))
		}
	}
	if c.MeshID != "" && strings.ContainsAny(c.MeshID, " \t\n/") {
		errs = append(errs, field.Invalid(fp("meshID"), c.MeshID, "must not contain whitespace or '/'"))
	}
	if strings.TrimSpace(c.TokenAudience) == "" {
		errs = append(errs, field.Required(fp("tokenAudience"), "istiod only accepts tokens for its audience (istio-ca by default)"))
	}
	if msgs := validation.IsDNS1123Subdomain(c.RootCertConfigMap); len(msgs) > 0 {
		errs = append(errs, field.Invalid(fp("rootCertConfigMap"), c.RootCertConfigMap, strings.Join(msgs, "; ")))
	}
	if !path.IsAbs(c.CertsDir) || path.Clean(c.CertsDir) != strings.TrimSuffix(c.CertsDir, "/") || c.CertsDir == "/" {
		errs = append(errs, field.Invalid(fp("certsDir"), c.CertsDir, "must be a clean absolute directory path other than /"))
	}
	errs = append(errs, validateResources(fp("agentResources"), c.AgentResources)...)
	errs = append(errs, validateIstioMode(fp("istio"), c.Istio)...)
	spire, serrs := c.IdentityProvider.resolve(fp("identityProvider"))
	errs = append(errs, serrs...)
	if c.Flavor == FlavorSPIRE && spire == nil && len(serrs) == 0 {
		errs = append(errs, field.Invalid(fp("flavor"), c.Flavor, "the spire flavor needs identityProvider.spire with a socket source: "+spireSourceHint))
	}
	for i, ns := range c.ExcludedNamespaces {
		if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
			errs = append(errs, field.Invalid(fp("excludedNamespaces").Index(i), ns, strings.Join(msgs, "; ")))
		}
	}

	var profiles []compiledProfile
	seen := sets.New[string]()
	all := c.GatewayProfiles
	if !c.DisableBuiltinProfiles {
		all = append(append([]GatewayProfile(nil), c.GatewayProfiles...), BuiltinProfiles()...)
	}
	for i, p := range all {
		pathI := fp("gatewayProfiles").Index(i)
		if i >= len(c.GatewayProfiles) {
			pathI = field.NewPath("builtinProfiles").Index(i - len(c.GatewayProfiles))
		}
		if seen.Has(p.Name) {
			// A user profile may shadow a built-in of the same name.
			if i >= len(c.GatewayProfiles) {
				continue
			}
			errs = append(errs, field.Duplicate(pathI.Child("name"), p.Name))
			continue
		}
		seen.Insert(p.Name)
		cp, perrs := p.compile(pathI)
		errs = append(errs, perrs...)
		if len(perrs) == 0 {
			profiles = append(profiles, cp)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("invalid configuration: %w", errs.ToAggregate())
	}

	discovery := c.DiscoveryAddress
	if discovery == "" {
		discovery = c.CAAddress
	}
	meshID := c.MeshID
	if meshID == "" {
		meshID = c.TrustDomain
	}
	flavor := c.Flavor
	if flavor == "" {
		flavor = FlavorIstioProxy
	}
	return &Settings{
		flavor:            flavor,
		flavorSet:         c.Flavor != "",
		version:           version,
		istioImage:        istioImage,
		hub:               c.Hub,
		sdsAgentImage:     c.SDSAgentImage,
		pullPolicy:        c.ImagePullPolicy,
		caAddress:         c.CAAddress,
		discoveryAddress:  discovery,
		clusterID:         c.ClusterID,
		trustDomain:       c.TrustDomain,
		meshID:            meshID,
		clusterDomain:     c.ClusterDomain,
		tokenAudience:     c.TokenAudience,
		rootCertConfigMap: c.RootCertConfigMap,
		certsDir:          strings.TrimSuffix(c.CertsDir, "/"),
		native:            c.NativeSidecar,
		glooDropIn:        c.GlooDropIn,
		resources:         *c.AgentResources.DeepCopy(),
		resourcesKey:      resourcesKey(c.AgentResources),
		excluded:          sets.New(c.ExcludedNamespaces...),
		profiles:          profiles,
		proxyConfigJSON:   `{"discoveryAddress":"` + discovery + `"}`,
		cache:             &encodedCache{},
		hints:             &hints{},
		spire:             spire,
	}, nil
}

// Profiles are the gateway profiles in effect, in the order they are
// tried: GatewayProfiles, then the built-in ones (unless
// DisableBuiltinProfiles) that no profile of the same name shadows.
func (c Config) Profiles() []GatewayProfile {
	out := slices.Clone(c.GatewayProfiles)
	if c.DisableBuiltinProfiles {
		return out
	}
	for _, b := range BuiltinProfiles() {
		if !slices.ContainsFunc(c.GatewayProfiles, func(p GatewayProfile) bool { return p.Name == b.Name }) {
			out = append(out, b)
		}
	}
	return out
}

// MustResolve is Resolve for configurations known to be valid (tests, the
// built-in defaults); it panics on error.
func (c Config) MustResolve() *Settings {
	s, err := c.Resolve()
	if err != nil {
		panic(err)
	}
	return s
}

func proxyImage(hub, release string) string {
	return strings.TrimSuffix(hub, "/") + "/proxyv2:" + release
}

func isFlavor(f Flavor) bool {
	for _, x := range AllFlavors() {
		if f == x {
			return true
		}
	}
	return false
}

func flavorStrings() []string {
	all := AllFlavors()
	out := make([]string, len(all))
	for i, f := range all {
		out[i] = string(f)
	}
	return out
}

// GatewayProfile recognises one kind of gateway pod and names its Envoy
// container. Profiles are data: users add their own in the configuration.
type GatewayProfile struct {
	Name string `json:"name"`
	// Selector must match the pod's labels.
	Selector metav1.LabelSelector `json:"selector"`
	// Namespaces, when set, restricts the profile to these namespaces (for
	// gateways whose labels alone are too generic, e.g. app=envoy).
	Namespaces []string `json:"namespaces,omitempty"`
	// ContainerFromLabel names a pod label whose value is the Envoy
	// container's name (Gloo names the container after gateway-proxy-id).
	ContainerFromLabel string `json:"containerFromLabel,omitempty"`
	// Containers are candidate container names, tried in order.
	Containers []string `json:"containers,omitempty"`
	// Env is added to the gateway container (recorded for uninject).
	Env []corev1.EnvVar `json:"env,omitempty"`
	// RequireContainers, when set, also requires the pod to have a
	// container or init container of one of these names (for gateways whose
	// labels alone are too generic, e.g. Contour's app=envoy).
	RequireContainers []string `json:"requireContainers,omitempty"`

	// Flavors are the agent flavors this gateway can consume (see
	// docs/gateway-wiring.md); absent means any. A pod or configuration
	// asking for another flavor is skipped with a warning rather than
	// injected with an agent the gateway cannot use.
	Flavors []Flavor `json:"flavors,omitempty"`
	// DefaultFlavor is the flavor this gateway gets when neither its pod
	// nor the configuration's flavor setting chooses one; it must be one of
	// Flavors. Empty: the first of Flavors, or istio-proxy.
	DefaultFlavor Flavor `json:"defaultFlavor,omitempty"`
	// CertsDirEnv names an environment variable through which the gateway
	// container finds the istio-agent-files flavor's PEM files (Emissary:
	// AMBASSADOR_ISTIO_SECRET_DIR). With that flavor it is set to the
	// certificate directory, unless the container already sets it.
	CertsDirEnv string `json:"certsDirEnv,omitempty"`
	// OptInOnly injects the gateway only when its pod opts in explicitly
	// (sds-injector.io/inject: "true"), never through the namespace label
	// or the cluster-wide mode: for gateways that cannot consume the
	// identity without changes their owner must make first.
	OptInOnly bool `json:"optInOnly,omitempty"`
	// OptInReason says why the profile is opt-in only; it is part of the
	// warning a pod that did not opt in gets.
	OptInReason string `json:"optInReason,omitempty"`
}

type compiledProfile struct {
	GatewayProfile
	selector   labels.Selector
	namespaces sets.Set[string]
}

// defaultFlavor is the flavor of a pod of this profile that names none.
func (p *GatewayProfile) defaultFlavor() Flavor {
	switch {
	case p.DefaultFlavor != "":
		return p.DefaultFlavor
	case len(p.Flavors) > 0:
		return p.Flavors[0]
	}
	return ""
}

func (p GatewayProfile) compile(fp *field.Path) (compiledProfile, field.ErrorList) {
	var errs field.ErrorList
	if p.Name == "" {
		errs = append(errs, field.Required(fp.Child("name"), ""))
	}
	if len(p.Selector.MatchLabels) == 0 && len(p.Selector.MatchExpressions) == 0 {
		errs = append(errs, field.Required(fp.Child("selector"), "an empty selector would match every pod"))
	}
	sel, err := metav1.LabelSelectorAsSelector(&p.Selector)
	if err != nil {
		errs = append(errs, field.Invalid(fp.Child("selector"), p.Selector.String(), err.Error()))
	}
	for i, ns := range p.Namespaces {
		if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
			errs = append(errs, field.Invalid(fp.Child("namespaces").Index(i), ns, strings.Join(msgs, "; ")))
		}
	}
	if p.ContainerFromLabel == "" && len(p.Containers) == 0 {
		errs = append(errs, field.Required(fp.Child("containers"), "name the Envoy container or set containerFromLabel"))
	}
	if p.ContainerFromLabel != "" {
		if msgs := validation.IsQualifiedName(p.ContainerFromLabel); len(msgs) > 0 {
			errs = append(errs, field.Invalid(fp.Child("containerFromLabel"), p.ContainerFromLabel, strings.Join(msgs, "; ")))
		}
	}
	for i, c := range p.Containers {
		if msgs := validation.IsDNS1123Label(c); len(msgs) > 0 {
			errs = append(errs, field.Invalid(fp.Child("containers").Index(i), c, strings.Join(msgs, "; ")))
		}
	}
	for i, e := range p.Env {
		if msgs := validation.IsEnvVarName(e.Name); len(msgs) > 0 {
			errs = append(errs, field.Invalid(fp.Child("env").Index(i).Child("name"), e.Name, strings.Join(msgs, "; ")))
		}
	}
	for i, c := range p.RequireContainers {
		if msgs := validation.IsDNS1123Label(c); len(msgs) > 0 {
			errs = append(errs, field.Invalid(fp.Child("requireContainers").Index(i), c, strings.Join(msgs, "; ")))
		}
	}
	errs = append(errs, p.validateFlavors(fp)...)
	if p.CertsDirEnv != "" {
		if msgs := validation.IsEnvVarName(p.CertsDirEnv); len(msgs) > 0 {
			errs = append(errs, field.Invalid(fp.Child("certsDirEnv"), p.CertsDirEnv, strings.Join(msgs, "; ")))
		}
	}
	if p.OptInReason != "" && !p.OptInOnly {
		errs = append(errs, field.Invalid(fp.Child("optInReason"), p.OptInReason, "only meaningful with optInOnly: true"))
	}
	if len(errs) > 0 {
		return compiledProfile{}, errs
	}
	return compiledProfile{GatewayProfile: p, selector: sel, namespaces: sets.New(p.Namespaces...)}, nil
}

// validateFlavors checks the profile's flavor list and default. An empty
// (but present) list names no flavor the gateway can consume: such a profile
// could never inject anything.
func (p GatewayProfile) validateFlavors(fp *field.Path) field.ErrorList {
	var errs field.ErrorList
	name := p.Name
	if name == "" {
		name = "<unnamed>"
	}
	if p.Flavors != nil && len(p.Flavors) == 0 {
		errs = append(errs, field.Required(fp.Child("flavors"), fmt.Sprintf(
			"gateway profile %q names no flavor its gateway can consume: list at least one of %v, or omit flavors to allow any", name, flavorStrings())))
	}
	seen := map[Flavor]bool{}
	for i, f := range p.Flavors {
		switch {
		case !isFlavor(f):
			errs = append(errs, field.NotSupported(fp.Child("flavors").Index(i), f, flavorStrings()))
		case seen[f]:
			errs = append(errs, field.Duplicate(fp.Child("flavors").Index(i), f))
		}
		seen[f] = true
	}
	if p.DefaultFlavor != "" {
		switch {
		case !isFlavor(p.DefaultFlavor):
			errs = append(errs, field.NotSupported(fp.Child("defaultFlavor"), p.DefaultFlavor, flavorStrings()))
		case len(p.Flavors) > 0 && !seen[p.DefaultFlavor]:
			errs = append(errs, field.Invalid(fp.Child("defaultFlavor"), p.DefaultFlavor, fmt.Sprintf(
				"gateway profile %q cannot use its own default: it is not in the profile's flavors %v", name, p.Flavors)))
		}
	}
	return errs
}

// allows reports whether the profile's gateway can consume flavor f.
func (p *GatewayProfile) allows(f Flavor) bool {
	return len(p.Flavors) == 0 || slices.Contains(p.Flavors, f)
}
