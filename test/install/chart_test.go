package install

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/google/cel-go/cel"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// TestManifestsUpToDate fails when deploy/manifests or deploy/webhook no
// longer match what the chart renders: run `make manifests`.
func TestManifestsUpToDate(t *testing.T) {
	h := helm(t)
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(repoRoot, "test", "helm", "render-manifests.sh"), out)
	cmd.Env = append(os.Environ(), "HELM="+h)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("render-manifests.sh: %v\n%s", err, b)
	}
	for _, dir := range []string{"manifests", "webhook"} {
		want, _ := filepath.Glob(filepath.Join(out, dir, "*.yaml"))
		have, _ := filepath.Glob(filepath.Join(repoRoot, "deploy", dir, "*.yaml"))
		base := func(paths []string) []string {
			var b []string
			for _, p := range paths {
				b = append(b, filepath.Base(p))
			}
			return b
		}
		if !slices.Equal(base(want), base(have)) {
			t.Errorf("deploy/%s holds %v, the chart renders %v: run `make manifests`", dir, base(have), base(want))
			continue
		}
		for _, p := range want {
			w, _ := os.ReadFile(p)
			g, err := os.ReadFile(filepath.Join(repoRoot, "deploy", dir, filepath.Base(p)))
			if err != nil || string(w) != string(g) {
				t.Errorf("deploy/%s/%s differs from the chart's rendering: run `make manifests`", dir, filepath.Base(p))
			}
		}
	}
}

func TestChartLints(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"--set", "certificates.mode=cert-manager"},
		{"--set", "modes.clusterWide.enabled=true,modes.namespace.enabled=false,modes.perGateway.enabled=false"},
	} {
		cmd := exec.Command(helm(t), append([]string{"lint", "--strict", chartDir}, args...)...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("helm lint %v: %v\n%s", args, err, b)
		}
	}
}

// TestSchemaRejectsBadValues: values.schema.json refuses what would break
// the injector or the API server, with the offending path in the message.
func TestSchemaRejectsBadValues(t *testing.T) {
	cases := []struct {
		name, values, wantPath string
	}{
		{"unknown top-level key", "replicas: 3", "additional properties 'replicas'"},
		{"unknown certificate mode", "certificates: {mode: vault}", "/certificates/mode"},
		{"no mode enabled", "modes: {namespace: {enabled: false}, perGateway: {enabled: false}}", "/modes"},
		{"bad failurePolicy", "modes: {namespace: {failurePolicy: Deny}}", "/modes/namespace/failurePolicy"},
		{"timeout above the API server's 30s", "modes: {perGateway: {timeoutSeconds: 45}}", "/modes/perGateway/timeoutSeconds"},
		{"timeout as a string", "modes: {clusterWide: {timeoutSeconds: '5'}}", "/modes/clusterWide/timeoutSeconds"},
		{"unknown reinvocationPolicy", "modes: {namespace: {reinvocationPolicy: Always}}", "/modes/namespace/reinvocationPolicy"},
		{"http2 as a string", "http2: 'off'", "/http2"},
		{"unknown flavor", "config: {flavor: envoy}", "/config/flavor"},
		{"Istio before 1.5", "config: {istioVersion: '1.4.6'}", "/config/istioVersion"},
		{"Istio version as a number", "config: {istioVersion: 1.3}", "/config/istioVersion"},
		{"minor-only Istio version without agentImage", "config: {istioVersion: '1.30'}", "/config/agentImage"},
		{"CA address without a port", "config: {caAddress: istiod.istio-system.svc}", "/config/caAddress"},
		{"blank cluster ID", "config: {clusterID: ' '}", "/config/clusterID"},
		{"unknown istio mode", "config: {istio: on}", "/config/istio"},
		{"bad stale scan interval", "istio: {staleAgentScanInterval: 5 minutes}", "/istio/staleAgentScanInterval"},
		{"trust domain with upper case", "config: {trustDomain: Cluster.Local}", "/config/trustDomain"},
		{"mesh ID with a slash", "config: {meshID: a/b}", "/config/meshID"},
		{"unknown config field", "config: {flavour: sds-agent}", "additional properties 'flavour'"},
		{"native sidecar as a string", "config: {nativeSidecar: 'yes'}", "/config/nativeSidecar"},
		{"profile without containers", "config: {gatewayProfiles: [{name: x, selector: {matchLabels: {app: x}}}]}", "/config/gatewayProfiles/0"},
		{"profile with an empty selector", "config: {gatewayProfiles: [{name: x, selector: {}, containers: [envoy]}]}", "/config/gatewayProfiles/0/selector"},
		{"profile label value that would break CEL", "config: {gatewayProfiles: [{name: x, selector: {matchLabels: {app: \"x') || true || ('\"}}, containers: [envoy]}]}", "/config/gatewayProfiles/0/selector/matchLabels/app"},
		{"profile In without values", "config: {gatewayProfiles: [{name: x, selector: {matchExpressions: [{key: app, operator: In}]}, containers: [envoy]}]}", "/config/gatewayProfiles/0/selector/matchExpressions/0"},
		{"profile with a bad operator", "config: {gatewayProfiles: [{name: x, selector: {matchExpressions: [{key: app, operator: Gt, values: ['1']}]}, containers: [envoy]}]}", "/config/gatewayProfiles/0/selector/matchExpressions/0/operator"},
		{"profile with an unknown flavor", "config: {gatewayProfiles: [{name: x, selector: {matchLabels: {app: x}}, containers: [envoy], flavors: [envoy]}]}", "/config/gatewayProfiles/0/flavors/0"},
		{"profile with an empty flavor list", "config: {gatewayProfiles: [{name: x, selector: {matchLabels: {app: x}}, containers: [envoy], flavors: []}]}", "/config/gatewayProfiles/0/flavors"},
		{"profile with an unknown default flavor", "config: {gatewayProfiles: [{name: x, selector: {matchLabels: {app: x}}, containers: [envoy], defaultFlavor: files}]}", "/config/gatewayProfiles/0/defaultFlavor"},
		{"required container name that would break CEL", "config: {gatewayProfiles: [{name: x, selector: {matchLabels: {app: x}}, containers: [envoy], requireContainers: [\"a']) || true || (['\"]}]}", "/config/gatewayProfiles/0/requireContainers/0"},
		{"glooDropIn as a string", "config: {glooDropIn: 'yes'}", "/config/glooDropIn"},
		{"zero replicas", "replicaCount: 0", "/replicaCount"},
		{"bad anti-affinity", "antiAffinity: always", "/antiAffinity"},
		{"image pull secret without name", "imagePullSecrets: [{secret: regcred}]", "/imagePullSecrets/0"},
		{"image digest not sha256", "image: {digest: latest}", "/image/digest"},
		{"pod label overriding the opt-out", "podLabels: {sds-injector.io/inject: 'true'}", "/podLabels"},
		{"bad duration", "certificates: {certManager: {duration: 90d}}", "/certificates/certManager/duration"},
		{"onError typo", "onError: ignore", "/onError"},
		{"PDB maxUnavailable 0", "podDisruptionBudget: {maxUnavailable: 0}", "/podDisruptionBudget/maxUnavailable"},
		{"ServiceMonitor label value", "metrics: {serviceMonitor: {labels: {release: 'a b'}}}", "/metrics/serviceMonitor/labels/release"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "values.yaml")
			if err := os.WriteFile(f, []byte(tc.values+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := helmTemplate(t, "-f", f)
			if err == nil {
				t.Fatalf("helm template accepted %q", tc.values)
			}
			if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tc.wantPath) {
				t.Errorf("want a schema error naming %q, got:\n%v", tc.wantPath, err)
			}
			lint := exec.Command(helm(t), "lint", chartDir, "-f", f)
			if b, err := lint.CombinedOutput(); err == nil {
				t.Errorf("helm lint accepted %q:\n%s", tc.values, b)
			}
		})
	}
}

