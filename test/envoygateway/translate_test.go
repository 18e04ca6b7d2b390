// Package sdsinjectorproof runs Envoy Gateway's own Gateway API → xDS
// translation on the Envoy Gateway recipe of docs/gateway-wiring.md.
//
// It is a separate Go module so that sds-injector's own module does not
// depend on Envoy Gateway. Its module path lies under
// github.com/envoyproxy/gateway on purpose: Envoy Gateway's translators are
// internal packages, and in module mode the go command allows an import of
// an internal package by import path (golang.org/issue/23970), so this
// module can drive them exactly as Envoy Gateway's own controller does
// (internal/gatewayapi/runner and internal/xds/runner) instead of through
// `egctl x translate`, which does not enable SDS Secret references and so
// cannot translate the recipe at all. No Envoy Gateway code is copied here.
package sdsinjectorproof

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	"github.com/envoyproxy/gateway/api/v1alpha1/validation"
	"github.com/envoyproxy/gateway/internal/envoygateway/config"
	"github.com/envoyproxy/gateway/internal/gatewayapi"
	"github.com/envoyproxy/gateway/internal/gatewayapi/resource"
	"github.com/envoyproxy/gateway/internal/logging"
	"github.com/envoyproxy/gateway/internal/xds/translator"
)

const (
	guide   = "../../docs/gateway-wiring.md"
	section = "### Envoy Gateway 1.8 and later: SDS Secrets"
	// The socket the injected agent serves (Istio 1.14+'s workload SDS
	// socket); webhook/inject's TestWiringGuideSnippets checks that the
	// guide's Secrets name the engine's path, this test that Envoy Gateway
	// turns them into a pipe at that path.
	agentSocket = "/var/run/secrets/workload-spiffe-uds/socket"
	// The cluster Envoy Gateway builds for rule 0 of HTTPRoute
	// bookinfo/productpage (testdata/scaffold.yaml).
	routeCluster = "httproute/bookinfo/productpage/rule/0"
	// The identity the recipe's BackendTLSPolicy pins.
	wantSAN = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"
)

var fence = regexp.MustCompile("(?m)^( *)```yaml\n")

// recipeDocuments returns the YAML documents of the guide's section on
// Envoy Gateway's SDS Secrets, in order, each with the line it starts on.
func recipeDocuments(t *testing.T) (docs []string, lines []int) {
	t.Helper()
	data, err := os.ReadFile(guide)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	start := strings.Index(doc, section)
	if start < 0 {
		t.Fatalf("%s has no section %q", guide, section)
	}
	end := strings.Index(doc[start+len(section):], "\n### ")
	if end < 0 {
		t.Fatalf("%s: section %q does not end", guide, section)
	}
	body := doc[start : start+len(section)+end]
	for _, loc := range fence.FindAllStringSubmatchIndex(body, -1) {
		indent := body[loc[2]:loc[3]]
		rest := body[loc[1]:]
		stop := strings.Index(rest, "\n"+indent+"```")
		if stop < 0 {
			t.Fatalf("unterminated yaml block in %q", section)
		}
		var out []string
		for _, l := range strings.Split(rest[:stop], "\n") {
			out = append(out, strings.TrimPrefix(l, indent))
		}
		line := strings.Count(doc[:start+loc[0]], "\n") + 1
		for _, d := range strings.Split(strings.Join(out, "\n")+"\n", "\n---\n") {
			docs = append(docs, d)
			lines = append(lines, line)
		}
	}
	return docs, lines
}

// translation is what Envoy Gateway's two translation stages produced.
type translation struct {
	gw       *gatewayapi.TranslateResult
	clusters map[string]*clusterv3.Cluster
	patches  []patchStatus
	irErrs   []string
}

