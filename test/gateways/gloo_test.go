// Package gateways proves the wiring guide (docs/gateway-wiring.md) with
// the gateways' own parts: Gloo Edge's rendered Helm chart here, and every
// gateway CRD snippet applied to a real kube-apiserver with that gateway's
// CRDs (crd_test.go).
package gateways

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
	// The extensions Gloo's bootstrap names.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	agentsds "github.com/sds-injector/sds-injector/internal/agent/sds"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

const (
	guide   = "../../docs/gateway-wiring.md"
	glooDir = "testdata/gloo/"
)

var (
	fence   = regexp.MustCompile("(?m)^( *)```yaml\n")
	heading = regexp.MustCompile("(?m)^#{2,4} (.*)$")
)

// block is one fenced yaml block of the guide.
type block struct {
	line int
	text string
	// section is the closest heading above the block.
	section string
}

func guideBlocks(t *testing.T) []block {
	t.Helper()
	data, err := os.ReadFile(guide)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	var out []block
	for _, loc := range fence.FindAllStringSubmatchIndex(doc, -1) {
		indent := doc[loc[2]:loc[3]]
		rest := doc[loc[1]:]
		end := strings.Index(rest, "\n"+indent+"```")
		if end < 0 {
			t.Fatalf("%s:%d: unterminated yaml block", guide, strings.Count(doc[:loc[0]], "\n")+1)
		}
		var lines []string
		for _, l := range strings.Split(rest[:end], "\n") {
			lines = append(lines, strings.TrimPrefix(l, indent))
		}
		section := ""
		if hs := heading.FindAllStringSubmatch(doc[:loc[0]], -1); len(hs) > 0 {
			section = hs[len(hs)-1][1]
		}
		out = append(out, block{line: strings.Count(doc[:loc[0]], "\n") + 1, text: strings.Join(lines, "\n") + "\n", section: section})
	}
	return out
}

// dropInBlocks returns the guide's Gloo drop-in values block and its
// Upstream.
func dropInBlocks(t *testing.T) (values, upstream block) {
	t.Helper()
	var vs, us []block
	for _, b := range guideBlocks(t) {
		if !strings.HasPrefix(b.section, "The Gloo drop-in") {
			continue
		}
		switch {
		case strings.HasPrefix(b.text, "# values for the gloo chart\n"):
			vs = append(vs, b)
		case strings.Contains(b.text, "\nkind: Upstream\n"):
			us = append(us, b)
		}
	}
	if len(vs) != 1 || len(us) != 1 {
		t.Fatalf("the guide's Gloo drop-in section has %d values blocks and %d Upstreams, want 1 each", len(vs), len(us))
	}
	return vs[0], us[0]
}