func TestSchemaAcceptsGoodValues(t *testing.T) {
	for _, values := range []string{
		"config: {istioVersion: '1.30', agentImage: 'registry.example.com/istio/proxyv2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'}",
		"config: {istioVersion: 'v1.21.6', flavor: istio-agent-files, nativeSidecar: true, meshID: mesh1, clusterID: east, trustDomain: example.org}",
		"config: {gatewayProfiles: [{name: team-edge, selector: {matchLabels: {app.kubernetes.io/name: team-edge}, matchExpressions: [{key: tier, operator: In, values: [edge]}, {key: canary, operator: DoesNotExist}]}, namespaces: [edge], containers: [envoy]}]}",
		"podDisruptionBudget: {minAvailable: 1, maxUnavailable: null}",
		"podDisruptionBudget: {maxUnavailable: '50%'}",
		"antiAffinity: hard\nimagePullSecrets: [{name: regcred}]\nlogLevel: debug",
		"image: {digest: 'sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'}",
		"metrics: {serviceMonitor: {enabled: true, labels: {release: prometheus}}}",
		"global: {imageRegistry: example.com}",
	} {
		f := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(f, []byte(values+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := helmTemplate(t, "-f", f); err != nil {
			t.Errorf("%q: %v", values, err)
		}
	}
}

// TestRBACLeastPrivilege: no wildcard anywhere, no cluster-wide Secret
// access, Secrets and webhook configurations only by name (create, which
// cannot be named, only in the injector's namespace), and no API access at
// all in cert-manager mode.
func TestRBACLeastPrivilege(t *testing.T) {
	allModes := "modes.namespace.enabled=true,modes.perGateway.enabled=true,modes.clusterWide.enabled=true"
	for _, certs := range []string{"self-managed", "cert-manager"} {
		t.Run(certs, func(t *testing.T) {
			r := mustRender(t, "--set", "certificates.mode="+certs, "--set", allModes)
			// Istio discovery (config.istio: auto, the default) has its own
			// read-only objects, checked by TestRBACIstioDiscovery.
			roles := withoutDiscovery(all[*rbacv1.Role](r))
			clusterRoles := withoutDiscovery(all[*rbacv1.ClusterRole](r))
			sa := one[*corev1.ServiceAccount](t, r, "")
			if certs == "cert-manager" {
				if len(roles)+len(clusterRoles)+len(withoutDiscovery(all[*rbacv1.RoleBinding](r)))+len(withoutDiscovery(all[*rbacv1.ClusterRoleBinding](r))) != 0 {
					t.Error("cert-manager mode needs no RBAC")
				}
				r = mustRender(t, "--set", "certificates.mode="+certs, "--set", allModes, "--set", "config.istio=off")
				sa := one[*corev1.ServiceAccount](t, r, "")
				dep := one[*appsv1.Deployment](t, r, "")
				if len(all[*rbacv1.Role](r))+len(all[*rbacv1.ClusterRole](r))+len(all[*rbacv1.RoleBinding](r))+len(all[*rbacv1.ClusterRoleBinding](r)) != 0 {
					t.Error("cert-manager mode without Istio discovery needs no RBAC")
				}
				if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken ||
					dep.Spec.Template.Spec.AutomountServiceAccountToken == nil || *dep.Spec.Template.Spec.AutomountServiceAccountToken {
					t.Error("cert-manager mode must not mount an API token")
				}
				return
			}
			if len(roles) != 1 || len(clusterRoles) != 1 {
				t.Fatalf("want one Role and one ClusterRole, got %d and %d", len(roles), len(clusterRoles))
			}
			var rules []rbacv1.PolicyRule
			for _, ro := range roles {
				if ro.Namespace != injectorNS {
					t.Errorf("Role %s is in namespace %q", ro.Name, ro.Namespace)
				}
				rules = append(rules, ro.Rules...)
			}
			for _, cr := range clusterRoles {
				if cr.AggregationRule != nil {
					t.Error("aggregated ClusterRoles are not least privilege")
				}
				for _, rule := range cr.Rules {
					if slices.Contains(rule.Resources, "secrets") {
						t.Errorf("ClusterRole %s grants Secret access cluster-wide", cr.Name)
					}
					if !slices.Equal(rule.Resources, []string{"mutatingwebhookconfigurations"}) {
						t.Errorf("ClusterRole %s grants %v", cr.Name, rule.Resources)
					}
					wantNames := []string{"sds-injector-namespace", "sds-injector-per-gateway", "sds-injector-cluster-wide"}
					if !slices.Equal(rule.ResourceNames, wantNames) {
						t.Errorf("webhook configurations must be named: got %v, want %v", rule.ResourceNames, wantNames)
					}
					if slices.Contains(rule.Verbs, "list") || slices.Contains(rule.Verbs, "delete") || slices.Contains(rule.Verbs, "create") {
						t.Errorf("ClusterRole verbs %v exceed get/update/watch", rule.Verbs)
					}
				}
				rules = append(rules, cr.Rules...)
			}
			for _, rule := range rules {
				for _, field := range [][]string{rule.Verbs, rule.APIGroups, rule.Resources, rule.ResourceNames, rule.NonResourceURLs} {
					for _, v := range field {
						if strings.Contains(v, "*") {
							t.Errorf("wildcard %q in rule %+v", v, rule)
						}
					}
				}
				if slices.Contains(rule.Resources, "secrets") {
					named := slices.Equal(rule.ResourceNames, []string{"sds-injector-tls"})
					createOnly := slices.Equal(rule.Verbs, []string{"create"}) && len(rule.ResourceNames) == 0
					if !named && !createOnly {
						t.Errorf("Secret rule %+v is neither limited to the injector's Secret nor create-only", rule)
					}
					if slices.Contains(rule.Verbs, "list") || slices.Contains(rule.Verbs, "delete") {
						t.Errorf("Secret rule %+v grants list/delete", rule)
					}
				}
			}
			if *sa.AutomountServiceAccountToken != true {
				t.Error("self-managed mode needs the API token")
			}
		})
	}
}

func TestDeploymentHardening(t *testing.T) {
	for _, certs := range []string{"self-managed", "cert-manager"} {
		t.Run(certs, func(t *testing.T) {
			r := mustRender(t, "--set", "certificates.mode="+certs, "--set", "imagePullSecrets[0].name=regcred")
			dep := one[*appsv1.Deployment](t, r, "sds-injector")
			spec := dep.Spec.Template.Spec
			if *dep.Spec.Replicas != 2 {
				t.Errorf("replicas %d, want 2", *dep.Spec.Replicas)
			}
			if dep.Spec.Template.Labels[inject.LabelInject] != "false" {
				t.Error("the injector's pods must carry the opt-out label")
			}
			if psc := spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil {
				t.Error("pod must run as non-root with a seccomp profile")
			}
			if len(spec.Containers) != 1 {
				t.Fatal("one container")
			}
			c := spec.Containers[0]
			sc := c.SecurityContext
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("container securityContext not hardened: %+v", sc)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Error("resources must be set")
			}
			if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe == nil {
				t.Error("probes missing")
			}
			if spec.Affinity == nil || spec.Affinity.PodAntiAffinity == nil {
				t.Error("soft anti-affinity is the default")
			}
			if !slices.Equal(spec.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "regcred"}}) {
				t.Errorf("imagePullSecrets %v", spec.ImagePullSecrets)
			}
			var certVol *corev1.Volume
			for i := range spec.Volumes {
				if spec.Volumes[i].Name == "certs" {
					certVol = &spec.Volumes[i]
				}
			}
			if certVol == nil {
				t.Fatal("no certs volume")
			}
			args := strings.Join(c.Args, " ")
			if certs == "self-managed" {
				if certVol.EmptyDir == nil {
					t.Error("self-managed mode writes its certificate into an emptyDir (read-only root filesystem)")
				}
				for _, want := range []string{"--cert-mode=self-managed", "--cert-secret=sds-injector-tls", "--service-name=sds-injector",
					"--webhook-configurations=sds-injector-namespace,sds-injector-per-gateway", "--namespace=$(POD_NAMESPACE)"} {
					if !strings.Contains(args, want) {
						t.Errorf("args %q lack %s", args, want)
					}
				}
			} else {
				if certVol.Secret == nil || certVol.Secret.SecretName != "sds-injector-tls" {
					t.Error("cert-manager mode mounts the serving Certificate's Secret")
				}
				if !strings.Contains(args, "--cert-mode=files") {
					t.Errorf("args %q", args)
				}
			}
			pdb := one[*policyv1.PodDisruptionBudget](t, r, "sds-injector")
			if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
				t.Error("PDB maxUnavailable 1 by default")
			}
			metrics := one[*corev1.Service](t, r, "sds-injector-metrics")
			if metrics.Spec.Ports[0].Port != 8080 {
				t.Error("metrics Service port")
			}
			if len(unstructuredOfKind(r, "ServiceMonitor")) != 0 {
				t.Error("ServiceMonitor is opt-in")
			}
		})
	}
	t.Run("options", func(t *testing.T) {
		r := mustRender(t, "--set", "antiAffinity=hard,replicaCount=3,podDisruptionBudget.minAvailable=2,podDisruptionBudget.maxUnavailable=null,metrics.serviceMonitor.enabled=true,image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
		dep := one[*appsv1.Deployment](t, r, "sds-injector")
		if *dep.Spec.Replicas != 3 || dep.Spec.Template.Spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
			t.Error("replicas/hard anti-affinity not applied")
		}
		if !strings.Contains(dep.Spec.Template.Spec.Containers[0].Image, "@sha256:") {
			t.Error("digest not applied")
		}
		pdb := one[*policyv1.PodDisruptionBudget](t, r, "sds-injector")
		if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 2 || pdb.Spec.MaxUnavailable != nil {
			t.Error("PDB minAvailable not applied")
		}
		sm := unstructuredOfKind(r, "ServiceMonitor")
		if len(sm) != 1 || sm[0].GetAPIVersion() != "monitoring.coreos.com/v1" {
			t.Fatal("ServiceMonitor not rendered")
		}
	})
}

