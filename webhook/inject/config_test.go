package inject

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

func TestResolveDefaults(t *testing.T) {
	s, err := DefaultConfig().Resolve()
	if err != nil {
		t.Fatalf("built-in defaults must be valid: %v", err)
	}
	if s.istioImage != "docker.io/istio/proxyv2:"+DefaultIstioVersion {
		t.Errorf("image = %q", s.istioImage)
	}
	if s.discoveryAddress != DefaultCAAddress || s.meshID != DefaultTrustDomain {
		t.Errorf("discovery %q mesh %q: want the CA address and trust domain as defaults", s.discoveryAddress, s.meshID)
	}
	if s.native {
		t.Error("classic placement must be the default")
	}
}

func TestResolveErrors(t *testing.T) {
	cases := map[string]struct {
		mutate func(*Config)
		want   []string // substrings of the error
	}{
		"unknown flavor":          {func(c *Config) { c.Flavor = "envoy" }, []string{"flavor", `"envoy"`, "istio-agent-files"}},
		"version too old":         {func(c *Config) { c.IstioVersion = "1.4.6" }, []string{"istioVersion", "Istio 1.5 and later"}},
		"version garbage":         {func(c *Config) { c.IstioVersion = "latest" }, []string{"istioVersion", "MAJOR.MINOR"}},
		"minor without image":     {func(c *Config) { c.IstioVersion = "1.22" }, []string{"names no patch release", "agentImage"}},
		"ca address without port": {func(c *Config) { c.CAAddress = "istiod.istio-system.svc" }, []string{"caAddress", "host:port"}},
		"ca address bad port":     {func(c *Config) { c.CAAddress = "istiod:99999" }, []string{"caAddress", "between 1 and 65535"}},
		"empty cluster id":        {func(c *Config) { c.ClusterID = "" }, []string{"clusterID", "Required"}},
		"bad trust domain":        {func(c *Config) { c.TrustDomain = "Bad_Domain" }, []string{"trustDomain"}},
		"empty audience":          {func(c *Config) { c.TokenAudience = " " }, []string{"tokenAudience"}},
		"bad configmap":           {func(c *Config) { c.RootCertConfigMap = "Root Cert" }, []string{"rootCertConfigMap"}},
		"relative certs dir":      {func(c *Config) { c.CertsDir = "etc/certs" }, []string{"certsDir"}},
		"bad pull policy":         {func(c *Config) { c.ImagePullPolicy = "Sometimes" }, []string{"imagePullPolicy"}},
		"request above limit": {func(c *Config) {
			c.AgentResources.Requests["memory"] = c.AgentResources.Limits["memory"]
			c.AgentResources.Limits["memory"] = c.AgentResources.Requests["cpu"]
		}, []string{"agentResources.requests[memory]", "less than or equal"}},
		"profile without selector": {func(c *Config) {
			c.GatewayProfiles = []GatewayProfile{{Name: "x", Containers: []string{"envoy"}}}
		}, []string{"gatewayProfiles[0].selector", "every pod"}},
		"profile without container": {func(c *Config) {
			c.GatewayProfiles = []GatewayProfile{{Name: "x", Selector: labelSelector("a", "b")}}
		}, []string{"gatewayProfiles[0].containers"}},
		"duplicate profile": {func(c *Config) {
			p := GatewayProfile{Name: "x", Selector: labelSelector("a", "b"), Containers: []string{"envoy"}}
			c.GatewayProfiles = []GatewayProfile{p, p}
		}, []string{"gatewayProfiles[1].name", "Duplicate"}},
		"several problems at once": {func(c *Config) { c.Flavor = "x"; c.ClusterID = "" }, []string{"flavor", "clusterID"}},
		"spire flavor without provider": {func(c *Config) { c.Flavor = FlavorSPIRE }, []string{
			"flavor", `"spire"`, "identityProvider.spire.csiDriver", "identityProvider.spire.hostPath"}},
		"spire without socket source": {func(c *Config) { c.IdentityProvider.SPIRE = &SPIREConfig{} }, []string{
			"identityProvider.spire", "Required", "identityProvider.spire.csiDriver", "identityProvider.spire.hostPath"}},
		"spire flavor without socket source": {func(c *Config) { c.Flavor, c.IdentityProvider.SPIRE = FlavorSPIRE, &SPIREConfig{} }, []string{
			"identityProvider.spire", "identityProvider.spire.csiDriver", "identityProvider.spire.hostPath"}},
		"spire both socket sources": {func(c *Config) {
			c.IdentityProvider.SPIRE = &SPIREConfig{CSIDriver: DefaultSPIRECSIDriver, HostPath: "/run/spire/sockets"}
		}, []string{"identityProvider.spire", "only one socket source"}},
		"spire relative host path": {func(c *Config) { c.IdentityProvider.SPIRE = &SPIREConfig{HostPath: "run/spire"} }, []string{
			"identityProvider.spire.hostPath", "clean absolute"}},
		"spire bad csi driver": {func(c *Config) { c.IdentityProvider.SPIRE = &SPIREConfig{CSIDriver: "CSI Spiffe"} }, []string{
			"identityProvider.spire.csiDriver"}},
		"spire short timeout": {func(c *Config) {
			c.IdentityProvider.SPIRE = &SPIREConfig{CSIDriver: DefaultSPIRECSIDriver, StartupTimeout: &metav1.Duration{Duration: 500 * time.Millisecond}}
		}, []string{"identityProvider.spire.startupTimeout", "at least 1s"}},
		"profile names no flavor": {func(c *Config) {
			c.GatewayProfiles = []GatewayProfile{{Name: "edge", Selector: labelSelector("a", "b"), Containers: []string{"envoy"}, Flavors: []Flavor{}}}
		}, []string{"gatewayProfiles[0].flavors", `"edge"`, "names no flavor"}},
		"profile unknown flavor": {func(c *Config) {
			c.GatewayProfiles = []GatewayProfile{{Name: "edge", Selector: labelSelector("a", "b"), Containers: []string{"envoy"}, Flavors: []Flavor{"files"}}}
		}, []string{"gatewayProfiles[0].flavors[0]", `"files"`, "istio-agent-files"}},
		"profile duplicate flavor": {func(c *Config) {
			c.GatewayProfiles = []GatewayProfile{{Name: "edge", Selector: labelSelector("a", "b"), Containers: []string{"envoy"}, Flavors: []Flavor{FlavorSDSAgent, FlavorSDSAgent}}}
		}, []string{"gatewayProfiles[0].flavors[1]", "Duplicate"}},
		"profile default not in flavors": {func(c *Config) {
			c.GatewayProfiles = []GatewayProfile{{Name: "edge", Selector: labelSelector("a", "b"), Containers: []string{"envoy"},
				Flavors: []Flavor{FlavorSDSAgent}, DefaultFlavor: FlavorIstioProxy}}
		}, []string{"gatewayProfiles[0].defaultFlavor", `"edge"`, "not in the profile's flavors"}},
		"profile unknown default": {func(c *Config) {
			c.GatewayProfiles = []GatewayProfile{{Name: "edge", Selector: labelSelector("a", "b"), Containers: []string{"envoy"}, DefaultFlavor: "socket"}}
		}, []string{"gatewayProfiles[0].defaultFlavor", `"socket"`}},
		"profile bad certs dir env": {func(c *Config) {
			c.GatewayProfiles = []GatewayProfile{{Name: "edge", Selector: labelSelector("a", "b"), Containers: []string{"envoy"}, CertsDirEnv: "1DIR"}}
		}, []string{"gatewayProfiles[0].certsDirEnv"}},
		"profile opt-in reason without opt-in": {func(c *Config) {
			c.GatewayProfiles = []GatewayProfile{{Name: "edge", Selector: labelSelector("a", "b"), Containers: []string{"envoy"}, OptInReason: "because"}}
		}, []string{"gatewayProfiles[0].optInReason", "optInOnly"}},
		"profile bad required container": {func(c *Config) {
			c.GatewayProfiles = []GatewayProfile{{Name: "edge", Selector: labelSelector("a", "b"), Containers: []string{"envoy"}, RequireContainers: []string{"Shutdown_Manager"}}}
		}, []string{"gatewayProfiles[0].requireContainers[0]"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := DefaultConfig()
			c.AgentResources = *c.AgentResources.DeepCopy()
			tc.mutate(&c)
			_, err := c.Resolve()
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestUserProfileShadowsBuiltin(t *testing.T) {
	c := DefaultConfig()
	c.GatewayProfiles = []GatewayProfile{{Name: "gloo-edge", Selector: labelSelector("gloo", "gateway-proxy"), Containers: []string{"envoy"}}}
	s, err := c.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range s.profiles {
		if p.Name == "gloo-edge" {
			n++
			if p.Containers[0] != "envoy" {
				t.Errorf("built-in profile won over the user's")
			}
		}
	}
	if n != 1 {
		t.Errorf("%d profiles named gloo-edge, want 1", n)
	}
}

func TestParseConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte("flavor: sds-agent\ntrustDomain: example.org\nexcludedNamespaces: [infra]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Flavor != FlavorSDSAgent || cfg.TrustDomain != "example.org" || cfg.CAAddress != DefaultCAAddress {
		t.Errorf("file values must lie over the defaults: %+v", cfg)
	}
	if len(cfg.ExcludedNamespaces) != 1 {
		t.Errorf("lists replace the defaults: %v", cfg.ExcludedNamespaces)
	}
	if _, err := ParseConfig([]byte("flavour: sds-agent\n")); err == nil || !strings.Contains(err.Error(), "flavour") {
		t.Errorf("a misspelt field must be an error naming it, got %v", err)
	}
}

func TestParseIstioVersion(t *testing.T) {
	cases := map[string]struct {
		in      string
		profile string
		release string
		err     bool
	}{
		"first supported":    {in: "1.5", profile: "1.5-1.13"},
		"last legacy":        {in: "1.13.9", profile: "1.5-1.13", release: "1.13.9"},
		"socket move":        {in: "1.14.0", profile: "1.14-1.21", release: "1.14.0"},
		"last with jwt":      {in: "1.21", profile: "1.14-1.21"},
		"jwt dropped":        {in: "1.22.0", profile: "1.22+", release: "1.22.0"},
		"newer than known":   {in: "1.40.1", profile: "1.22+", release: "1.40.1"},
		"v prefix and rc":    {in: "v1.31.0-rc.0", profile: "1.22+", release: "1.31.0-rc.0"},
		"too old":            {in: "1.4.6", err: true},
		"istio 2":            {in: "2.0.0", err: true},
		"leading zero":       {in: "1.022", err: true},
		"one component":      {in: "1", err: true},
		"four components":    {in: "1.22.0.1", err: true},
		"empty":              {in: "", err: true},
		"negative-ish minor": {in: "1.-3", err: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			v, err := ParseIstioVersion(tc.in)
			if tc.err {
				if err == nil {
					t.Fatalf("want an error for %q", tc.in)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if v.Profile().Name != tc.profile || v.Release != tc.release {
				t.Errorf("got profile %s release %q", v.Profile().Name, v.Release)
			}
		})
	}
}

// The annotated example shipped in deploy/ must stay valid and must match
// the built-in defaults apart from its example profile.
func TestShippedExampleConfig(t *testing.T) {
	data, err := os.ReadFile("../../deploy/config/sds-injector.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Resolve(); err != nil {
		t.Fatal(err)
	}
	if len(cfg.GatewayProfiles) != 1 {
		t.Fatalf("example profile missing: %+v", cfg.GatewayProfiles)
	}
	if l, err := LoadConfig(data); err != nil || len(l.Warnings) != 0 {
		t.Errorf("the example must carry apiVersion %s and kind %s: %v %q", ConfigAPIVersion, ConfigKind, err, l.Warnings)
	}
	cfg.GatewayProfiles = nil
	if got, want := mustJSON(t, cfg), mustJSON(t, DefaultConfig()); string(got) != string(want) {
		t.Errorf("the example no longer shows the defaults:\nexample:  %s\ndefaults: %s", got, want)
	}
}

// An explicitly empty flavor list in YAML is an error, an absent one means
// any flavor: the two must not be confused on the way in.
func TestParseProfileFlavors(t *testing.T) {
	for name, tc := range map[string]struct {
		yaml    string
		wantErr string
		allows  []Flavor
		denies  []Flavor
	}{
		"absent means any": {yaml: "gatewayProfiles:\n- name: edge\n  selector: {matchLabels: {a: b}}\n  containers: [envoy]\n",
			allows: Flavors},
		"empty list names none": {yaml: "gatewayProfiles:\n- name: edge\n  selector: {matchLabels: {a: b}}\n  containers: [envoy]\n  flavors: []\n",
			wantErr: `gateway profile "edge" names no flavor`},
		"socket only": {yaml: "gatewayProfiles:\n- name: edge\n  selector: {matchLabels: {a: b}}\n  containers: [envoy]\n  flavors: [sds-agent, istio-proxy]\n",
			allows: []Flavor{FlavorSDSAgent, FlavorIstioProxy}, denies: []Flavor{FlavorIstioAgentFiles}},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			s, err := cfg.Resolve()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			p := &s.profiles[0].GatewayProfile
			if p.Name != "edge" {
				t.Fatalf("first profile %q, want the user's", p.Name)
			}
			for _, f := range tc.allows {
				if !p.allows(f) {
					t.Errorf("profile does not allow %s", f)
				}
			}
			for _, f := range tc.denies {
				if p.allows(f) {
					t.Errorf("profile allows %s", f)
				}
			}
		})
	}
}

// Every built-in profile states what its gateway can consume and passes the
// same validation as a user's.
func TestBuiltinProfileFlavors(t *testing.T) {
	want := map[string]struct {
		flavors []Flavor
		def     Flavor
		optIn   bool
	}{
		"gloo-edge":          {socketFlavors, FlavorIstioProxy, false},
		"kgateway":           {socketFlavors, FlavorIstioProxy, false},
		"gloo-gateway":       {socketFlavors, FlavorIstioProxy, false},
		"envoy-gateway":      {socketFlavors, FlavorIstioProxy, false},
		"contour":            {nil, "", true},
		"contour-quickstart": {nil, "", true},
		"emissary-ingress":   {[]Flavor{FlavorIstioAgentFiles}, FlavorIstioAgentFiles, false},
	}
	got := BuiltinProfiles()
	if len(got) != len(want) {
		t.Fatalf("%d built-in profiles, this test knows %d", len(got), len(want))
	}
	for i, p := range got {
		w, ok := want[p.Name]
		if !ok {
			t.Errorf("built-in profile %q is not described here", p.Name)
			continue
		}
		if !slices.Equal(p.Flavors, w.flavors) || p.defaultFlavor() != w.def || p.OptInOnly != w.optIn {
			t.Errorf("%s: flavors %v default %q optIn %v, want %v %q %v", p.Name, p.Flavors, p.defaultFlavor(), p.OptInOnly, w.flavors, w.def, w.optIn)
		}
		if _, errs := p.compile(field.NewPath("builtinProfiles").Index(i)); len(errs) > 0 {
			t.Errorf("%s: %v", p.Name, errs)
		}
	}
}

func TestProfilesInEffect(t *testing.T) {
	names := func(ps []GatewayProfile) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return out
	}
	builtin := names(BuiltinProfiles())
	c := DefaultConfig()
	if got := names(c.Profiles()); !slices.Equal(got, builtin) {
		t.Errorf("defaults: %v, want the built-in %v", got, builtin)
	}
	c.GatewayProfiles = []GatewayProfile{{Name: "team-edge"}, {Name: builtin[0]}}
	want := append([]string{"team-edge", builtin[0]}, builtin[1:]...)
	if got := names(c.Profiles()); !slices.Equal(got, want) {
		t.Errorf("a shadowed built-in: %v, want %v", got, want)
	}
	c.DisableBuiltinProfiles = true
	if got := names(c.Profiles()); !slices.Equal(got, []string{"team-edge", builtin[0]}) {
		t.Errorf("built-ins disabled: %v", got)
	}
}
