package inject

import (
	"fmt"
	"os"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"sigs.k8s.io/yaml"
)

const spireGuide = "../../docs/spire.md"

// TestSPIREDocs decodes every yaml block of docs/spire.md by the marker on
// its first line: "# config:" blocks must resolve with this engine (and
// enable spire), "# envoy: <Message>" blocks must decode into that
// go-control-plane message and validate, "# kubernetes: ClusterSPIFFEID"
// blocks must be ClusterSPIFFEIDs (test/spire creates them through a real
// apiserver with the CRD). The socket path and secret names must be the
// engine's. A block without a known marker fails: nothing goes unchecked.
func TestSPIREDocs(t *testing.T) {
	data, err := os.ReadFile(spireGuide)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	counts := map[string]int{}
	for _, loc := range fence.FindAllStringSubmatchIndex(doc, -1) {
		indent := doc[loc[2]:loc[3]]
		rest := doc[loc[1]:]
		end := strings.Index(rest, "\n"+indent+"```")
		line := strings.Count(doc[:loc[0]], "\n") + 1
		if end < 0 {
			t.Fatalf("line %d: unterminated yaml block", line)
		}
		block := rest[:end]
		first, _, _ := strings.Cut(block, "\n")
		where := fmt.Sprintf("%s:%d", spireGuide, line)
		var v map[string]any
		if err := yaml.Unmarshal([]byte(block), &v); err != nil {
			t.Fatalf("%s: not YAML: %v", where, err)
		}
		switch marker := strings.TrimSpace(strings.TrimPrefix(first, "#")); {
		case strings.HasPrefix(marker, "config:"):
			cfg, err := ParseConfig([]byte(block))
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			s, err := cfg.Resolve()
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if !s.SPIREEnabled() {
				t.Errorf("%s: the example does not enable spire", where)
			}
			counts["config"]++
		case strings.HasPrefix(marker, "envoy: Secret"):
			var sec tlsv3.Secret
			decode(t, where, v, &sec)
			cvc := sec.GetValidationContext().GetCustomValidatorConfig()
			var spiffe tlsv3.SPIFFECertValidatorConfig
			if sec.GetName() != SecretRootCA || cvc.GetName() != "envoy.tls.cert_validator.spiffe" || cvc.GetTypedConfig().UnmarshalTo(&spiffe) != nil {
				t.Errorf("%s: not SPIRE's ROOTCA shape: %v", where, &sec)
			}
			counts["secret"]++
		case strings.HasPrefix(marker, "envoy: Bootstrap"):
			var b bootstrapv3.Bootstrap
			decode(t, where, v, &b)
			if b.GetNode().GetMetadata().GetFields()["disable_spiffe_cert_validation"].GetStringValue() != "true" {
				t.Errorf("%s: no disable_spiffe_cert_validation node metadata", where)
			}
			pipes := 0
			for _, c := range b.GetStaticResources().GetClusters() {
				for _, e := range c.GetLoadAssignment().GetEndpoints() {
					for _, lb := range e.GetLbEndpoints() {
						if p := lb.GetEndpoint().GetAddress().GetPipe(); p != nil {
							pipes++
							if p.GetPath() != SPIRESocketPath {
								t.Errorf("%s: SDS cluster on %s, the spire flavor mounts %s", where, p.GetPath(), SPIRESocketPath)
							}
						}
					}
				}
			}
			if pipes != 1 {
				t.Errorf("%s: %d pipe endpoints, want the SDS cluster's one", where, pipes)
			}
			counts["bootstrap"]++
		case strings.HasPrefix(marker, "envoy: UpstreamTlsContext"):
			var u tlsv3.UpstreamTlsContext
			decode(t, where, v, &u)
			ctx := u.GetCommonTlsContext()
			names := []string{}
			for _, c := range ctx.GetTlsCertificateSdsSecretConfigs() {
				names = append(names, c.GetName())
			}
			names = append(names, ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName())
			if strings.Join(names, ",") != SecretCertificate+","+SecretRootCA {
				t.Errorf("%s: asks for SDS secrets %v, want [%s %s]", where, names, SecretCertificate, SecretRootCA)
			}
			counts["tls"]++
		case marker == "kubernetes: ClusterSPIFFEID":
			if v["apiVersion"] != "spire.spiffe.io/v1alpha1" || v["kind"] != "ClusterSPIFFEID" {
				t.Errorf("%s: not a ClusterSPIFFEID: %v", where, v)
			}
			spec, _ := v["spec"].(map[string]any)
			if tmpl, _ := spec["spiffeIDTemplate"].(string); !strings.HasSuffix(tmpl, "/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}") {
				t.Errorf("%s: spiffeIDTemplate %q does not give Istio's ns/<ns>/sa/<sa> identity", where, tmpl)
			}
			counts["clusterspiffeid"]++
		default:
			t.Errorf("%s: yaml block without a known marker (# config:, # envoy: <Message>, # kubernetes: ClusterSPIFFEID): %q", where, first)
		}
	}
	for _, k := range []string{"config", "secret", "bootstrap", "tls", "clusterspiffeid"} {
		if counts[k] == 0 {
			t.Errorf("no %s block found in %s", k, spireGuide)
		}
	}
}

// The spire flavor's socket is where the socket flavors' agents serve since
// Istio 1.14, so a gateway wired for them needs no change.
func TestSPIRESocketPathIsTheSocketFlavorsPath(t *testing.T) {
	if got, want := SPIRESocketPath, (IstioVersion{Minor: 30}).Profile().SocketPath(); got != want {
		t.Errorf("spire socket %s, socket flavors' %s", got, want)
	}
}