// translateRecipe feeds the guide's Envoy Gateway resources plus the
// scaffold through Envoy Gateway's loader (its local schema validation and
// defaulting included), its Gateway API translator configured from the
// guide's EnvoyGateway configuration as its controller configures it, and
// its xDS translator.
func translateRecipe(t *testing.T, mutate func(docs []string) []string) *translation {
	t.Helper()
	docs, lines := recipeDocuments(t)
	if mutate != nil {
		docs = mutate(docs)
	}
	var egConfig *egv1a1.EnvoyGateway
	var objects [][]byte
	for i, d := range docs {
		var meta struct {
			Kind       string            `json:"kind"`
			Type       string            `json:"type"`
			StringData map[string]string `json:"stringData"`
		}
		if err := yaml.Unmarshal([]byte(d), &meta); err != nil {
			t.Fatalf("%s:%d: %v", guide, lines[i], err)
		}
		switch meta.Kind {
		case "EnvoyGateway":
			if egConfig != nil {
				t.Fatalf("%s:%d: a second EnvoyGateway configuration", guide, lines[i])
			}
			eg, err := config.DecodeBytes([]byte(d))
			if err != nil {
				t.Fatalf("%s:%d: Envoy Gateway cannot decode its configuration: %v", guide, lines[i], err)
			}
			eg.SetEnvoyGatewayDefaults()
			if err := validation.ValidateEnvoyGateway(eg); err != nil {
				t.Fatalf("%s:%d: Envoy Gateway rejects its configuration: %v", guide, lines[i], err)
			}
			egConfig = eg
		case "Secret":
			// The apiserver merges stringData into data on write; Envoy
			// Gateway reads the stored Secret's data.
			objects = append(objects, storedSecret(t, d))
		default:
			objects = append(objects, []byte(d))
		}
	}
	if egConfig == nil {
		t.Fatalf("%s: section %q has no EnvoyGateway configuration", guide, section)
	}
	scaffold, err := os.ReadFile("testdata/scaffold.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var endpointSlices []*discoveryv1.EndpointSlice
	for _, d := range strings.Split(string(scaffold), "\n---\n") {
		if strings.Contains(d, "\nkind: EndpointSlice\n") {
			// Envoy Gateway's YAML loader has no EndpointSlice case; its
			// Kubernetes provider adds them from the cluster.
			es := &discoveryv1.EndpointSlice{}
			if err := yaml.UnmarshalStrict([]byte(d), es); err != nil {
				t.Fatalf("scaffold EndpointSlice: %v", err)
			}
			endpointSlices = append(endpointSlices, es)
			continue
		}
		if strings.Contains(d, "\nkind: Secret\n") {
			objects = append(objects, storedSecret(t, d))
			continue
		}
		objects = append(objects, []byte(d))
	}

	resources, err := resource.LoadResourcesFromYAMLBytes(bytes.Join(objects, []byte("\n---\n")), false, egConfig)
	if err != nil {
		t.Fatalf("Envoy Gateway does not load the recipe: %v", err)
	}
	resources.EndpointSlices = append(resources.EndpointSlices, endpointSlices...)
	if resources.GatewayClass == nil {
		t.Fatal("the recipe and scaffold define no GatewayClass")
	}

	logger := logging.DefaultLogger(io.Discard, egv1a1.LogLevelInfo)
	// The fields internal/gatewayapi/runner sets from the EnvoyGateway
	// configuration (v1.9.1).
	gt := &gatewayapi.Translator{
		GatewayControllerName:           egConfig.Gateway.ControllerName,
		GatewayClassName:                gwapiv1.ObjectName(resources.GatewayClass.Name),
		GlobalRateLimitEnabled:          egConfig.RateLimit != nil,
		EnvoyPatchPolicyEnabled:         egConfig.ExtensionAPIs != nil && egConfig.ExtensionAPIs.EnableEnvoyPatchPolicy,
		BackendEnabled:                  egConfig.ExtensionAPIs != nil && egConfig.ExtensionAPIs.EnableBackend,
		SDSSecretRefEnabled:             egConfig.ExtensionAPIs != nil && egConfig.ExtensionAPIs.EnableSDSSecretRef,
		ControllerNamespace:             "envoy-gateway-system",
		GatewayNamespaceMode:            egConfig.GatewayNamespaceMode(),
		MergeGateways:                   gatewayapi.IsMergeGatewaysEnabled(resources),
		MergeBackends:                   gatewayapi.ResolveMergeBackendsConfig(resources),
		PerResourceSystemCASecret:       egConfig.RuntimeFlags.IsEnabled(egv1a1.PerResourceSystemCASecret),
		RunningOnHost:                   egConfig.Provider != nil && egConfig.Provider.IsRunningOnHost(),
		InfraRemotelyManaged:            egConfig.Provider != nil && egConfig.Provider.IsInfraManagedRemotely(),
		Logger:                          logger,
		LuaEnvoyExtensionPolicyDisabled: egConfig.ExtensionAPIs.LuaDisabled(),
	}
	res, err := gt.Translate(context.Background(), resources)
	out := &translation{gw: res, clusters: map[string]*clusterv3.Cluster{}}
	if err != nil {
		out.irErrs = append(out.irErrs, err.Error())
	}
	if res == nil || len(res.XdsIR) == 0 {
		t.Fatalf("Envoy Gateway produced no xDS IR (errors: %v)", out.irErrs)
	}
	for key, xir := range res.XdsIR {
		// The fields internal/xds/runner sets (v1.9.1).
		xt := &translator.Translator{
			ControllerNamespace: "envoy-gateway-system",
			FilterOrder:         xir.FilterOrder,
			RuntimeFlags:        egConfig.RuntimeFlags,
			Logger:              logger,
		}
		table, err := xt.Translate(context.Background(), xir)
		if err != nil {
			out.irErrs = append(out.irErrs, fmt.Sprintf("xDS translation of %s: %v", key, err))
		}
		if table == nil {
			continue
		}
		for _, r := range table.XdsResources[resourcev3.ClusterType] {
			c := r.(*clusterv3.Cluster)
			if err := c.ValidateAll(); err != nil {
				t.Errorf("Envoy Gateway generated cluster %s that fails validation: %v", c.Name, err)
			}
			out.clusters[c.Name] = c
		}
		for _, p := range xir.EnvoyPatchPolicies {
			if p.Status == nil {
				t.Fatalf("EnvoyPatchPolicy %s/%s has no status after xDS translation", p.Namespace, p.Name)
			}
			out.patches = append(out.patches, patchStatus{name: p.Namespace + "/" + p.Name, status: p.Status})
		}
	}
	return out
}

type patchStatus struct {
	name   string
	status *gwapiv1.PolicyStatus
}

// storedSecret returns the Secret as the apiserver stores it: stringData
// merged into data.
func storedSecret(t *testing.T, d string) []byte {
	t.Helper()
	var s map[string]any
	if err := yaml.Unmarshal([]byte(d), &s); err != nil {
		t.Fatal(err)
	}
	if sd, ok := s["stringData"].(map[string]any); ok {
		data, _ := s["data"].(map[string]any)
		if data == nil {
			data = map[string]any{}
		}
		for k, v := range sd {
			data[k] = []byte(fmt.Sprint(v)) // marshalled as base64, as the apiserver returns it
		}
		s["data"] = data
		delete(s, "stringData")
	}
	out, err := yaml.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// conditionsTrue fails for every condition of the given types that is not
// True, and for every type that is missing.
func conditionsTrue(t *testing.T, what string, conds []metav1.Condition, types ...string) {
	t.Helper()
	for _, ty := range types {
		c := findCondition(conds, ty)
		if c == nil {
			t.Errorf("%s: no %s condition (conditions: %+v)", what, ty, conds)
			continue
		}
		if c.Status != metav1.ConditionTrue {
			t.Errorf("%s: %s=%s: %s: %s", what, ty, c.Status, c.Reason, c.Message)
		}
	}
}

func findCondition(conds []metav1.Condition, ty string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == ty {
			return &conds[i]
		}
	}
	return nil
}

// TestSDSRecipeThroughTranslator checks that Envoy Gateway v1.9.1's own
// translators accept every resource of the guide's SDS Secret recipe and
// turn them into an upstream cluster whose TLS fetches the certificate
// `default` and the trust bundle `ROOTCA` over SDS from a static pipe
// cluster at the agent's socket, offers ALPN istio and pins the
// destination's SPIFFE ID.
func TestSDSRecipeThroughTranslator(t *testing.T) {
	tr := translateRecipe(t, nil)
	if len(tr.irErrs) > 0 {
		t.Errorf("Envoy Gateway reports translation errors: %v", tr.irErrs)
	}

	// Every resource the recipe adds is accepted.
	if len(tr.gw.BackendTLSPolicies) != 1 {
		t.Fatalf("want 1 BackendTLSPolicy translated, got %d", len(tr.gw.BackendTLSPolicies))
	}
	for _, p := range tr.gw.BackendTLSPolicies {
		if len(p.Status.Ancestors) == 0 {
			t.Errorf("BackendTLSPolicy %s/%s has no ancestor status", p.Namespace, p.Name)
		}
		for _, a := range p.Status.Ancestors {
			conditionsTrue(t, "BackendTLSPolicy "+p.Namespace+"/"+p.Name, a.Conditions, string(gwapiv1.PolicyConditionAccepted))
		}
	}
	for _, r := range tr.gw.HTTPRoutes {
		if len(r.Status.Parents) == 0 {
			t.Errorf("HTTPRoute %s/%s has no parent status", r.Namespace, r.Name)
		}
		for _, p := range r.Status.Parents {
			conditionsTrue(t, "HTTPRoute "+r.Namespace+"/"+r.Name, p.Conditions,
				string(gwapiv1.RouteConditionAccepted), string(gwapiv1.RouteConditionResolvedRefs))
		}
	}
	if tr.gw.GatewayClass == nil {
		t.Fatal("no GatewayClass in the result")
	}
	if len(tr.patches) != 1 {
		t.Fatalf("want the recipe's 1 EnvoyPatchPolicy in the xDS IR, got %d", len(tr.patches))
	}
	for _, p := range tr.patches {
		for _, a := range p.status.Ancestors {
			conditionsTrue(t, "EnvoyPatchPolicy "+p.name, a.Conditions,
				string(gwapiv1.PolicyConditionAccepted), string(egv1a1.PolicyConditionProgrammed))
		}
		if len(p.status.Ancestors) == 0 {
			t.Errorf("EnvoyPatchPolicy %s has no ancestor status", p.name)
		}
	}

	c := tr.clusters[routeCluster]
	if c == nil {
		t.Fatalf("no cluster %s; Envoy Gateway generated %v", routeCluster, clusterNames(tr.clusters))
	}
	utc := upstreamTLS(t, c)
	ctx := utc.GetCommonTlsContext()
	if got := ctx.GetAlpnProtocols(); !slices.Equal(got, []string{"istio"}) {
		t.Errorf("cluster %s offers ALPN %v, want [istio]", c.Name, got)
	}
	certs := ctx.GetTlsCertificateSdsSecretConfigs()
	if len(certs) != 1 {
		t.Fatalf("cluster %s: want 1 SDS client certificate, got %d", c.Name, len(certs))
	}
	if certs[0].GetName() != "default" {
		t.Errorf("cluster %s asks SDS for certificate %q, want default", c.Name, certs[0].GetName())
	}
	checkSDSSource(t, tr.clusters, "client certificate", certs[0].GetSdsConfig())

	cvc := ctx.GetCombinedValidationContext()
	if cvc == nil {
		t.Fatalf("cluster %s has no combined validation context: %v", c.Name, protojson.Format(ctx))
	}
	root := cvc.GetValidationContextSdsSecretConfig()
	if root.GetName() != "ROOTCA" {
		t.Errorf("cluster %s asks SDS for trust bundle %q, want ROOTCA", c.Name, root.GetName())
	}
	checkSDSSource(t, tr.clusters, "trust bundle", root.GetSdsConfig())
	var sans []string
	for _, m := range cvc.GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
		if m.GetSanType() == tlsv3.SubjectAltNameMatcher_URI {
			if ex, ok := m.GetMatcher().GetMatchPattern().(*matcherv3.StringMatcher_Exact); ok {
				sans = append(sans, ex.Exact)
			}
		}
	}
	if !slices.Equal(sans, []string{wantSAN}) {
		t.Errorf("cluster %s pins URI SANs %v, want exactly [%s]", c.Name, sans, wantSAN)
	}
	t.Logf("cluster %s: ALPN %v, certificate %q and trust bundle %q over SDS, URI SAN %v",
		c.Name, ctx.GetAlpnProtocols(), certs[0].GetName(), root.GetName(), sans)
}