// TestGlooDropInValuesAreTheGuides keeps the values the fixtures were
// rendered with (render-gloo.sh) equal to the ones the guide documents.
func TestGlooDropInValuesAreTheGuides(t *testing.T) {
	values, _ := dropInBlocks(t)
	rendered, err := os.ReadFile(glooDir + "drop-in-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(rendered) != values.text {
		t.Errorf("%sdrop-in-values.yaml differs from the values in %s:%d; copy the guide's block there and re-render with test/gateways/render-gloo.sh (README.md)",
			glooDir, guide, values.line)
	}
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestGlooDropInWithGlooChart injects the gateway-proxy pod of Gloo Edge's
// rendered chart (v1.22.1, the guide's drop-in values) with the drop-in
// on, then checks Gloo's rendered bootstrap: it validates, its SDS cluster
// gateway_proxy_sds points at the address the injected agent is told to
// listen on, and the guide's Upstream asks that cluster for names the
// sds-agent serves as the certificate and the trust bundle.
func TestGlooDropInWithGlooChart(t *testing.T) {
	var dep appsv1.Deployment
	readYAML(t, glooDir+"gateway-proxy-deployment.yaml", &dep)
	var cm corev1.ConfigMap
	readYAML(t, glooDir+"gateway-proxy-envoy-config.yaml", &cm)
	if dep.Name != "gateway-proxy" || cm.Name != "gateway-proxy-envoy-config" {
		t.Fatalf("fixtures are Deployment %q and ConfigMap %q, want gateway-proxy and gateway-proxy-envoy-config", dep.Name, cm.Name)
	}
	// The pod the Deployment's ReplicaSet would create.
	pod := &corev1.Pod{
		ObjectMeta: *dep.Spec.Template.ObjectMeta.DeepCopy(),
		Spec:       *dep.Spec.Template.Spec.DeepCopy(),
	}
	pod.Namespace, pod.GenerateName = dep.Namespace, dep.Name+"-7d9f8c6b5-"
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: dep.Name + "-7d9f8c6b5"}}

	for _, mode := range []struct {
		name  string
		cfg   func(*inject.Config)
		annot map[string]string
	}{
		{"configuration", func(c *inject.Config) { c.Flavor = inject.FlavorSDSAgent; c.GlooDropIn = true }, nil},
		{"pod annotations", func(*inject.Config) {}, map[string]string{inject.Prefix + "flavor": "sds-agent", inject.AnnotationGlooDropIn: "true"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			cfg := inject.DefaultConfig()
			mode.cfg(&cfg)
			s, err := cfg.Resolve()
			if err != nil {
				t.Fatal(err)
			}
			in := pod.DeepCopy()
			for k, v := range mode.annot {
				if in.Annotations == nil {
					in.Annotations = map[string]string{}
				}
				in.Annotations[k] = v
			}
			res := inject.Inject(in, s)
			if res.Decision.Outcome != inject.OutcomeInjected || res.Decision.Profile != "gloo-edge" {
				t.Fatalf("Gloo's gateway-proxy pod: %+v, want injected by the gloo-edge profile", res.Decision)
			}
			checkDropIn(t, res.Pod, &cm)
		})
	}

	// Negative control: without the drop-in the agent is not told to serve
	// Gloo's address, and the check below would fail.
	cfg := inject.DefaultConfig()
	cfg.Flavor = inject.FlavorSDSAgent
	s, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	res := inject.Inject(pod.DeepCopy(), s)
	if res.Decision.Outcome != inject.OutcomeInjected {
		t.Fatalf("without the drop-in: %+v", res.Decision)
	}
	if addr := agentTCPAddr(t, res.Pod); addr != "" {
		t.Errorf("without the drop-in the agent still listens on %s", addr)
	}
}

// agentTCPAddr returns SDS_TCP_ADDR of the injected sds-agent container.
func agentTCPAddr(t *testing.T, pod *corev1.Pod) string {
	t.Helper()
	var agents []corev1.Container
	for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
		if slices.ContainsFunc(c.Args, func(a string) bool { return strings.Contains(a, "sds-agent") }) || strings.Contains(c.Image, "sds-agent") {
			agents = append(agents, c)
		}
	}
	if len(agents) != 1 {
		t.Fatalf("want 1 sds-agent container in the injected pod, got %d", len(agents))
	}
	for _, e := range agents[0].Env {
		if e.Name == "SDS_TCP_ADDR" {
			return e.Value
		}
	}
	return ""
}

