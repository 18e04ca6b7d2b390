package inject

import (
	"slices"
	"strings"
	"testing"
)

// What each Istio line supports: the files flavor needs DISABLE_ENVOY,
// which Istio 1.11 added.
func TestSupportsFlavor(t *testing.T) {
	cases := map[string]struct {
		version string
		flavor  Flavor
		wantErr bool
	}{
		"files on 1.5":           {"1.5.10", FlavorIstioAgentFiles, true},
		"files on 1.10":          {"1.10.6", FlavorIstioAgentFiles, true},
		"files on 1.11 (added)":  {"1.11.0", FlavorIstioAgentFiles, false},
		"files on 1.13":          {"1.13.9", FlavorIstioAgentFiles, false},
		"files on 1.30":          {"1.30.3", FlavorIstioAgentFiles, false},
		"files on minor only":    {"1.9", FlavorIstioAgentFiles, true},
		"istio-proxy on 1.5":     {"1.5.10", FlavorIstioProxy, false},
		"istio-proxy on 1.30":    {"1.30.3", FlavorIstioProxy, false},
		"sds-agent on 1.5":       {"1.5.10", FlavorSDSAgent, false},
		"sds-agent on newer too": {"1.40.0", FlavorSDSAgent, false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			v, err := ParseIstioVersion(tc.version)
			if err != nil {
				t.Fatal(err)
			}
			err = v.SupportsFlavor(tc.flavor)
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("want supported, got %v", err)
				}
				if !slices.Contains(v.SupportedFlavors(), tc.flavor) {
					t.Errorf("SupportedFlavors() = %v lacks %s", v.SupportedFlavors(), tc.flavor)
				}
				return
			}
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range []string{string(tc.flavor), "Istio 1.11", "DISABLE_ENVOY", tc.version, "istio-proxy", "sds-agent"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if slices.Contains(v.SupportedFlavors(), tc.flavor) {
				t.Errorf("SupportedFlavors() = %v lists %s", v.SupportedFlavors(), tc.flavor)
			}
		})
	}
}

// The configuration is refused at Resolve time; the same flavor with a
// release that has DISABLE_ENVOY is accepted.
func TestResolveFlavorSupport(t *testing.T) {
	cases := map[string]struct {
		flavor  Flavor
		version string
		want    []string // substrings of the error; none: valid
	}{
		"files before 1.11":      {FlavorIstioAgentFiles, "1.10.6", []string{"flavor", "istioVersion 1.10.6", "needs Istio 1.11 or later", "DISABLE_ENVOY"}},
		"files on 1.5":           {FlavorIstioAgentFiles, "1.5.10", []string{"flavor", "1.5.10", "Istio 1.11 added DISABLE_ENVOY"}},
		"files on 1.11":          {FlavorIstioAgentFiles, "1.11.0", nil},
		"istio-proxy on 1.5":     {FlavorIstioProxy, "1.5.10", nil},
		"sds-agent on 1.5":       {FlavorSDSAgent, "1.5.10", nil},
		"bad version: one error": {FlavorIstioAgentFiles, "1.4.0", []string{"istioVersion", "Istio 1.5 and later"}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := DefaultConfig()
			c.Flavor, c.IstioVersion = tc.flavor, tc.version
			s, err := c.Resolve()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if s.Flavor() != tc.flavor || s.IstioVersion().String() != tc.version {
					t.Errorf("resolved to %s / %s", s.Flavor(), s.IstioVersion())
				}
				return
			}
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Count(err.Error(), "DISABLE_ENVOY") > 1 {
				t.Errorf("the flavor problem is reported more than once: %q", err)
			}
		})
	}
}

// Per-pod overrides that combine into an unsupported pair are skipped
// with a warning naming the annotations, never half-injected.
func TestOverrideFlavorSupport(t *testing.T) {
	// Emissary consumes only the files flavor (its profile's default);
	// Gloo only the socket flavors.
	const emissary, gloo = matrixFilesSource, examplesDir + "/gloo-gateway-proxy.yaml"
	cases := map[string]struct {
		pod         string
		config      func(*Config)
		annotations map[string]string
		want        []string // substrings of the warning; none: injected
	}{
		"profile default flavor on an old configured Istio": {
			pod:    emissary,
			config: func(c *Config) { c.IstioVersion = "1.9.9" },
			want:   []string{`gateway profile "emissary-ingress"'s default flavor istio-agent-files with the configuration's istioVersion 1.9.9`, "needs Istio 1.11 or later", "DISABLE_ENVOY"},
		},
		"flavor annotation on an old configured Istio": {
			pod:         emissary,
			config:      func(c *Config) { c.IstioVersion = "1.9.9" },
			annotations: map[string]string{AnnotationFlavor: "istio-agent-files"},
			want:        []string{`annotation sds-injector.io/flavor="istio-agent-files" with the configuration's istioVersion 1.9.9`, "needs Istio 1.11 or later", "DISABLE_ENVOY"},
		},
		"version annotation below 1.11 with the files flavor configured": {
			pod:         emissary,
			config:      func(c *Config) { c.Flavor = FlavorIstioAgentFiles },
			annotations: map[string]string{AnnotationIstioVersion: "1.10.6"},
			want:        []string{`the configuration's flavor istio-agent-files with annotation sds-injector.io/istio-version="1.10.6"`, "needs Istio 1.11 or later", "DISABLE_ENVOY"},
		},
		"both annotations": {
			pod:         emissary,
			annotations: map[string]string{AnnotationFlavor: "istio-agent-files", AnnotationIstioVersion: "1.5.10"},
			want:        []string{`annotation sds-injector.io/flavor="istio-agent-files" with annotation sds-injector.io/istio-version="1.5.10"`, "Istio 1.11 added DISABLE_ENVOY"},
		},
		"files flavor annotation on 1.11": {
			pod:         emissary,
			annotations: map[string]string{AnnotationFlavor: "istio-agent-files", AnnotationIstioVersion: "1.11.8"},
		},
		"old version annotation with istio-proxy": {
			pod:         gloo,
			annotations: map[string]string{AnnotationIstioVersion: "1.5.10"},
		},
		"old version annotation with sds-agent": {
			pod:         gloo,
			annotations: map[string]string{AnnotationFlavor: "sds-agent", AnnotationIstioVersion: "1.5.10"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := DefaultConfig()
			if tc.config != nil {
				tc.config(&c)
			}
			s := c.MustResolve()
			pod := readPod(t, tc.pod)
			if pod.Annotations == nil {
				pod.Annotations = map[string]string{}
			}
			for k, v := range tc.annotations {
				pod.Annotations[k] = v
			}
			res := Inject(pod, s)
			if len(tc.want) == 0 {
				if res.Decision.Outcome != OutcomeInjected {
					t.Fatalf("want injected, got %+v", res.Decision)
				}
				return
			}
			d := res.Decision
			if d.Outcome != OutcomeSkipped || d.Reason != ReasonInvalidOverride || !d.Warn {
				t.Fatalf("want a warned invalid-override skip, got %+v", d)
			}
			if res.Pod != nil && len(res.Patch) > 0 {
				t.Errorf("a skipped pod must not be patched")
			}
			for _, w := range tc.want {
				if !strings.Contains(d.Message, w) {
					t.Errorf("message %q does not mention %q", d.Message, w)
				}
			}
		})
	}
}
