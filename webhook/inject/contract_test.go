package inject

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestAgentContract checks the injected spec against the istio-agent
// contract as the reference documents it (literal paths and names, not
// this package's constants), for every example gateway and every flavor,
// Istio profile and placement. Golden files pin the exact output; this test
// says which parts of it matter and why.
func TestAgentContract(t *testing.T) {
	gateways := map[string]string{
		examplesDir + "/gloo-gateway-proxy.yaml":  "gateway-proxy",
		examplesDir + "/envoy-gateway-proxy.yaml": "envoy",
		matrixFilesSource:                         "emissary-ingress",
	}
	covered := map[Flavor]int{}
	for file, gwName := range gateways {
		for _, flavor := range Flavors {
			for _, version := range matrixVersions {
				for _, native := range []bool{false, true} {
					name := fmt.Sprintf("%s/%s/%s/native=%t", file, flavor, version, native)
					t.Run(name, func(t *testing.T) {
						c := DefaultConfig()
						c.Flavor, c.IstioVersion, c.NativeSidecar = flavor, version, native
						s := c.MustResolve()
						pod := readPod(t, file)
						res := Inject(pod, s)
						match, _ := s.matchGateway(pod)
						if match.spec != nil && !match.spec.allows(flavor) {
							// A gateway that cannot consume the flavor is
							// turned away, not given a useless agent.
							if res.Decision.Reason != ReasonFlavorUnsupported || !res.Decision.Warn {
								t.Fatalf("profile %s cannot use %s, yet: %+v", match.profile, flavor, res.Decision)
							}
							return
						}
						if res.Decision.Outcome != OutcomeInjected {
							t.Fatalf("%+v", res.Decision)
						}
						covered[flavor]++
						checkContract(t, res.Pod, flavor, version, native, gwName)
					})
				}
			}
		}
	}
	for _, f := range Flavors {
		if covered[f] == 0 {
			t.Errorf("no example gateway consumes flavor %s: its contract is never checked", f)
		}
	}
}

func checkContract(t *testing.T, pod *corev1.Pod, flavor Flavor, version string, native bool, gwName string) {
	t.Helper()
	legacy := version == "1.13.9"
	var agent *corev1.Container
	if native {
		agent = &pod.Spec.InitContainers[0]
		if agent.RestartPolicy == nil || *agent.RestartPolicy != corev1.ContainerRestartPolicyAlways || agent.StartupProbe == nil {
			t.Errorf("native agent needs restartPolicy Always and a startupProbe")
		}
	} else {
		agent = &pod.Spec.Containers[0]
		if agent.Lifecycle == nil || agent.Lifecycle.PostStart == nil || agent.RestartPolicy != nil {
			t.Errorf("classic agent must be first with a postStart wait")
		}
	}
	wantName := map[Flavor]string{FlavorIstioProxy: "istio-proxy", FlavorIstioAgentFiles: "istio-proxy", FlavorSDSAgent: "sds-agent"}[flavor]
	if agent.Name != wantName {
		t.Fatalf("agent container %q, want %q", agent.Name, wantName)
	}
	gw := &pod.Spec.Containers[containerIndex(pod.Spec.Containers, gwName)]

	env := map[string]corev1.EnvVar{}
	for _, e := range agent.Env {
		env[e.Name] = e
	}
	wantValue := map[string]string{"CA_ADDR": "istiod.istio-system.svc:15012", "ISTIO_META_CLUSTER_ID": "Kubernetes", "TRUST_DOMAIN": "cluster.local"}
	wantField := map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "INSTANCE_IP": "status.podIP",
		"SERVICE_ACCOUNT": "spec.serviceAccountName", "HOST_IP": "status.hostIP"}
	if flavor != FlavorSDSAgent {
		wantValue["PILOT_CERT_PROVIDER"] = "istiod"
		wantValue["ISTIO_META_MESH_ID"] = "cluster.local"
		wantValue["PROXY_CONFIG"] = `{"discoveryAddress":"istiod.istio-system.svc:15012"}`
		if _, ok := env["ISTIO_META_WORKLOAD_NAME"]; !ok {
			t.Errorf("ISTIO_META_WORKLOAD_NAME missing")
		}
	}
	for k, v := range wantValue {
		if env[k].Value != v {
			t.Errorf("env %s = %q, want %q", k, env[k].Value, v)
		}
	}
	for k, path := range wantField {
		if e := env[k]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != path {
			t.Errorf("env %s must come from fieldRef %s", k, path)
		}
	}
	// JWT_POLICY was injected up to 1.21 and dropped in 1.22.
	if _, ok := env["JWT_POLICY"]; ok != (flavor != FlavorSDSAgent && version != DefaultIstioVersion) {
		t.Errorf("JWT_POLICY present=%t for %s %s", ok, flavor, version)
	}
	if flavor == FlavorIstioAgentFiles {
		if env["DISABLE_ENVOY"].Value != "true" || env["OUTPUT_CERTS"].Value != "/etc/istio-certs" {
			t.Errorf("files flavor needs DISABLE_ENVOY=true and OUTPUT_CERTS")
		}
	} else if _, ok := env["DISABLE_ENVOY"]; ok {
		t.Errorf("only the files flavor disables Envoy: the stock agent serves SDS only with Envoy enabled")
	}

	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	tok := vols["istio-token"].Projected
	if tok == nil || tok.Sources[0].ServiceAccountToken == nil {
		t.Fatalf("istio-token must be a projected service-account token")
	}
	if sat := tok.Sources[0].ServiceAccountToken; sat.Audience != "istio-ca" || sat.Path != "istio-token" || *sat.ExpirationSeconds != 43200 {
		t.Errorf("istio-token projection %+v", sat)
	}
	if cm := vols["istiod-ca-cert"].ConfigMap; cm == nil || cm.Name != "istio-ca-root-cert" {
		t.Errorf("istiod-ca-cert must be ConfigMap istio-ca-root-cert")
	}
	mounts := func(c *corev1.Container) map[string]string {
		m := map[string]string{}
		for _, vm := range c.VolumeMounts {
			m[vm.MountPath] = vm.Name
		}
		return m
	}
	am, gm := mounts(agent), mounts(gw)
	if am["/var/run/secrets/tokens"] != "istio-token" || am["/var/run/secrets/istio"] != "istiod-ca-cert" {
		t.Errorf("agent token/root mounts: %v", am)
	}
	socketDir, socketVol := "/var/run/secrets/workload-spiffe-uds", "workload-socket"
	if legacy {
		socketDir, socketVol = "/etc/istio/proxy", "istio-envoy"
	}
	if flavor == FlavorIstioAgentFiles {
		if gm["/etc/istio-certs"] != "istio-certs" || am["/etc/istio-certs"] != "istio-certs" || vols["istio-certs"].EmptyDir == nil || vols["istio-certs"].EmptyDir.Medium != corev1.StorageMediumMemory {
			t.Errorf("files flavor shares an in-memory istio-certs volume at /etc/istio-certs")
		}
	} else {
		if am[socketDir] != socketVol || gm[socketDir] != socketVol || vols[socketVol].EmptyDir == nil {
			t.Errorf("the SDS socket dir %s (%s emptyDir) must be mounted in agent and gateway: agent %v gateway %v", socketDir, socketVol, am, gm)
		}
	}
	if flavor == FlavorSDSAgent {
		checkSDSAgentContract(t, agent, env, socketDir, legacy)
	}
	if !legacy && flavor != FlavorSDSAgent {
		if am["/var/run/secrets/credential-uds"] != "credential-socket" || am["/var/run/secrets/workload-spiffe-credentials"] != "workload-certs" {
			t.Errorf("Istio 1.14+ agents need credential-socket and workload-certs writable: %v", am)
		}
	}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name != agent.Name && c.Name != gw.Name && len(mounts(&c)) != 0 {
			for _, vm := range c.VolumeMounts {
				if vm.Name == socketVol || vm.Name == "istio-token" {
					t.Errorf("container %s must not receive the agent's volumes", c.Name)
				}
			}
		}
	}
	sc := agent.SecurityContext
	if sc == nil || *sc.RunAsUser != 1337 || !*sc.RunAsNonRoot || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem ||
		len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("agent must be hardened: %+v", sc)
	}
	if len(pod.Spec.InitContainers) > 1 || (!native && len(pod.Spec.InitContainers) != 0) {
		t.Errorf("no init containers besides a native agent (no iptables): %d", len(pod.Spec.InitContainers))
	}
}

