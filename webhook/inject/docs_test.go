package inject

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

const wiringGuide = "../../docs/gateway-wiring.md"

// snippet is one fenced yaml block of the wiring guide.
type snippet struct {
	line int
	text string
}

var fence = regexp.MustCompile("(?m)^( *)```yaml\n")

func wiringSnippets(t *testing.T) []snippet {
	t.Helper()
	data, err := os.ReadFile(wiringGuide)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	var out []snippet
	for _, loc := range fence.FindAllStringSubmatchIndex(doc, -1) {
		indent := doc[loc[2]:loc[3]]
		rest := doc[loc[1]:]
		end := strings.Index(rest, "\n"+indent+"```")
		if end < 0 {
			t.Fatalf("line %d: unterminated yaml block", strings.Count(doc[:loc[0]], "\n")+1)
		}
		var lines []string
		for _, l := range strings.Split(rest[:end], "\n") {
			lines = append(lines, strings.TrimPrefix(l, indent))
		}
		out = append(out, snippet{line: strings.Count(doc[:loc[0]], "\n") + 1, text: strings.Join(lines, "\n") + "\n"})
	}
	return out
}

// decode reads a YAML value into an Envoy message and validates it.
func decode(t *testing.T, where string, v any, m proto.Message) {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	if err := protojson.Unmarshal(raw, m); err != nil {
		t.Fatalf("%s: not a valid %s: %v", where, m.ProtoReflect().Descriptor().FullName(), err)
	}
	if err := m.(interface{ ValidateAll() error }).ValidateAll(); err != nil {
		t.Fatalf("%s: %s fails validation: %v", where, m.ProtoReflect().Descriptor().FullName(), err)
	}
}

// wiringFacts is what the snippets say, collected for the agreement checks.
type wiringFacts struct {
	clusters, tlsContexts, commonContexts, fileSecrets, bootstraps int
	pipePaths, sdsNames, fileRefs, sdsURLs, tcpSDS                 []string
	kinds                                                          []string
}

// TestWiringGuideSnippets parses every yaml block of docs/gateway-wiring.md,
// decodes each Envoy configuration in it into go-control-plane types and
// validates it, and checks that the socket path, the SDS secret names and the
// certificate files the snippets name are the ones the engine injects.
func TestWiringGuideSnippets(t *testing.T) {
	snippets := wiringSnippets(t)
	if len(snippets) < 10 {
		t.Fatalf("found only %d yaml blocks in %s", len(snippets), wiringGuide)
	}
	var f wiringFacts
	for _, sn := range snippets {
		for i, docText := range strings.Split(sn.text, "\n---\n") {
			where := fmt.Sprintf("%s:%d (document %d)", wiringGuide, sn.line, i+1)
			var v any
			if err := yaml.Unmarshal([]byte(docText), &v); err != nil {
				t.Fatalf("%s: does not parse as YAML: %v", where, err)
			}
			f.walk(t, where, v)
		}
	}

	modern := IstioVersion{Minor: 30}.Profile().SocketPath()
	legacy := IstioVersion{Minor: 13}.Profile().SocketPath()
	for _, p := range f.pipePaths {
		if p != modern && p != legacy {
			t.Errorf("a snippet's SDS cluster points at %s; the agent serves %s (%s before Istio 1.14)", p, modern, legacy)
		}
	}
	for _, u := range f.sdsURLs {
		if strings.TrimPrefix(u, "unix://") != modern {
			t.Errorf("an Envoy Gateway SDS Secret points at %s; the agent serves %s", u, modern)
		}
	}
	served := []string{SecretCertificate, SecretRootCA, SecretGlooCertificate, SecretGlooRootCA}
	for _, n := range f.sdsNames {
		if !slices.Contains(served, n) {
			t.Errorf("a snippet asks for SDS secret %q; the agent serves only %v", n, served)
		}
	}
	for _, a := range f.tcpSDS {
		if a != GlooSDSAddress {
			t.Errorf("a snippet's SDS cluster points at %s; the Gloo drop-in serves %s", a, GlooSDSAddress)
		}
	}
	for _, file := range f.fileRefs {
		if !slices.Contains([]string{DefaultCertsDir + "/cert-chain.pem", DefaultCertsDir + "/key.pem", DefaultCertsDir + "/root-cert.pem", DefaultCertsDir}, file) {
			t.Errorf("a snippet reads %s; the files flavor writes cert-chain.pem, key.pem and root-cert.pem in %s", file, DefaultCertsDir)
		}
	}
	// The guide must keep what each section promises; a dropped block would
	// otherwise pass unnoticed.
	for _, c := range []struct {
		what       string
		got, least int
	}{
		{"Envoy clusters", f.clusters, 3}, {"upstream TLS contexts", f.tlsContexts, 2}, {"common TLS contexts", f.commonContexts, 1},
		{"file-based SDS secrets", f.fileSecrets, 2}, {"embedded bootstraps", f.bootstraps, 1},
		{"SDS secret references", len(f.sdsNames), 8}, {"pipe paths", len(f.pipePaths), 3}, {"Envoy Gateway SDS Secrets", len(f.sdsURLs), 2},
		{"certificate file references", len(f.fileRefs), 6}, {"Gloo drop-in addresses", len(f.tcpSDS), 2},
	} {
		if c.got < c.least {
			t.Errorf("the guide has %d %s, want at least %d", c.got, c.what, c.least)
		}
	}
	for _, kind := range []string{"Upstream", "EnvoyProxy", "EnvoyPatchPolicy", "EnvoyGateway", "Secret", "BackendTLSPolicy", "TLSContext", "Mapping"} {
		if !slices.Contains(f.kinds, kind) {
			t.Errorf("no %s in the guide", kind)
		}
	}
}