// TestConfigMatchesEngine: the chart's default config is exactly the
// engine's built-in defaults plus Istio discovery (and sets none of the
// fields discovery fills), and the chart's values reach the engine.
func TestConfigMatchesEngine(t *testing.T) {
	cm := one[*corev1.ConfigMap](t, mustRender(t), "sds-injector")
	cfg, err := inject.ParseConfig([]byte(cm.Data["config.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"istioVersion", "hub", "agentImage", "caAddress", "discoveryAddress", "clusterID", "trustDomain", "meshID", "tokenAudience", "clusterDomain"} {
		if strings.Contains(cm.Data["config.yaml"], f+":") {
			t.Errorf("the chart's default config sets %s, which Istio discovery would then not fill", f)
		}
	}
	want := inject.DefaultConfig()
	want.Istio = inject.IstioAuto
	// The one intended difference: the chart pins the agent to its own
	// release (the binary does the same with its version; the engine's
	// built-in default is a mutable tag).
	want.SDSAgentImage = "ghcr.io/sds-injector/sds-agent:" + chartAppVersion(t)
	if !equality.Semantic.DeepEqual(cfg, want) {
		t.Errorf("chart defaults differ from the engine's:\nchart  %+v\nengine %+v", cfg, inject.DefaultConfig())
	}

	f := filepath.Join(t.TempDir(), "values.yaml")
	values := `config:
  flavor: istio-agent-files
  istioVersion: "1.21.6"
  agentImage: registry.example.com/istio/proxyv2:1.21.6-distroless
  caAddress: istiod-1-21.istio-system.svc:15012
  clusterID: east
  trustDomain: example.org
  meshID: mesh1
  nativeSidecar: true
  gatewayProfiles:
  - name: team-edge
    selector: {matchLabels: {app.kubernetes.io/name: team-edge}}
    containers: [envoy]
`
	if err := os.WriteFile(f, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	cm = one[*corev1.ConfigMap](t, mustRender(t, "-f", f), "sds-injector")
	cfg, err = inject.ParseConfig([]byte(cm.Data["config.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Resolve(); err != nil {
		t.Fatal(err)
	}
	if cfg.Flavor != inject.FlavorIstioAgentFiles || cfg.IstioVersion != "1.21.6" || cfg.AgentImage != "registry.example.com/istio/proxyv2:1.21.6-distroless" ||
		cfg.CAAddress != "istiod-1-21.istio-system.svc:15012" || cfg.ClusterID != "east" || cfg.TrustDomain != "example.org" ||
		cfg.MeshID != "mesh1" || !cfg.NativeSidecar || len(cfg.GatewayProfiles) != 1 || cfg.GatewayProfiles[0].Name != "team-edge" {
		t.Errorf("values did not reach the engine: %+v", cfg)
	}
}

// TestCertManagerObjects: the cert-manager mode's issuers and certificates,
// read with cert-manager's API types.
func TestCertManagerObjects(t *testing.T) {
	r := mustRender(t, "--set", "certificates.mode=cert-manager,modes.clusterWide.enabled=true")
	selfSigned := one[*cmapi.Issuer](t, r, "sds-injector-selfsigned")
	if selfSigned.Spec.SelfSigned == nil {
		t.Error("the root issuer must be self-signed")
	}
	ca := one[*cmapi.Certificate](t, r, "sds-injector-ca")
	if !ca.Spec.IsCA || ca.Spec.IssuerRef.Name != selfSigned.Name || ca.Spec.IssuerRef.Kind != cmapi.IssuerKind {
		t.Errorf("CA certificate %+v", ca.Spec)
	}
	if ca.Spec.Subject == nil || len(ca.Spec.Subject.Organizations) == 0 || ca.Spec.CommonName == "" {
		t.Error("the CA certificate needs a subject")
	}
	caIssuer := one[*cmapi.Issuer](t, r, "sds-injector-ca")
	if caIssuer.Spec.CA == nil || caIssuer.Spec.CA.SecretName != ca.Spec.SecretName {
		t.Error("the CA issuer must sign with the CA certificate's Secret")
	}
	serving := one[*cmapi.Certificate](t, r, "sds-injector-serving")
	if serving.Spec.IssuerRef.Name != caIssuer.Name || serving.Spec.IsCA {
		t.Errorf("serving certificate %+v", serving.Spec)
	}
	for _, c := range []*cmapi.Certificate{ca, serving} {
		pk := c.Spec.PrivateKey
		if pk == nil || pk.Algorithm != cmapi.ECDSAKeyAlgorithm || pk.Size != 256 {
			t.Errorf("%s: want ECDSA P-256, got %+v", c.Name, pk)
		}
	}
	if !slices.Equal(serving.Spec.DNSNames, []string{"sds-injector.sds-injector.svc", "sds-injector.sds-injector.svc.cluster.local"}) {
		t.Errorf("dnsNames %v", serving.Spec.DNSNames)
	}
	if !slices.Contains(serving.Spec.Usages, cmapi.UsageServerAuth) {
		t.Error("serving certificate needs server auth")
	}
	dep := one[*appsv1.Deployment](t, r, "sds-injector")
	for _, v := range dep.Spec.Template.Spec.Volumes {
		if v.Name == "certs" && (v.Secret == nil || v.Secret.SecretName != serving.Spec.SecretName) {
			t.Error("the Deployment must mount the serving Certificate's Secret")
		}
	}
	mwcs := all[*admissionregistrationv1.MutatingWebhookConfiguration](r)
	if len(mwcs) != 3 {
		t.Fatalf("%d webhook configurations", len(mwcs))
	}
	for _, m := range mwcs {
		if m.Annotations[cmapi.WantInjectAnnotation] != "sds-injector/sds-injector-serving" {
			t.Errorf("%s: annotation %q", m.Name, m.Annotations[cmapi.WantInjectAnnotation])
		}
	}
	if len(all[*cmapi.Certificate](mustRender(t))) != 0 {
		t.Error("self-managed mode renders no cert-manager objects")
	}
}

// TestWebhookValues: modes select and combine, and the per-mode
// failurePolicy and timeout reach the webhook configurations.
func TestWebhookValues(t *testing.T) {
	r := mustRender(t, "--set", "modes.namespace.enabled=false,modes.perGateway.failurePolicy=Ignore,modes.perGateway.timeoutSeconds=3,modes.clusterWide.enabled=true,modes.clusterWide.failurePolicy=Fail,modes.clusterWide.timeoutSeconds=10,modes.clusterWide.reinvocationPolicy=IfNeeded,http2=false")
	mwcs := all[*admissionregistrationv1.MutatingWebhookConfiguration](r)
	var names []string
	for _, m := range mwcs {
		names = append(names, m.Name)
		for _, w := range m.Webhooks {
			if len(w.ClientConfig.CABundle) != 0 {
				t.Error("no caBundle in rendered configurations")
			}
			want := map[string]struct {
				p admissionregistrationv1.FailurePolicyType
				s int32
			}{"sds-injector-per-gateway": {admissionregistrationv1.Ignore, 3}, "sds-injector-cluster-wide": {admissionregistrationv1.Fail, 10}}[m.Name]
			if *w.FailurePolicy != want.p || *w.TimeoutSeconds != want.s {
				t.Errorf("%s/%s: failurePolicy %s timeout %d, want %s %d", m.Name, w.Name, *w.FailurePolicy, *w.TimeoutSeconds, want.p, want.s)
			}
			wantRe := map[string]admissionregistrationv1.ReinvocationPolicyType{
				"sds-injector-per-gateway": admissionregistrationv1.NeverReinvocationPolicy, "sds-injector-cluster-wide": admissionregistrationv1.IfNeededReinvocationPolicy,
			}[m.Name]
			if w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != wantRe {
				t.Errorf("%s/%s: reinvocationPolicy %v, want %s", m.Name, w.Name, w.ReinvocationPolicy, wantRe)
			}
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"sds-injector-cluster-wide", "sds-injector-per-gateway"}) {
		t.Errorf("configurations %v", names)
	}
	dep := one[*appsv1.Deployment](t, r, "sds-injector")
	if !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, "--webhook-configurations=sds-injector-per-gateway,sds-injector-cluster-wide") {
		t.Errorf("self-managed mode must maintain exactly the enabled configurations: %v", dep.Spec.Template.Spec.Containers[0].Args)
	}
	if !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, "--http2=false") {
		t.Errorf("http2=false must reach serve: %v", dep.Spec.Template.Spec.Containers[0].Args)
	}
	if args := one[*appsv1.Deployment](t, mustRender(t), "sds-injector").Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--http2=true") {
		t.Errorf("the default must serve HTTP/2: %v", args)
	}

	// Another release name and namespace move every reference.
	out, err := helmTemplate(t, "--set", "modes.clusterWide.enabled=true", "--set", "config.excludedNamespaces={kube-system,monitoring}")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range all[*admissionregistrationv1.MutatingWebhookConfiguration](parseManifests(t, out)) {
		for _, w := range m.Webhooks {
			found := false
			for _, e := range w.NamespaceSelector.MatchExpressions {
				if e.Key == "kubernetes.io/metadata.name" {
					found = slices.Equal(e.Values, []string{"kube-system", "monitoring", "sds-injector"})
				}
			}
			if !found {
				t.Errorf("%s: namespaceSelector must exclude config.excludedNamespaces and the release namespace: %+v", w.Name, w.NamespaceSelector)
			}
		}
	}
}

// TestClusterWideCELExtraProfiles evaluates the generated condition, which
// namespace and cluster-wide mode share, with CEL for the built-in and an
// extra profile (the API server runs it for real in TestInstallSelfManaged
// and test/integration).
func TestClusterWideCELExtraProfiles(t *testing.T) {
	f := filepath.Join(t.TempDir(), "values.yaml")
	values := `modes: {clusterWide: {enabled: true}}
config:
  gatewayProfiles:
  - name: team-edge
    selector:
      matchLabels: {app.kubernetes.io/name: team-edge-envoy}
      matchExpressions:
      - {key: tier, operator: In, values: [edge, dmz]}
      - {key: canary, operator: DoesNotExist}
      - {key: track, operator: NotIn, values: [beta]}
    namespaces: [edge]
    containers: [envoy]
  - name: any-ns
    selector: {matchExpressions: [{key: example.com/edge-proxy, operator: Exists}]}
    containers: [proxy]
`
	if err := os.WriteFile(f, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	evalPod := celCondition(t, gatewayCondition(t, mustRender(t, "-f", f)))
	eval := func(ns string, labels, annotations map[string]string) bool {
		pod := &corev1.Pod{}
		pod.Namespace, pod.Labels, pod.Annotations = ns, labels, annotations
		pod.Spec.Containers = []corev1.Container{{Name: "main"}} // the API server admits no pod without one
		return evalPod(pod)
	}
	edge := map[string]string{"app.kubernetes.io/name": "team-edge-envoy", "tier": "edge"}
	with := func(m map[string]string, k, v string) map[string]string {
		out := map[string]string{}
		for a, b := range m {
			out[a] = b
		}
		out[k] = v
		return out
	}
	for _, tc := range []struct {
		name        string
		ns          string
		labels, ann map[string]string
		want        bool
	}{
		{"extra profile", "edge", edge, nil, true},
		{"extra profile in another namespace", "other", edge, nil, false},
		{"extra profile, tier not in set", "edge", with(edge, "tier", "core"), nil, false},
		{"extra profile, excluded label present", "edge", with(edge, "canary", "1"), nil, false},
		{"extra profile, NotIn value", "edge", with(edge, "track", "beta"), nil, false},
		{"extra profile, other NotIn value", "edge", with(edge, "track", "stable"), nil, true},
		{"Exists profile", "anywhere", map[string]string{"example.com/edge-proxy": ""}, nil, true},
		{"built-in Gloo profile", "x", map[string]string{"gloo": "gateway-proxy"}, nil, true},
		{"built-in kgateway profile", "x", map[string]string{"kgateway": "kube-gateway"}, nil, true},
		{"built-in Gloo Gateway v2 profile", "x", map[string]string{"gloo": "kube-gateway"}, nil, true},
		{"app=envoy without Contour's containers", "projectcontour", map[string]string{"app": "envoy"}, nil, false},
		{"explicit annotation opt-in", "x", nil, map[string]string{"sds-injector.io/inject": "true"}, true},
		{"explicit label opt-in", "x", map[string]string{"sds-injector.io/inject": "true"}, nil, true},
		// A value the engine refuses reaches it, so the pod is denied with what to fix.
		{"label with an invalid value", "x", map[string]string{"sds-injector.io/inject": "yes"}, nil, true},
		{"annotation with an invalid value", "x", nil, map[string]string{"sds-injector.io/inject": "True"}, true},
		{"annotation opt-out on an ordinary pod", "x", map[string]string{"app": "web"}, map[string]string{"sds-injector.io/inject": "false"}, false},
		{"generic gateway-container annotation", "x", map[string]string{"app": "web"}, map[string]string{"sds-injector.io/gateway-container": "main"}, true},
		{"ordinary pod", "x", map[string]string{"app": "web"}, nil, false},
		{"pod without labels", "x", nil, nil, false},
	} {
		if got := eval(tc.ns, tc.labels, tc.ann); got != tc.want {
			t.Errorf("%s: condition %v, want %v", tc.name, got, tc.want)
		}
	}

	// disableBuiltinProfiles drops the built-in labels from the condition.
	r := mustRender(t, "--set", "modes.namespace.enabled=true,modes.clusterWide.enabled=true,config.disableBuiltinProfiles=true")
	if c := gatewayCondition(t, r); strings.Contains(c, "gloo") || !strings.Contains(c, "gateway-container") {
		t.Errorf("disableBuiltinProfiles: %s", c)
	}
}

// TestClusterWideCELBuiltinProfiles checks the cluster-wide condition
// against the engine's own built-in profiles: a pod each profile recognises
// must reach the webhook, and a profile's requireContainers must be honoured
// (Contour's quickstart: app=envoy alone is not enough, in any namespace).
func TestClusterWideCELBuiltinProfiles(t *testing.T) {
	f := filepath.Join(t.TempDir(), "values.yaml")
	values := `modes: {clusterWide: {enabled: true}}
config:
  gatewayProfiles:
  - name: sidecar-pinned
    selector: {matchLabels: {app: edge}}
    requireContainers: [edge-init, edge-helper]
    containers: [envoy]
`
	if err := os.WriteFile(f, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	eval := celCondition(t, gatewayCondition(t, mustRender(t, "-f", f)))
	podFor := func(p inject.GatewayProfile, ns string) *corev1.Pod {
		pod := &corev1.Pod{}
		pod.Namespace, pod.Labels = ns, map[string]string{}
		for k, v := range p.Selector.MatchLabels {
			pod.Labels[k] = v
		}
		for _, e := range p.Selector.MatchExpressions {
			switch e.Operator {
			case "In":
				pod.Labels[e.Key] = e.Values[0]
			case "Exists":
				pod.Labels[e.Key] = ""
			}
		}
		container := "envoy"
		if len(p.Containers) > 0 {
			container = p.Containers[0]
		}
		pod.Spec.Containers = []corev1.Container{{Name: container, Image: "envoyproxy/envoy:v1.36.0"}}
		return pod
	}
	profiles := append(inject.BuiltinProfiles(), inject.GatewayProfile{
		Name: "sidecar-pinned", Selector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "edge"}},
		RequireContainers: []string{"edge-init", "edge-helper"}, Containers: []string{"envoy"},
	})
	for _, p := range profiles {
		ns := "some-namespace"
		if len(p.Namespaces) > 0 {
			ns = p.Namespaces[0]
		}
		if len(p.RequireContainers) == 0 {
			if !eval(podFor(p, ns)) {
				t.Errorf("%s: a pod the profile recognises does not reach the webhook", p.Name)
			}
			continue
		}
		if eval(podFor(p, ns)) {
			t.Errorf("%s: a pod without any of %v reaches the webhook", p.Name, p.RequireContainers)
		}
		for _, name := range p.RequireContainers {
			pod := podFor(p, ns)
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: name})
			if !eval(pod) {
				t.Errorf("%s: a pod with container %s does not reach the webhook", p.Name, name)
			}
			pod = podFor(p, ns)
			pod.Spec.InitContainers = []corev1.Container{{Name: name}}
			if !eval(pod) {
				t.Errorf("%s: a pod with init container %s does not reach the webhook", p.Name, name)
			}
		}
	}
}