// TestSDSRecipeNegativeControls shows that the checks above can fail: the
// same recipe without the EnvoyGateway switch, or without its SAN pin,
// does not produce the cluster the first test accepts.
func TestSDSRecipeNegativeControls(t *testing.T) {
	t.Run("without enableSDSSecretRef", func(t *testing.T) {
		tr := translateRecipe(t, func(docs []string) []string {
			return replaceIn(t, docs, "enableSDSSecretRef: true", "enableSDSSecretRef: false")
		})
		msg := ""
		for _, p := range tr.gw.BackendTLSPolicies {
			for _, a := range p.Status.Ancestors {
				if c := findCondition(a.Conditions, string(gwapiv1.PolicyConditionAccepted)); c != nil && c.Status == metav1.ConditionFalse {
					msg = c.Message
				}
			}
		}
		if !strings.Contains(msg, "SDS Secret reference is not enabled") {
			t.Errorf("without the switch, want the BackendTLSPolicy refused for SDS references, got Accepted message %q", msg)
		}
		if c := tr.clusters[routeCluster]; c != nil && len(c.GetTransportSocketMatches()) > 0 {
			t.Errorf("without the switch, cluster %s still has TLS", routeCluster)
		}
	})
	t.Run("without the SAN pin", func(t *testing.T) {
		tr := translateRecipe(t, func(docs []string) []string {
			for i, d := range docs {
				if strings.Contains(d, "kind: BackendTLSPolicy") {
					d = strings.Replace(d, "    subjectAltNames:\n    - type: URI\n      uri: "+wantSAN+"\n", "", 1)
					if strings.Contains(d, "subjectAltNames") {
						t.Fatal("could not remove the SAN pin from the BackendTLSPolicy")
					}
					docs[i] = d
				}
			}
			return docs
		})
		c := tr.clusters[routeCluster]
		if c == nil {
			t.Fatalf("no cluster %s", routeCluster)
		}
		// Gateway API: without subjectAltNames the hostname must match a
		// DNS SAN, which mesh certificates (URI SANs only) do not carry.
		var got []string
		for _, m := range upstreamTLS(t, c).GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
			got = append(got, m.GetSanType().String()+"="+m.GetMatcher().GetExact())
		}
		if !slices.Equal(got, []string{"DNS=productpage.bookinfo.svc.cluster.local"}) {
			t.Errorf("without subjectAltNames the cluster pins %v, want only the hostname as a DNS SAN", got)
		}
	})
	t.Run("without the ALPN patch", func(t *testing.T) {
		tr := translateRecipe(t, func(docs []string) []string {
			var out []string
			for _, d := range docs {
				if !strings.Contains(d, "kind: EnvoyPatchPolicy") {
					out = append(out, d)
				}
			}
			if len(out) != len(docs)-1 {
				t.Fatalf("want exactly 1 EnvoyPatchPolicy in the recipe, found %d", len(docs)-len(out))
			}
			return out
		})
		c := tr.clusters[routeCluster]
		if c == nil {
			t.Fatalf("no cluster %s", routeCluster)
		}
		if got := upstreamTLS(t, c).GetCommonTlsContext().GetAlpnProtocols(); slices.Contains(got, "istio") {
			t.Errorf("without the EnvoyPatchPolicy the cluster still offers ALPN %v", got)
		} else {
			t.Logf("without the patch Envoy Gateway offers ALPN %v", got)
		}
	})
	t.Run("bare socket path", func(t *testing.T) {
		tr := translateRecipe(t, func(docs []string) []string {
			return replaceIn(t, docs, "url: unix://"+agentSocket, "url: "+agentSocket)
		})
		if c := tr.clusters[routeCluster]; c != nil && len(c.GetTransportSocketMatches()) > 0 {
			t.Errorf("a bare socket path still gives cluster %s TLS; the guide says 1.9 rejects it", routeCluster)
		}
	})
}