func checkDropIn(t *testing.T, pod *corev1.Pod, cm *corev1.ConfigMap) {
	t.Helper()
	if pod.Spec.HostNetwork {
		t.Fatal("Gloo's gateway-proxy runs in the host network; loopback would be the node's")
	}
	addr := agentTCPAddr(t, pod)
	if addr == "" {
		t.Fatal("the injected sds-agent has no SDS_TCP_ADDR: the drop-in is off")
	}
	// The gateway container keeps Gloo's own bootstrap.
	var gw *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == "gateway-proxy" {
			gw = &pod.Spec.Containers[i]
		}
	}
	if gw == nil || !slices.ContainsFunc(gw.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "envoy-config" && m.MountPath == "/etc/envoy" }) {
		t.Fatal("the injected gateway-proxy container lost Gloo's bootstrap mount")
	}

	// Gloo's bootstrap, as Envoy would read it.
	raw, ok := cm.Data["envoy.yaml"]
	if !ok {
		t.Fatal("Gloo's ConfigMap has no envoy.yaml")
	}
	js, err := yaml.YAMLToJSON([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, b); err != nil {
		t.Fatalf("Gloo's rendered bootstrap does not decode: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("Gloo's rendered bootstrap fails validation: %v", err)
	}
	var sds *clusterv3.Cluster
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == "gateway_proxy_sds" {
			sds = c
		}
	}
	if sds == nil {
		t.Fatal("Gloo's rendered bootstrap has no gateway_proxy_sds cluster")
	}
	var endpoints []string
	for _, l := range sds.GetLoadAssignment().GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			endpoints = append(endpoints, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
		}
	}
	if !slices.Equal(endpoints, []string{addr}) {
		t.Errorf("Gloo's gateway_proxy_sds points at %v; the injected agent listens on %s", endpoints, addr)
	}
	if sds.GetType() != clusterv3.Cluster_STATIC {
		t.Errorf("gateway_proxy_sds is %v, want STATIC (Envoy refuses an SDS source on a CDS cluster)", sds.GetType())
	}

	// The guide's Upstream for the drop-in, against the agent's names.
	_, ub := dropInBlocks(t)
	var up struct {
		Spec struct {
			SSLConfig struct {
				AlpnProtocols        []string `json:"alpnProtocols"`
				VerifySubjectAltName []string `json:"verifySubjectAltName"`
				SDS                  struct {
					ClusterName            string `json:"clusterName"`
					TargetURI              string `json:"targetUri"`
					CertificatesSecretName string `json:"certificatesSecretName"`
					ValidationContextName  string `json:"validationContextName"`
				} `json:"sds"`
			} `json:"sslConfig"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(ub.text), &up); err != nil {
		t.Fatalf("%s:%d: %v", guide, ub.line, err)
	}
	ssl := up.Spec.SSLConfig
	if ssl.SDS.ClusterName != sds.GetName() {
		t.Errorf("%s:%d: the Upstream names SDS cluster %q; Gloo's bootstrap defines %q", guide, ub.line, ssl.SDS.ClusterName, sds.GetName())
	}
	if ssl.SDS.TargetURI != "" && ssl.SDS.TargetURI != addr {
		t.Errorf("%s:%d: the Upstream's targetUri %s is not the agent's %s", guide, ub.line, ssl.SDS.TargetURI, addr)
	}
	certs, roots := agentsds.CertificateNames(), agentsds.RootNames()
	if !slices.Contains(certs, ssl.SDS.CertificatesSecretName) {
		t.Errorf("%s:%d: certificatesSecretName %q is not a certificate the sds-agent serves (%v)", guide, ub.line, ssl.SDS.CertificatesSecretName, certs)
	}
	if !slices.Contains(roots, ssl.SDS.ValidationContextName) {
		t.Errorf("%s:%d: validationContextName %q is not a trust bundle the sds-agent serves (%v)", guide, ub.line, ssl.SDS.ValidationContextName, roots)
	}
	if !slices.Equal(ssl.AlpnProtocols, []string{"istio"}) {
		t.Errorf("%s:%d: the Upstream offers ALPN %v, want [istio]", guide, ub.line, ssl.AlpnProtocols)
	}
	if len(ssl.VerifySubjectAltName) != 1 || !strings.HasPrefix(ssl.VerifySubjectAltName[0], "spiffe://") {
		t.Errorf("%s:%d: the Upstream pins %v, want one SPIFFE ID", guide, ub.line, ssl.VerifySubjectAltName)
	}
	dump, _ := json.Marshal(endpoints)
	t.Logf("Gloo's gateway_proxy_sds -> %s = agent SDS_TCP_ADDR %s; Upstream asks for %q/%q (agent serves certificates %v, trust bundles %v)",
		dump, addr, ssl.SDS.CertificatesSecretName, ssl.SDS.ValidationContextName, certs, roots)
}