// celCondition compiles a matchCondition expression and returns a function
// evaluating it for a pod (request.namespace is the pod's namespace).
func celCondition(t *testing.T, cond string) func(*corev1.Pod) bool {
	t.Helper()
	env, err := cel.NewEnv(cel.Variable("object", cel.DynType), cel.Variable("request", cel.DynType))
	if err != nil {
		t.Fatal(err)
	}
	ast, iss := env.Compile(cond)
	if iss.Err() != nil {
		t.Fatalf("%v\n%s", iss.Err(), cond)
	}
	prg, err := env.Program(ast)
	if err != nil {
		t.Fatal(err)
	}
	return func(pod *corev1.Pod) bool {
		t.Helper()
		obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(pod)
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := prg.Eval(map[string]any{"object": obj, "request": map[string]any{"namespace": pod.Namespace}})
		if err != nil {
			t.Fatalf("%v\n%s", err, cond)
		}
		return out.Value().(bool)
	}
}

func gatewayCondition(t *testing.T, r *rendered) string {
	t.Helper()
	var exprs []string
	for _, name := range []string{"sds-injector-cluster-wide", "sds-injector-namespace"} {
		mwc := one[*admissionregistrationv1.MutatingWebhookConfiguration](t, r, name)
		for _, c := range mwc.Webhooks[0].MatchConditions {
			if c.Name == "looks-like-a-gateway" {
				exprs = append(exprs, c.Expression)
			}
		}
		if len(exprs) == 0 || len(exprs) > 2 {
			t.Fatalf("%s: want one looks-like-a-gateway condition", name)
		}
	}
	if len(exprs) != 2 || exprs[0] != exprs[1] {
		t.Fatalf("namespace and cluster-wide mode must share one looks-like-a-gateway condition:\n%s", strings.Join(exprs, "\n---\n"))
	}
	return exprs[0]
}