func replaceIn(t *testing.T, docs []string, old, repl string) []string {
	t.Helper()
	n := 0
	for i := range docs {
		n += strings.Count(docs[i], old)
		docs[i] = strings.ReplaceAll(docs[i], old, repl)
	}
	if n == 0 {
		t.Fatalf("the recipe has no %q to replace", old)
	}
	return docs
}

// upstreamTLS returns the UpstreamTlsContext of the cluster's only TLS
// transport socket. Envoy Gateway puts a backend's TLS into
// transport_socket_matches and sets the cluster's own transport_socket to
// an empty placeholder (dummy.transport_socket, no certificates, "a no-op
// since transportSocketMatches takes effect"), which is checked to be empty.
func upstreamTLS(t *testing.T, c *clusterv3.Cluster) *tlsv3.UpstreamTlsContext {
	t.Helper()
	var sockets []*corev3.TransportSocket
	if ts := c.GetTransportSocket(); ts != nil {
		if ts.GetName() != "dummy.transport_socket" {
			sockets = append(sockets, ts)
		} else {
			d := &tlsv3.UpstreamTlsContext{}
			if err := ts.GetTypedConfig().UnmarshalTo(d); err != nil {
				t.Fatal(err)
			}
			if len(d.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()) > 0 || d.GetCommonTlsContext().GetValidationContextType() != nil {
				t.Errorf("cluster %s: the placeholder transport socket carries TLS settings: %s", c.Name, protojson.Format(d))
			}
		}
	}
	for _, m := range c.GetTransportSocketMatches() {
		sockets = append(sockets, m.GetTransportSocket())
	}
	var out []*tlsv3.UpstreamTlsContext
	for _, s := range sockets {
		utc := &tlsv3.UpstreamTlsContext{}
		if s.GetTypedConfig().MessageIs(utc) {
			if err := s.GetTypedConfig().UnmarshalTo(utc); err != nil {
				t.Fatal(err)
			}
			out = append(out, utc)
		}
	}
	if len(out) != 1 {
		t.Fatalf("cluster %s: want 1 upstream TLS transport socket, got %d: %s", c.Name, len(out), protojson.Format(c))
	}
	return out[0]
}

