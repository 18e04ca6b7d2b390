package istio

import (
	"os"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// fixture reads the ConfigMaps of testdata/istio-<version>.yaml, rendered
// from the istio-discovery chart of that release.
func fixture(t *testing.T, version string) []*corev1.ConfigMap {
	t.Helper()
	data, err := os.ReadFile("testdata/istio-" + version + ".yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []*corev1.ConfigMap
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var cm corev1.ConfigMap
		if err := yaml.UnmarshalStrict([]byte(doc), &cm); err != nil {
			t.Fatal(err)
		}
		if cm.Name != "" {
			out = append(out, &cm)
		}
	}
	if len(out) != 2 {
		t.Fatalf("fixture %s: %d ConfigMaps", version, len(out))
	}
	return out
}

func tagWebhook(tag, rev string) *admissionregistrationv1.MutatingWebhookConfiguration {
	path := "/inject"
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: TagWebhookPrefix + tag, Labels: map[string]string{LabelTag: tag, LabelRev: rev}},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "rev.namespace.sidecar-injector.istio.io",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{Namespace: "istio-system", Name: "istiod-" + rev, Path: &path}}}},
	}
}

func build(t *testing.T, cfg inject.Config, explicit inject.Presence, cms []*corev1.ConfigMap, tags ...*admissionregistrationv1.MutatingWebhookConfiguration) *Snapshot {
	t.Helper()
	return Build(Input{Config: cfg, Explicit: explicit, Namespace: "istio-system", ConfigMaps: cms, Webhooks: tags}, cfg.MustResolve())
}

func twoRevisions(t *testing.T) []*corev1.ConfigMap {
	return append(fixture(t, "1.21.6"), fixture(t, "1.28.10")...)
}

func TestRevisionsFromChartDefaults(t *testing.T) {
	s := build(t, inject.DefaultConfig(), inject.Presence{}, twoRevisions(t))
	if got := strings.Join(s.Names(), ","); got != "1-21,1-28" {
		t.Fatalf("revisions %s", got)
	}
	if s.Default != "" {
		t.Errorf("two revisions, no default tag: default %q", s.Default)
	}
	r21, r28 := s.Revisions["1-21"], s.Revisions["1-28"]
	for _, tc := range []struct {
		r                                                          *Revision
		image, version, profile, ca, disc, td, cluster, mesh, stat string
	}{
		{r21, "docker.io/istio/proxyv2:1.21.6", "1.21.6", "1.14-1.21", "istiod-1-21.istio-system.svc:15012", "istiod-1-21.istio-system.svc:15012", "cluster.local", "Kubernetes", "cluster.local", "1-21"},
		{r28, "docker.io/istio/proxyv2:1.28.10", "1.28.10", "1.22+", "istiod-1-28.istio-system.svc:15012", "istiod-1-28.istio-system.svc:15012", "mesh.example.com", "east", "mesh-east", "1-28"},
	} {
		if tc.r == nil || tc.r.Err != nil {
			t.Fatalf("revision: %+v", tc.r)
		}
		st := tc.r.Settings
		if tc.r.Image != tc.image || tc.r.Version != tc.version || st.IstioVersion().Profile().Name != tc.profile ||
			st.CAAddress() != tc.ca || st.DiscoveryAddress() != tc.disc || st.TrustDomain() != tc.td ||
			st.ClusterID() != tc.cluster || st.MeshID() != tc.mesh || st.Revision() != tc.stat {
			t.Errorf("%s: %s", tc.r.Name, tc.r.Describe())
		}
	}
	// The status annotation of an injected pod records image and revision.
	pod := gatewayPod()
	res := inject.Inject(pod, r28.Settings)
	st, err := inject.ParseStatus(res.Pod.Annotations[inject.AnnotationStatus])
	if err != nil || st.Revision != "1-28" || st.Image != "docker.io/istio/proxyv2:1.28.10" {
		t.Fatalf("status %+v %v (%s)", st, err, res.Decision.Message)
	}
	env := map[string]string{}
	for _, e := range res.Pod.Spec.Containers[0].Env {
		env[e.Name] = e.Value
	}
	if env["CA_ADDR"] != "istiod-1-28.istio-system.svc:15012" || env["TRUST_DOMAIN"] != "mesh.example.com" ||
		env["ISTIO_META_CLUSTER_ID"] != "east" || env["ISTIO_META_MESH_ID"] != "mesh-east" {
		t.Errorf("agent env %v", env)
	}
}

func gatewayPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "gateway-proxy-abc", Namespace: "gloo-system", Labels: map[string]string{"gloo": "gateway-proxy"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "gateway-proxy", Image: "quay.io/solo-io/gloo-envoy-wrapper:1.17.0"}}},
	}
}

func TestSelectPrecedenceAndTags(t *testing.T) {
	s := build(t, inject.DefaultConfig(), inject.Presence{}, twoRevisions(t), tagWebhook("prod", "1-21"), tagWebhook("default", "1-28"))
	if s.Default != "1-28" {
		t.Fatalf("default tag: %q", s.Default)
	}
	ann := func(v string) map[string]string { return map[string]string{inject.AnnotationIstioRevision: v} }
	rev := func(v string) map[string]string { return map[string]string{LabelRev: v} }
	for _, tc := range []struct {
		name                string
		podL, podA, nsL     map[string]string
		want, wantProblemIn string
	}{
		{"nothing: default tag", nil, nil, nil, "1-28", ""},
		{"namespace label", nil, nil, rev("1-21"), "1-21", ""},
		{"pod label beats namespace", rev("1-28"), nil, rev("1-21"), "1-28", ""},
		{"annotation beats pod label", rev("1-28"), ann("1-21"), rev("1-28"), "1-21", ""},
		{"tag resolves", nil, nil, rev("prod"), "1-21", ""},
		{"default tag by name", nil, nil, rev("default"), "1-28", ""},
		{"unknown", nil, nil, rev("1-30"), "", `Istio revision "1-30" from namespace label istio.io/rev is not installed; installed revisions: 1-21, 1-28; tags: default->1-28, prod->1-21`},
		{"unknown annotation", nil, ann("canary"), nil, "", "from pod annotation sds-injector.io/istio-revision"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sel := s.Select(tc.podL, tc.podA, tc.nsL)
			if sel.Revision != tc.want || (tc.wantProblemIn == "") != (sel.Problem == "") || !strings.Contains(sel.Problem, tc.wantProblemIn) {
				t.Errorf("got revision %q problem %q", sel.Revision, sel.Problem)
			}
			if sel.Settings == nil {
				t.Error("settings are never nil")
			}
		})
	}
	// Without a default tag and with two revisions, a pod must name one.
	s2 := build(t, inject.DefaultConfig(), inject.Presence{}, twoRevisions(t))
	if sel := s2.Select(nil, nil, nil); sel.Problem == "" || !strings.Contains(sel.Problem, "no default revision") {
		t.Errorf("problem %q", sel.Problem)
	}
	// One revision is the default.
	s3 := build(t, inject.DefaultConfig(), inject.Presence{}, fixture(t, "1.21.6"))
	if sel := s3.Select(nil, nil, nil); sel.Revision != "1-21" {
		t.Errorf("single revision: %+v", sel)
	}
}

func TestNoIstioFallsBack(t *testing.T) {
	s := build(t, inject.DefaultConfig(), inject.Presence{}, nil)
	sel := s.Select(nil, nil, nil)
	if sel.Problem != "" || sel.Settings != s.Base || sel.Settings.AgentImage() != "docker.io/istio/proxyv2:"+inject.DefaultIstioVersion {
		t.Errorf("%+v", sel)
	}
	if sel := s.Select(nil, nil, map[string]string{LabelRev: "1-21"}); !strings.Contains(sel.Problem, "no Istio revision is installed") {
		t.Errorf("a named revision without Istio: %q", sel.Problem)
	}
}

