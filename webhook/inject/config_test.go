package inject

import (
	"os"
	"strings"
	"testing"
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
	cfg.GatewayProfiles = nil
	if got, want := mustJSON(t, cfg), mustJSON(t, DefaultConfig()); string(got) != string(want) {
		t.Errorf("the example no longer shows the defaults:\nexample:  %s\ndefaults: %s", got, want)
	}
}