// checkSDSSource checks that an SDS config source is gRPC to a static
// cluster whose only endpoint is the agent's socket.
func checkSDSSource(t *testing.T, clusters map[string]*clusterv3.Cluster, what string, src *corev3.ConfigSource) {
	t.Helper()
	services := src.GetApiConfigSource().GetGrpcServices()
	if src.GetApiConfigSource().GetApiType() != corev3.ApiConfigSource_GRPC || len(services) != 1 || services[0].GetEnvoyGrpc() == nil {
		t.Errorf("%s: SDS source is not one envoy_grpc service: %s", what, protojson.Format(src))
		return
	}
	name := services[0].GetEnvoyGrpc().GetClusterName()
	sc := clusters[name]
	if sc == nil {
		t.Errorf("%s: SDS cluster %q is not among the generated clusters %v", what, name, clusterNames(clusters))
		return
	}
	if sc.GetType() != clusterv3.Cluster_STATIC {
		t.Errorf("%s: SDS cluster %s is %v, want STATIC", what, name, sc.GetType())
	}
	//nolint:staticcheck // Envoy Gateway v1.9.1 builds its SDS cluster with the deprecated http2_protocol_options (internal/xds/translator/sds.go).
	if sc.GetHttp2ProtocolOptions() == nil && sc.GetTypedExtensionProtocolOptions() == nil {
		t.Errorf("%s: SDS cluster %s does not speak HTTP/2 (gRPC)", what, name)
	}
	var pipes []string
	for _, l := range sc.GetLoadAssignment().GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			pipes = append(pipes, e.GetEndpoint().GetAddress().GetPipe().GetPath())
		}
	}
	if !slices.Equal(pipes, []string{agentSocket}) {
		t.Errorf("%s: SDS cluster %s has endpoints %q, want the pipe %s only", what, name, pipes, agentSocket)
	}
}

func clusterNames(m map[string]*clusterv3.Cluster) []string {
	var out []string
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}