func TestExplicitConfigWins(t *testing.T) {
	data := []byte("istio: auto\ncaAddress: istiod.corp:15012\ntrustDomain: corp.example\nhub: \"\"\nagentImage: registry.corp/proxyv2@sha256:0123\n")
	cfg, err := inject.ParseConfig(data)
	if err != nil {
		t.Fatal(err)
	}
	explicit, err := ExplicitFields(data)
	if err != nil {
		t.Fatal(err)
	}
	if !explicit.CAAddress || explicit.Hub || !explicit.Istio {
		t.Fatalf("explicit %v", explicit)
	}
	cfg.Hub = inject.DefaultHub // as the chart omits empty strings
	s := build(t, cfg, explicit, twoRevisions(t))
	r := s.Revisions["1-28"].Settings
	if r.CAAddress() != "istiod.corp:15012" || r.TrustDomain() != "corp.example" || r.AgentImage() != "registry.corp/proxyv2@sha256:0123" {
		t.Errorf("explicit values lost: %s", s.Revisions["1-28"].Describe())
	}
	if r.ClusterID() != "east" || r.IstioVersion().String() != "1.28.10" {
		t.Errorf("discovered values lost: %s", s.Revisions["1-28"].Describe())
	}
	// An explicit istioVersion keeps the discovered hub.
	cfg2 := inject.DefaultConfig()
	cfg2.IstioVersion = "1.22.3"
	s2 := build(t, cfg2, inject.Presence{IstioVersion: true}, twoRevisions(t))
	if got := s2.Revisions["1-28"].Image; got != "docker.io/istio/proxyv2:1.22.3" {
		t.Errorf("image %s", got)
	}
}

func TestTagsThatAreNotVersions(t *testing.T) {
	cms := fixture(t, "1.28.10")
	for _, cm := range cms {
		if v, ok := cm.Data["values"]; ok {
			v = strings.Replace(v, `"tag": "1.28.10"`, `"tag": "latest"`, 1)
			v = strings.Replace(v, `"variant": ""`, `"variant": "distroless"`, 1)
			v = strings.Replace(v, `"hub": "docker.io/istio"`, `"hub": "registry.corp/istio"`, 1)
			cm.Data["values"] = v
		}
	}
	cfg := inject.DefaultConfig()
	s := build(t, cfg, inject.Presence{}, cms)
	r := s.Revisions["1-28"]
	if r.Err != nil || r.Image != "registry.corp/istio/proxyv2:latest-distroless" || r.Version != inject.DefaultIstioVersion {
		t.Fatalf("%s", r.Describe())
	}
	if len(r.Notes) != 1 || !strings.Contains(r.Notes[0], `tag "latest" is not an Istio release`) {
		t.Errorf("notes %v", r.Notes)
	}
	// A full proxy image (with "/") is used as is.
	for _, cm := range cms {
		if v, ok := cm.Data["values"]; ok {
			cm.Data["values"] = strings.Replace(v, `"image": "proxyv2"`, `"image": "registry.corp/mirror/proxyv2@sha256:abcd"`, 1)
		}
	}
	if r := build(t, cfg, inject.Presence{}, cms).Revisions["1-28"]; r.Image != "registry.corp/mirror/proxyv2@sha256:abcd" {
		t.Errorf("image %s", r.Image)
	}
}

func TestStale(t *testing.T) {
	old := build(t, inject.DefaultConfig(), inject.Presence{}, fixture(t, "1.21.6"))
	pod := gatewayPod()
	pod.Labels[LabelRev] = "1-21"
	injected := inject.Inject(pod, old.Revisions["1-21"].Settings).Pod
	if _, stale := old.Stale(&injected.ObjectMeta, nil); stale {
		t.Fatal("fresh pod reported stale")
	}
	// Simulated in-place upgrade of revision 1-21 to a new patch release.
	cms := fixture(t, "1.21.6")
	for _, cm := range cms {
		if v, ok := cm.Data["values"]; ok {
			cm.Data["values"] = strings.Replace(v, `"tag": "1.21.6"`, `"tag": "1.21.7"`, 1)
		}
	}
	upgraded := build(t, inject.DefaultConfig(), inject.Presence{}, cms)
	sa, stale := upgraded.Stale(&injected.ObjectMeta, nil)
	if !stale || sa.WantImage != "docker.io/istio/proxyv2:1.21.7" || sa.Image != "docker.io/istio/proxyv2:1.21.6" {
		t.Fatalf("%+v %v", sa, stale)
	}
	// Revision removed.
	gone := build(t, inject.DefaultConfig(), inject.Presence{}, fixture(t, "1.28.10"))
	if sa, stale := gone.Stale(&injected.ObjectMeta, nil); !stale || !strings.Contains(sa.Reason, "no longer usable") {
		t.Fatalf("%+v", sa)
	}
}