// withoutDiscovery drops the Istio discovery RBAC objects.
func withoutDiscovery[T interface{ GetName() string }](objs []T) []T {
	var out []T
	for _, o := range objs {
		if !strings.HasSuffix(o.GetName(), "-istio-discovery") {
			out = append(out, o)
		}
	}
	return out
}

// TestRBACIstioDiscovery: discovery reads ConfigMaps only in the Istio
// namespace, lists and watches namespaces and webhook configurations, lists
// pods only for the stale-agent scan, and never writes anything.
func TestRBACIstioDiscovery(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		istioNS   string
		podList   bool
		discovery bool
	}{
		{nil, "istio-system", true, true},
		{[]string{"--set", "istio.namespace=mesh", "--set", "istio.staleAgentScanInterval=0s", "--set", "certificates.mode=cert-manager"}, "mesh", false, true},
		{[]string{"--set", "config.istio=off"}, "", false, false},
	} {
		r := mustRender(t, tc.args...)
		var roles []*rbacv1.Role
		var crs []*rbacv1.ClusterRole
		for _, ro := range all[*rbacv1.Role](r) {
			if strings.HasSuffix(ro.Name, "-istio-discovery") {
				roles = append(roles, ro)
			}
		}
		for _, cr := range all[*rbacv1.ClusterRole](r) {
			if strings.HasSuffix(cr.Name, "-istio-discovery") {
				crs = append(crs, cr)
			}
		}
		dep := one[*appsv1.Deployment](t, r, "")
		args := strings.Join(dep.Spec.Template.Spec.Containers[0].Args, " ")
		if !tc.discovery {
			if len(roles)+len(crs) != 0 || strings.Contains(args, "--istio-namespace") {
				t.Errorf("%v: discovery RBAC or flags without istio: auto", tc.args)
			}
			continue
		}
		if len(roles) != 1 || len(crs) != 1 {
			t.Fatalf("%v: want one discovery Role and ClusterRole, got %d and %d", tc.args, len(roles), len(crs))
		}
		if roles[0].Namespace != tc.istioNS || !strings.Contains(args, "--istio-namespace="+tc.istioNS) {
			t.Errorf("%v: Role in %q, args %q", tc.args, roles[0].Namespace, args)
		}
		if len(roles[0].Rules) != 1 || !slices.Equal(roles[0].Rules[0].Resources, []string{"configmaps"}) ||
			!slices.Equal(roles[0].Rules[0].Verbs, []string{"get", "list", "watch"}) {
			t.Errorf("Role rules %+v", roles[0].Rules)
		}
		pods := false
		for _, rule := range crs[0].Rules {
			for _, v := range rule.Verbs {
				if v != "list" && v != "watch" {
					t.Errorf("ClusterRole verb %q in %+v", v, rule)
				}
			}
			switch {
			case slices.Equal(rule.Resources, []string{"namespaces"}), slices.Equal(rule.Resources, []string{"mutatingwebhookconfigurations"}):
			case slices.Equal(rule.Resources, []string{"pods"}) && slices.Equal(rule.Verbs, []string{"list"}):
				pods = true
			default:
				t.Errorf("ClusterRole grants %+v", rule)
			}
			for _, field := range [][]string{rule.Verbs, rule.APIGroups, rule.Resources} {
				for _, v := range field {
					if strings.Contains(v, "*") {
						t.Errorf("wildcard %q in rule %+v", v, rule)
					}
				}
			}
		}
		if pods != tc.podList {
			t.Errorf("%v: pod list granted %v, want %v", tc.args, pods, tc.podList)
		}
		if sa := one[*corev1.ServiceAccount](t, r, ""); !*sa.AutomountServiceAccountToken || !*dep.Spec.Template.Spec.AutomountServiceAccountToken {
			t.Errorf("%v: discovery needs the API token", tc.args)
		}
	}
}