// walk visits every value, decoding what it recognises as Envoy
// configuration and collecting the names and paths the snippets use.
func (f *wiringFacts) walk(t *testing.T, where string, v any) {
	t.Helper()
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			f.walk(t, where, e)
		}
	case map[string]any:
		f.inspect(t, where, x)
		for k, e := range x {
			if k == "value" {
				if s, ok := e.(string); ok && strings.Contains(s, "static_resources") {
					// An EnvoyProxy bootstrap merge: YAML in a string.
					var b any
					if err := yaml.Unmarshal([]byte(s), &b); err != nil {
						t.Fatalf("%s: embedded bootstrap does not parse: %v", where, err)
					}
					decode(t, where+" (embedded bootstrap)", b, &bootstrapv3.Bootstrap{})
					f.bootstraps++
					f.walk(t, where, b)
					continue
				}
			}
			f.walk(t, where, e)
		}
	}
}

func (f *wiringFacts) inspect(t *testing.T, where string, m map[string]any) {
	t.Helper()
	if k, ok := m["kind"].(string); ok {
		if _, ok := m["apiVersion"]; ok {
			f.kinds = append(f.kinds, k)
		}
	}
	if m["type"] == "gateway.envoyproxy.io/sds" {
		data, _ := m["stringData"].(map[string]any)
		u, _ := data["url"].(string)
		n, _ := data["secretName"].(string)
		if u == "" || n == "" {
			t.Errorf("%s: an Envoy Gateway SDS Secret needs stringData url and secretName", where)
		}
		f.sdsURLs = append(f.sdsURLs, u)
		f.sdsNames = append(f.sdsNames, n)
	}
	if _, ok := m["load_assignment"]; ok {
		c := &clusterv3.Cluster{}
		decode(t, where+" (cluster)", m, c)
		f.clusters++
	}
	if tc, ok := m["typed_config"].(map[string]any); ok && strings.HasSuffix(fmt.Sprint(tc["@type"]), ".UpstreamTlsContext") {
		ts := &corev3.TransportSocket{}
		decode(t, where+" (transport socket)", m, ts)
		f.tlsContexts++
	}
	if ctx, ok := m["common_tls_context"].(map[string]any); ok {
		decode(t, where+" (common_tls_context)", ctx, &tlsv3.CommonTlsContext{})
		f.commonContexts++
	}
	if res, ok := m["resources"].([]any); ok {
		for _, r := range res {
			raw, _ := json.Marshal(r)
			a := &anypb.Any{}
			if err := protojson.Unmarshal(raw, a); err != nil {
				t.Fatalf("%s: SDS resource file entry: %v", where, err)
			}
			sec := &tlsv3.Secret{}
			if err := a.UnmarshalTo(sec); err != nil {
				t.Fatalf("%s: SDS resource file entry is not a Secret: %v", where, err)
			}
			if err := sec.ValidateAll(); err != nil {
				t.Fatalf("%s: Secret fails validation: %v", where, err)
			}
			f.fileSecrets++
		}
	}
	if sa, ok := m["socket_address"].(map[string]any); ok && fmt.Sprint(sa["port_value"]) == fmt.Sprint(portGlooSDS) {
		f.tcpSDS = append(f.tcpSDS, fmt.Sprintf("%v:%v", sa["address"], sa["port_value"]))
	}
	if u, ok := m["targetUri"].(string); ok {
		f.tcpSDS = append(f.tcpSDS, u)
	}
	if p, ok := m["pipe"].(map[string]any); ok {
		f.pipePaths = append(f.pipePaths, fmt.Sprint(p["path"]))
	}
	if cs, ok := m["tls_certificate_sds_secret_configs"].([]any); ok {
		for _, c := range cs {
			f.sdsNames = append(f.sdsNames, fmt.Sprint(c.(map[string]any)["name"]))
		}
	}
	if vc, ok := m["validation_context_sds_secret_config"].(map[string]any); ok {
		f.sdsNames = append(f.sdsNames, fmt.Sprint(vc["name"]))
	}
	// Gloo's Upstream sslConfig.sds.
	for _, k := range []string{"certificatesSecretName", "validationContextName"} {
		if n, ok := m[k].(string); ok {
			f.sdsNames = append(f.sdsNames, n)
		}
	}
	// Secrets written as files, and the files flavor's files.
	if m["name"] == SecretCertificate || m["name"] == SecretRootCA {
		if _, ok := m["tls_certificate"]; ok || m["validation_context"] != nil {
			f.sdsNames = append(f.sdsNames, fmt.Sprint(m["name"]))
		}
	}
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			continue
		}
		if k == "filename" || k == "path" && strings.HasPrefix(s, "/etc/istio-certs") || strings.HasSuffix(k, "_file") {
			if strings.HasPrefix(s, "/etc/istio-certs") || strings.HasSuffix(s, ".pem") {
				f.fileRefs = append(f.fileRefs, s)
			}
		}
	}
}