// TestStaleIgnoresOtherIdentityProviders: a gateway injected with the spire
// flavor has no Istio agent, so neither an Istio upgrade nor a removed
// revision makes it stale.
func TestStaleIgnoresOtherIdentityProviders(t *testing.T) {
	cfg := inject.DefaultConfig()
	cfg.IdentityProvider.SPIRE = &inject.SPIREConfig{CSIDriver: inject.DefaultSPIRECSIDriver}
	old := build(t, cfg, inject.Presence{}, fixture(t, "1.21.6"))
	pod := gatewayPod()
	pod.Labels[LabelRev] = "1-21"
	pod.Annotations = map[string]string{inject.AnnotationFlavor: string(inject.FlavorSPIRE)}
	res := inject.Inject(pod, old.Revisions["1-21"].Settings)
	st := injectedStatusOf(t, res.Pod)
	if st.IdentityProvider == "" {
		t.Fatalf("the spire pod was not injected as such: %+v (%+v)", st, res.Decision)
	}
	cms := fixture(t, "1.21.6")
	for _, cm := range cms {
		if v, ok := cm.Data["values"]; ok {
			cm.Data["values"] = strings.Replace(v, `"tag": "1.21.6"`, `"tag": "1.21.7"`, 1)
		}
	}
	for name, s := range map[string]*Snapshot{
		"upgraded": build(t, cfg, inject.Presence{}, cms),
		"gone":     build(t, cfg, inject.Presence{}, fixture(t, "1.28.10")),
	} {
		if sa, stale := s.Stale(&res.Pod.ObjectMeta, nil); stale {
			t.Errorf("%s: spire pod reported stale: %+v", name, sa)
		}
	}
}

func injectedStatusOf(t *testing.T, pod *corev1.Pod) *inject.Status {
	t.Helper()
	if pod == nil || pod.Annotations[inject.AnnotationStatus] == "" {
		t.Fatal("pod not injected")
		return nil
	}
	st, err := inject.ParseStatus(pod.Annotations[inject.AnnotationStatus])
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestRevisionUnavailableSparesNonGateways(t *testing.T) {
	s := inject.DefaultConfig().MustResolve()
	app := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "apps"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "nginx"}}}}
	if d := inject.RevisionUnavailable(app, s, "x"); d.Reason != inject.ReasonNotAGateway || d.Warn {
		t.Errorf("app pod: %+v", d)
	}
	if d := inject.RevisionUnavailable(gatewayPod(), s, "revision gone"); d.Reason != inject.ReasonUnknownRevision || !d.Warn || d.Message != "revision gone" {
		t.Errorf("gateway: %+v", d)
	}
}

func TestParseValuesTolerant(t *testing.T) {
	v, err := ParseValues(`{"global": {"tag": 1.22, "hub": "h", "sds": {"token": {"aud": "a"}}, "unknown": [1]}, "revision": ""}`)
	if err != nil || v.Tag != "1.22" || v.Hub != "h" || v.TokenAudience != "a" {
		t.Errorf("%+v %v", v, err)
	}
	if _, err := ParseValues("{not json"); err == nil {
		t.Error("garbage accepted")
	}
	s := build(t, inject.DefaultConfig(), inject.Presence{}, []*corev1.ConfigMap{{
		ObjectMeta: metav1.ObjectMeta{Name: InjectorConfigMap, Namespace: "istio-system"}, Data: map[string]string{"values": "{not json"}}})
	if r := s.Revisions[DefaultRevision]; r == nil || r.Err == nil {
		t.Fatal("a broken revision must be reported")
	}
	if sel := s.Select(nil, nil, nil); sel.Problem == "" {
		t.Error("a broken default revision must not be used silently")
	}
}
