package inject

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestMayBeGateway(t *testing.T) {
	s := DefaultConfig().MustResolve()
	custom := DefaultConfig()
	custom.GatewayProfiles = append(custom.GatewayProfiles, GatewayProfile{Name: "keyed", Containers: []string{"envoy"},
		Selector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "edge.example/role", Operator: metav1.LabelSelectorOpExists}}}})
	keyed := custom.MustResolve()
	cases := map[string]struct {
		settings *Settings
		raw      string
		want     bool
	}{
		"a Gloo label pair":                    {s, `{"metadata":{"labels":{"app":"web","gloo":"gateway-proxy"}}}`, true},
		"the key with another value":           {s, `{"metadata":{"labels":{"gloo":"gateway"}}}`, false},
		"the value under another key":          {s, `{"metadata":{"labels":{"role":"gateway-proxy"}}}`, false},
		"the pair split across members":        {s, `{"gloo":1,"x":"gateway-proxy"}`, false},
		"our prefix as a key":                  {s, `{"metadata":{"annotations":{"sds-injector.io/inject":"true"}}}`, true},
		"a plain app":                          {s, `{"metadata":{"name":"web","labels":{"app":"web"}},"spec":{"containers":[{"name":"nginx"}]}}`, false},
		"a name at the very end":               {s, `"gloo":`, false},
		"empty":                                {s, ``, false},
		"an Exists expression: any value":      {keyed, `{"labels":{"edge.example/role":"anything"}}`, true},
		"an Exists expression: non-string too": {keyed, `{"edge.example/role":{}}`, true},
		"an Exists key only as a value":        {keyed, `{"labels":{"x":"edge.example/role"}}`, false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := tc.settings.mayBeGateway([]byte(tc.raw)); got != tc.want {
				t.Errorf("mayBeGateway(%s) = %v, want %v", tc.raw, got, tc.want)
			}
		})
	}
}

func BenchmarkMayBeGatewayPlainApp(b *testing.B) {
	s := DefaultConfig().MustResolve()
	raw := mustJSON(b, readPod(b, examplesDir+"/plain-app.yaml"))
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if s.mayBeGateway(raw) {
			b.Fatal("plain app reported as a candidate")
		}
	}
}
