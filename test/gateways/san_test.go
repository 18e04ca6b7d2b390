package gateways

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// sanProblems walks one YAML document of the guide and returns every
// mesh-upstream TLS setting in it that does not pin the destination's
// SPIFFE ID: a Gloo Upstream sslConfig without verifySubjectAltName, a
// BackendTLSPolicy without a URI subjectAltName, and an Envoy TLS context
// presenting the mesh certificate without a URI SAN matcher.
func sanProblems(v any) []string {
	var out []string
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case []any:
			for i, e := range x {
				walk(fmt.Sprintf("%s[%d]", path, i), e)
			}
		case map[string]any:
			if x["kind"] == "Upstream" {
				spec, _ := x["spec"].(map[string]any)
				if ssl, ok := spec["sslConfig"].(map[string]any); ok && !pinsSPIFFE(ssl["verifySubjectAltName"]) {
					out = append(out, path+": Upstream sslConfig without a spiffe:// verifySubjectAltName")
				}
			}
			if x["kind"] == "BackendTLSPolicy" {
				spec, _ := x["spec"].(map[string]any)
				val, _ := spec["validation"].(map[string]any)
				var uris []any
				sans, _ := val["subjectAltNames"].([]any)
				for _, s := range sans {
					if m, ok := s.(map[string]any); ok && m["type"] == "URI" {
						uris = append(uris, m["uri"])
					}
				}
				if !pinsSPIFFE(uris) {
					out = append(out, path+": BackendTLSPolicy without a spiffe:// URI subjectAltName")
				}
			}
			if ctx, ok := x["common_tls_context"].(map[string]any); ok {
				if _, mesh := ctx["tls_certificate_sds_secret_configs"]; mesh {
					cvc, _ := ctx["combined_validation_context"].(map[string]any)
					dvc, _ := cvc["default_validation_context"].(map[string]any)
					ms, _ := dvc["match_typed_subject_alt_names"].([]any)
					var uris []any
					for _, m := range ms {
						if mm, ok := m.(map[string]any); ok && mm["san_type"] == "URI" {
							if matcher, ok := mm["matcher"].(map[string]any); ok {
								uris = append(uris, matcher["exact"])
							}
						}
					}
					if !pinsSPIFFE(uris) {
						out = append(out, path+": TLS context presenting the mesh certificate without a URI SAN match")
					}
				}
			}
			for k, e := range x {
				walk(path+"."+k, e)
			}
		}
	}
	walk("", v)
	return out
}

func pinsSPIFFE(v any) bool {
	l, _ := v.([]any)
	if len(l) == 0 {
		return false
	}
	for _, e := range l {
		if s, ok := e.(string); !ok || !strings.HasPrefix(s, "spiffe://") {
			return false
		}
	}
	return true
}

// TestEveryRecipePinsTheUpstreamSAN: kgateway's and Gloo's Istio auto-mTLS
// accept any mesh identity; every recipe of the guide pins one instead.
// Emissary's TLSContext has no field for it (crd_test.go checks its CRD);
// the guide must say so.
func TestEveryRecipePinsTheUpstreamSAN(t *testing.T) {
	checked := 0
	for _, b := range guideBlocks(t) {
		for i, d := range strings.Split(b.text, "\n---\n") {
			var v any
			if err := yaml.Unmarshal([]byte(d), &v); err != nil {
				t.Fatalf("%s:%d: %v", guide, b.line, err)
			}
			if strings.Contains(d, "sslConfig") || strings.Contains(d, "kind: BackendTLSPolicy") || strings.Contains(d, "tls_certificate_sds_secret_configs") {
				checked++
			}
			for _, p := range sanProblems(v) {
				t.Errorf("%s:%d (document %d)%s", guide, b.line, i+1, p)
			}
		}
	}
	if checked < 6 {
		t.Errorf("checked %d mesh TLS settings in the guide, want at least 6 (2 Upstreams, a BackendTLSPolicy, 3 Envoy TLS contexts)", checked)
	}
	data, err := os.ReadFile(guide)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	start := strings.Index(doc, "\n## Emissary-ingress\n")
	if start < 0 {
		t.Fatal("the guide has no Emissary-ingress section")
	}
	emissary := doc[start+1:]
	if end := strings.Index(emissary, "\n## "); end >= 0 {
		emissary = emissary[:end]
	}
	if !strings.Contains(emissary, "cannot pin the destination's SPIFFE ID") {
		t.Errorf("the guide's Emissary-ingress section does not say that a TLSContext cannot pin the destination's SPIFFE ID")
	}

	// Negative controls: the walker finds a missing pin of each kind.
	for _, bad := range []string{
		"kind: Upstream\nspec:\n  sslConfig:\n    sds: {clusterName: sds-grpc}\n",
		"kind: BackendTLSPolicy\nspec:\n  validation:\n    hostname: x\n    subjectAltNames: [{type: Hostname, hostname: x}]\n",
		"common_tls_context:\n  tls_certificate_sds_secret_configs: [{name: default}]\n  combined_validation_context:\n    default_validation_context: {}\n",
	} {
		var v any
		if err := yaml.Unmarshal([]byte(bad), &v); err != nil {
			t.Fatal(err)
		}
		if len(sanProblems(v)) != 1 {
			t.Errorf("the SAN check misses the unpinned %q", bad)
		}
	}
}