// checkSDSAgentContract checks the slim agent's contract as
// docs/sds-agent.md states it (cmd/sds-agent's own tests check the same
// injected container against the agent's configuration loader): exactly the
// variables the agent reads, the image's entrypoint, its probe and wait
// subcommands, and no TCP port.
func checkSDSAgentContract(t *testing.T, agent *corev1.Container, env map[string]corev1.EnvVar, socketDir string, legacy bool) {
	t.Helper()
	want := []string{"CA_ADDR", "POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "SERVICE_ACCOUNT", "HOST_IP",
		"ISTIO_META_CLUSTER_ID", "TRUST_DOMAIN", "SDS_SOCKET_PATH", "TOKEN_PATH", "ROOT_CERT_PATH"}
	if len(agent.Env) != len(want) {
		t.Errorf("sds-agent env has %d variables, want exactly %v", len(agent.Env), want)
	}
	for _, k := range want {
		if _, ok := env[k]; !ok {
			t.Errorf("sds-agent env lacks %s", k)
		}
	}
	socket := socketDir + "/socket"
	if legacy {
		socket = socketDir + "/SDS"
	}
	paths := map[string]string{"SDS_SOCKET_PATH": socket, "TOKEN_PATH": "/var/run/secrets/tokens/istio-token",
		"ROOT_CERT_PATH": "/var/run/secrets/istio/root-cert.pem"}
	for k, v := range paths {
		if env[k].Value != v {
			t.Errorf("%s = %q, want %q", k, env[k].Value, v)
		}
	}
	// Opt-in TCP listeners stay off: the flavor is allowed on hostNetwork
	// pods because it binds no TCP port.
	for _, k := range []string{"SDS_TCP_ADDR", "METRICS_ADDR"} {
		if _, ok := env[k]; ok {
			t.Errorf("%s must not be set by default", k)
		}
	}
	if len(agent.Command) != 0 || len(agent.Args) != 0 || len(agent.Ports) != 0 {
		t.Errorf("sds-agent runs the image entrypoint with no arguments and declares no ports: %v %v %v", agent.Command, agent.Args, agent.Ports)
	}
	probe := []string{"sds-agent", "probe"}
	for name, p := range map[string]*corev1.Probe{"readiness": agent.ReadinessProbe, "startup": agent.StartupProbe} {
		if p == nil {
			continue
		}
		if p.Exec == nil || fmt.Sprint(p.Exec.Command) != fmt.Sprint(probe) {
			t.Errorf("%s probe %+v, want exec %v", name, p.ProbeHandler, probe)
		}
	}
	if agent.Lifecycle != nil {
		if ps := agent.Lifecycle.PostStart; ps == nil || ps.Exec == nil || fmt.Sprint(ps.Exec.Command) != fmt.Sprint([]string{"sds-agent", "wait"}) {
			t.Errorf("postStart %+v, want exec [sds-agent wait]", agent.Lifecycle.PostStart)
		}
	}
}
