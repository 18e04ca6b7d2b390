package flavors

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sds-injector/sds-injector/test/harness"
	"github.com/sds-injector/sds-injector/test/istiod"
	"github.com/sds-injector/sds-injector/test/node"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

type gateway struct {
	name, file, profile, container string
}

// The gateways of the proof: two from docs/examples and a generic one (any
// Envoy, selected with the gateway-container annotation).
var gateways = []gateway{
	{"gloo", "gloo-gateway-proxy.yaml", "gloo-edge", "gateway-proxy"},
	{"envoy-gateway", "envoy-gateway-proxy.yaml", "envoy-gateway", "envoy"},
	{"generic", "", "", "proxy"},
}

func (g gateway) pod(t *testing.T) *corev1.Pod {
	t.Helper()
	if g.file == "" {
		uid := int64(101)
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{inject.AnnotationGatewayContainer: g.container}},
			Spec: corev1.PodSpec{ServiceAccountName: "generic-gateway", Containers: []corev1.Container{{
				Name: g.container, Image: "docker.io/envoyproxy/envoy:v1.39.0",
				SecurityContext: &corev1.SecurityContext{RunAsUser: &uid, RunAsGroup: &uid},
			}}},
		}
	}
	return harness.ExamplePod(t, g.file, "", "", nil, nil)
}

// consumes: whether the gateway's built-in profile consumes flavor f.
func (g gateway) consumes(f inject.Flavor) bool {
	for _, p := range inject.BuiltinProfiles() {
		if p.Name == g.profile {
			return len(p.Flavors) == 0 || slices.Contains(p.Flavors, f)
		}
	}
	return true
}

// result is one case's figures for the report.
type result struct {
	Case string
	// From the agent container's first log line to the gateway
	// container's first (CRI log timestamps, ns resolution).
	AgentToGateway time.Duration
	// From the gateway container's start to its first verified certificate.
	FirstCert time.Duration
	// From pod creation to PodReady.
	PodReady time.Duration
	// From the agent's SIGKILL to the gateway's next verified certificate.
	AfterKill time.Duration
	// From the previous certificate to the rotated one, on the same stream.
	Rotation time.Duration
}

var (
	resultsMu sync.Mutex
	results   []result
)

func TestFlavorsOnRealNode(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: needs root and starts a real node (kubelet, containerd, control plane built on first use) and istiod in a private network namespace")
	}
	t.Cleanup(func() {
		var b strings.Builder
		fmt.Fprintf(&b, "| case | agent start → gateway start | gateway start → first cert | create → PodReady | agent SIGKILL → cert again | rotation (cert → next cert) |\n|---|---|---|---|---|---|\n")
		for _, r := range results {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", r.Case, ms(r.AgentToGateway), ms(r.FirstCert), ms(r.PodReady), ms(r.AfterKill), ms(r.Rotation))
		}
		t.Logf("timings (this run):\n%s", b.String())
	})
	main := variant{label: "enabled", istioVersion: engineIstioVersion()}
	for _, flavor := range inject.Flavors {
		for _, gw := range gateways {
			for _, native := range []bool{false, true} {
				placement := map[bool]string{false: "classic", true: "native"}[native]
				t.Run(fmt.Sprintf("%s/%s/%s", flavor, gw.name, placement), func(t *testing.T) {
					runCase(t, flavor, gw, native, main)
				})
			}
		}
	}
	// The 1.14-1.21 profile's layout (the socket under
	// workload-spiffe-uds, JWT_POLICY=third-party-jwt), injected by a
	// webhook configured with istioVersion 1.21.6 and run with the agents
	// built here: this proves the layout and env work with today's agents,
	// not that a 1.14-1.21 agent works (docs/compatibility.md has the
	// released agents). Against a release the webhooks already use that
	// release's own profile.
	if rel := istiod.ReleaseUnderTest(); rel != "" {
		t.Logf("release run: the 1.14-1.21 layout cases are not registered (the webhooks' istioVersion is the release, %s)", rel)
		return
	}
	t.Run("profile-1.14-1.21-layout", func(t *testing.T) {
		const layoutVersion = "1.21.6"
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		stop, err := extraWebhook(ctx, "layout-1-21", "istioVersion: "+layoutVersion+"\n")
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		v := variant{label: "layout-1-21", istioVersion: layoutVersion, suffix: "layout-1-21"}
		for _, flavor := range inject.Flavors {
			t.Run(fmt.Sprintf("%s/%s/classic", flavor, gateways[0].name), func(t *testing.T) {
				runCase(t, flavor, gateways[0], false, v)
			})
		}
	})
}

// variant is the webhook a case's pod goes through: the namespace label
// value that selects it and the istioVersion it is configured with.
type variant struct {
	label, istioVersion string
	// suffix distinguishes the case's namespace and report row.
	suffix string
}

// engineIstioVersion is the istioVersion of the suite's webhooks: the
// release under test (test/istio-releases/run.sh), or the engine's default.
func engineIstioVersion() string {
	if rel := istiod.ReleaseUnderTest(); rel != "" {
		return rel
	}
	return inject.DefaultConfig().IstioVersion
}

// gatewayPath is where the gateway container finds the agent's output for
// the flavor under the agent contract of istioVersion.
func gatewayPath(t *testing.T, flavor inject.Flavor, istioVersion string) (mode, path string) {
	t.Helper()
	if flavor == inject.FlavorIstioAgentFiles {
		return "files", inject.DefaultCertsDir
	}
	v, err := inject.ParseIstioVersion(istioVersion)
	if err != nil {
		t.Fatalf("istioVersion %q: %v", istioVersion, err)
	}
	return "sds", v.Profile().SocketPath()
}

func ms(d time.Duration) string {
	if d == 0 {
		return "—"
	}
	return d.Round(time.Millisecond).String()
}

func runCase(t *testing.T, flavor inject.Flavor, gw gateway, native bool, v variant) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cs := n.Clientset
	placement := map[bool]string{false: "classic", true: "native"}[native]
	nsName := strings.ReplaceAll(fmt.Sprintf("%s-%s-%s", flavor, gw.name, placement), "_", "-")
	row := result{Case: fmt.Sprintf("%s / %s / %s", flavor, gw.name, placement)}
	if v.suffix != "" {
		nsName += "-" + v.suffix
		row.Case += fmt.Sprintf(" (Istio %s layout)", v.istioVersion)
	}
	rep := reportCase(t, flavor, gw, placement)

	cp := preparePod(ctx, t, nsName, v.label, flavor, gw, native, v.istioVersion)
	pod, mode, path, gwUID, hostNet := cp.pod, cp.mode, cp.path, cp.gwUID, cp.hostNet
	spiffe := cp.spiffe

	created := time.Now()
	got, err := cs.CoreV1().Pods(nsName).Create(ctx, pod, metav1.CreateOptions{})
	if ver, verr := inject.ParseIstioVersion(v.istioVersion); verr == nil {
		if ferr := ver.SupportsFlavor(flavor); ferr != nil {
			// Expected to be unsupported: the webhook must refuse the pod's
			// flavor for this release, for that reason.
			if err == nil || !strings.Contains(err.Error(), ferr.Error()) {
				t.Fatalf("Istio %s cannot serve flavor %s (%v), but creating the pod gave %v", v.istioVersion, flavor, ferr, err)
			}
			rep.note("webhook refuses: " + ferr.Error())
			rep.unsupported = true
			t.Skipf("%s: the webhook refuses the flavor as it should: %v", expectedUnsupported, err)
		}
	}
	if err != nil {
		t.Fatalf("creating the pod through the apiserver (and webhook): %v", err)
	}
	t.Cleanup(func() { deletePod(t, nsName, "gw") })
	st, err := inject.ParseStatus(got.Annotations[inject.AnnotationStatus])
	if err != nil || st == nil {
		t.Fatalf("the webhook did not inject the pod (status annotation %q): %v", got.Annotations[inject.AnnotationStatus], err)
	}
	if st.Flavor != flavor || st.Placement != placement || st.GatewayContainer != gw.container {
		t.Fatalf("injected %s/%s into %s, want %s/%s into %s", st.Flavor, st.Placement, st.GatewayContainer, flavor, placement, gw.container)
	}
	agent := agentName(st)
	if hostNet {
		row.Case += " (host network)"
	} else {
		row.Case += " (pod network)"
	}
	t.Logf("injected by the webhook: flavor %s, placement %s, profile %s, agent container %s, image %s", st.Flavor, st.Placement, st.GatewayProfile, agent, st.Image)

	ready, err := n.WaitPod(ctx, nsName, "gw", 2*time.Minute, node.PodReady)
	if err != nil {
		t.Fatalf("pod not Ready: %v\n%s", err, n.Describe(ready))
	}
	row.PodReady = time.Since(created)
	checkToken(t, ready)
	if !hostNet {
		// Probes go to the pod IP: the route must stay inside the namespace.
		out, err := exec.CommandContext(ctx, "ip", "route", "get", ready.Status.PodIP).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "dev cni0") {
			t.Fatalf("ip route get %s: %v: %s (want dev cni0, inside the node's namespace)", ready.Status.PodIP, err, out)
		}
		t.Logf("pod IP %s; %s", ready.Status.PodIP, strings.TrimSpace(strings.Split(string(out), "\n")[0]))
	}
	as := node.StatusOf(ready, agent)
	if as == nil || !as.Ready {
		t.Fatalf("agent container %s not reported ready by the kubelet: %+v", agent, as)
	}
	t.Logf("kubelet: pod Ready %s after create; agent %s ready (%s)", row.PodReady.Round(time.Millisecond), agent, readinessOf(ready, agent))

	// The gateway's view.
	logs := n.Logs(ready)
	events, err := logs.WaitEvents(ctx, gw.container, 0, time.Minute, func(evs []node.CheckerEvent) bool {
		return node.CountEvents(evs, "cert") >= 1 && (mode == "files" || node.CountEvents(evs, "rootca") > 0)
	})
	if err != nil && istiod.ReleaseUnderTest() != "" && flavor == inject.FlavorIstioProxy && hasError(events, "unknown service envoy.service.secret.v3") {
		// Measured with Istio 1.5: its agent serves only the v2 SDS API;
		// current Envoys (the gateways' included) speak only v3.
		rep.note("incompatible: the agent serves SDS v2 only (envoy.service.discovery.v2); the gateway's Envoy and this client speak v3 only")
		rep.unsupported = true
		t.Skipf("%s: Istio %s's agent serves no v3 SDS: %v", expectedUnsupported, istiod.ReleaseUnderTest(), err)
	}
	if err != nil {
		t.Fatalf("gateway-checker: %v", err)
	}
	start := events[0]
	if start.Event != "start" || start.PresentAtStart == nil {
		t.Fatalf("first gateway event %+v, want start", start)
	}
	if !*start.PresentAtStart {
		t.Errorf("the gateway container started before the agent was ready: %s was not there at its start (%s placement must hold it back)", path, placement)
	}
	if gwUID >= 0 && int64(start.UID) != gwUID {
		t.Errorf("gateway-checker ran as uid %d, want the gateway's %d", start.UID, gwUID)
	}
	for _, e := range events {
		if e.Event == "error" {
			t.Errorf("gateway-checker reported: %s", e.Error)
		}
	}
	first := node.FirstEvent(events, "cert")
	agentFirst, err := logs.FirstLine(agent, 0)
	if err != nil {
		t.Fatal(err)
	}
	row.AgentToGateway = start.LogTime.Sub(agentFirst)
	row.FirstCert = first.Time.Sub(start.Time)
	rep.firstCert = first.Time.Sub(agentFirst)
	t.Logf("gateway (uid %d, groups %v) saw %s at its start; agent start → gateway start %s; first verified certificate %s after gateway start (serial %s, %s SPIFFE ID, valid until %s)",
		start.UID, start.Groups, path, ms(row.AgentToGateway), ms(row.FirstCert), first.Serial, spiffe, first.NotAfter.Format(time.RFC3339))
	if row.AgentToGateway <= 0 {
		t.Errorf("the gateway container's first log line (%s) is not after the agent's (%s)", start.LogTime, agentFirst)
	}

	// Kill the agent: the kubelet restarts it, the gateway (not restarted)
	// gets a certificate again.
	containerID := strings.TrimPrefix(as.ContainerID, "containerd://")
	killed := time.Now()
	if out, err := n.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", containerID); err != nil {
		t.Fatalf("killing the agent container %s: %v\n%s", containerID, err, out)
	}
	restarted, err := n.WaitPod(ctx, nsName, "gw", 2*time.Minute, func(p *corev1.Pod) bool {
		s := node.StatusOf(p, agent)
		return s != nil && s.RestartCount >= 1 && s.Ready
	})
	if err != nil {
		t.Fatalf("the kubelet did not restart the agent: %v\n%s", err, n.Describe(restarted))
	}
	if gs := node.StatusOf(restarted, gw.container); gs == nil || gs.RestartCount != 0 {
		t.Errorf("the gateway container was restarted: %+v", gs)
	}
	if restarted.UID != ready.UID {
		t.Errorf("the pod was replaced (uid %s → %s)", ready.UID, restarted.UID)
	}
	nBefore := len(events)
	events, err = logs.WaitEvents(ctx, gw.container, 0, time.Minute, func(evs []node.CheckerEvent) bool {
		return certAfter(evs, killed) != nil
	})
	if err != nil {
		t.Fatalf("no certificate for the gateway after the agent restart: %v", err)
	}
	again := certAfter(events, killed)
	row.AfterKill = again.Time.Sub(killed)
	t.Logf("agent SIGKILLed, restarted by the kubelet (restartCount %d); gateway (restartCount 0) verified a certificate again %s after the kill (serial %s)%s",
		node.StatusOf(restarted, agent).RestartCount, ms(row.AfterKill), again.Serial, streamNote(events[nBefore:]))

	// Rotation, pushed on the open stream (or rewritten files).
	events, err = logs.WaitEvents(ctx, gw.container, 0, certTTL+time.Minute, func(evs []node.CheckerEvent) bool {
		return node.RotatedAfter(evs, again) != nil
	})
	if err != nil {
		restarts := int(node.StatusOf(restarted, agent).RestartCount)
		lines, lerr := logs.Lines(agent, restarts)
		t.Fatalf("no rotated certificate within %s (TTL %s): %v\nagent %s log since its restart (%v):\n%s", certTTL+time.Minute, certTTL, err, agent, lerr, node.JoinLines(lines, 40))
	}
	rot := node.RotatedAfter(events, again)
	row.Rotation = rot.Time.Sub(again.Time)
	t.Logf("rotation: serial %s → %s, %s later, %s before the old one expired, on the same %s", again.Serial, rot.Serial, ms(row.Rotation),
		again.NotAfter.Sub(rot.Time).Round(time.Second), map[string]string{"sds": "SDS stream (no reconnect in between)", "files": "files"}[mode])
	if rot.Time.After(again.NotAfter) {
		t.Errorf("rotated after the old certificate expired")
	}
	resultsMu.Lock()
	results = append(results, row)
	resultsMu.Unlock()
}

func streamNote(evs []node.CheckerEvent) string {
	if node.CountEvents(evs, "stream-end") > 0 {
		return " (the SDS stream ended with the agent; the gateway reconnected)"
	}
	return ""
}

func agentName(st *inject.Status) string {
	if len(st.InitContainers) > 0 {
		return st.InitContainers[0]
	}
	if len(st.Containers) > 0 {
		return st.Containers[0]
	}
	return ""
}

func deletePod(t *testing.T, ns, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Gone from the apiserver (the kubelet has stopped its containers),
	// so that the next case's host-network ports are free.
	if err := n.DeletePod(ctx, ns, name); err != nil {
		t.Error(err)
	} else if err := n.WaitPodGone(ctx, ns, name); err != nil {
		t.Error(err)
	}
}

// readinessOf names the check the kubelet ran for the agent.
func readinessOf(p *corev1.Pod, name string) string {
	for _, list := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for _, c := range list {
			if c.Name != name {
				continue
			}
			var parts []string
			if c.StartupProbe != nil {
				parts = append(parts, "startupProbe "+probeString(c.StartupProbe))
			}
			if c.Lifecycle != nil && c.Lifecycle.PostStart != nil && c.Lifecycle.PostStart.Exec != nil {
				parts = append(parts, fmt.Sprintf("postStart %v", c.Lifecycle.PostStart.Exec.Command))
			}
			if c.ReadinessProbe != nil {
				parts = append(parts, "readinessProbe "+probeString(c.ReadinessProbe))
			}
			return strings.Join(parts, "; ")
		}
	}
	return ""
}

func probeString(p *corev1.Probe) string {
	switch {
	case p.HTTPGet != nil:
		return fmt.Sprintf("GET :%s%s", p.HTTPGet.Port.String(), p.HTTPGet.Path)
	case p.Exec != nil:
		return fmt.Sprintf("exec %v", p.Exec.Command)
	}
	return "?"
}

func certAfter(evs []node.CheckerEvent, t time.Time) *node.CheckerEvent {
	for i := range evs {
		if evs[i].Event == "cert" && evs[i].Time.After(t) {
			return &evs[i]
		}
	}
	return nil
}

// casePod is a gateway pod ready to be created, with what the checks need.
type casePod struct {
	pod                *corev1.Pod
	spiffe, mode, path string
	gwUID              int64
	hostNet            bool
}

// preparePod creates the namespace (labelled sds-injection=<label>), the
// ServiceAccount and the placeholder volume sources, and returns the pod.
func preparePod(ctx context.Context, t *testing.T, nsName, label string, flavor inject.Flavor, gw gateway, native bool, istioVersion string) casePod {
	t.Helper()
	pod := gw.pod(t)
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	if err := n.GatewayNamespace(ctx, nsName, label, sa); err != nil {
		t.Fatal(err)
	}
	root, err := ist.RootCert(ctx, nsName)
	if err != nil {
		t.Fatal(err)
	}
	spiffe := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", ist.TrustDomain, nsName, sa)

	// The pod as the gateway's controller writes it, with test-owned
	// changes: run on this node on the host network; the gateway container
	// runs gateway-checker (same name, user, mounts) without Envoy's probes,
	// hooks and ports; other containers run pause.
	pod.ObjectMeta = metav1.ObjectMeta{Name: "gw", Namespace: nsName, Labels: pod.Labels, Annotations: pod.Annotations}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[inject.AnnotationFlavor] = string(flavor)
	pod.Annotations[inject.AnnotationNativeSidecar] = fmt.Sprint(native)
	if !gw.consumes(flavor) {
		pod.Annotations[inject.AnnotationGatewayContainer] = gw.container
		t.Logf("profile %s does not consume %s: requested through the generic profile (%s=%s)", gw.profile, flavor, inject.AnnotationGatewayContainer, gw.container)
	}
	// sds-agent gateways run on the host network (test pods prefer it);
	// the stock agents bind TCP ports, which the webhook refuses on the
	// host network, so they run on the pod network (CNI bridge inside the
	// namespace) and resolve istiod's name with a hostAlias.
	hostNet := flavor == inject.FlavorSDSAgent
	pod.Spec.HostNetwork = hostNet
	if !hostNet {
		pod.Spec.HostAliases = append(pod.Spec.HostAliases, corev1.HostAlias{IP: node.NodeIP, Hostnames: []string{node.IstiodHost}})
	}
	mode, path := gatewayPath(t, flavor, istioVersion)
	gwUID := n.RunAsChecker(pod, gw.container, checkerRef,
		corev1.EnvVar{Name: "CHECK_MODE", Value: mode}, corev1.EnvVar{Name: "CHECK_PATH", Value: path},
		corev1.EnvVar{Name: "CHECK_SPIFFE", Value: spiffe}, corev1.EnvVar{Name: "CHECK_ROOT", Value: string(root)},
		corev1.EnvVar{Name: "CHECK_NODE", Value: "router~" + n.IP + "~gw." + nsName + "~" + nsName + ".svc.cluster.local"})
	if err := n.CreateVolumeSources(ctx, pod); err != nil {
		t.Fatal(err)
	}
	return casePod{pod: pod, spiffe: spiffe, mode: mode, path: path, gwUID: gwUID, hostNet: hostNet}
}

// checkToken reads the token the real kubelet wrote for the injected
// projected volume (the kubelet's volume directory of the pod) and checks it
// is what the volume asks for: the pod's ServiceAccount, bound to the pod,
// the volume's audience and lifetime.
func checkToken(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	var src *corev1.ServiceAccountTokenProjection
	for _, v := range pod.Spec.Volumes {
		if v.Name == inject.VolumeIstioToken && v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					src = s.ServiceAccountToken
				}
			}
		}
	}
	if src == nil || src.ExpirationSeconds == nil {
		t.Fatalf("the injected pod has no projected %s volume with a token lifetime", inject.VolumeIstioToken)
	}
	file := filepath.Join(n.KubeletRootDir, "pods", string(pod.UID), "volumes", "kubernetes.io~projected", inject.VolumeIstioToken, src.Path)
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("the kubelet's token file: %v", err)
	}
	parts := strings.Split(string(raw), ".")
	if len(parts) != 3 {
		t.Fatalf("%s is not a JWT", file)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var claims struct {
		Aud []string `json:"aud"`
		Sub string   `json:"sub"`
		Exp int64    `json:"exp"`
		Iat int64    `json:"iat"`
		K8s struct {
			Pod struct {
				Name string `json:"name"`
				UID  string `json:"uid"`
			} `json:"pod"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	wantSub := fmt.Sprintf("system:serviceaccount:%s:%s", pod.Namespace, sa)
	if !slices.Equal(claims.Aud, []string{src.Audience}) || claims.Sub != wantSub || claims.Exp-claims.Iat != *src.ExpirationSeconds ||
		claims.K8s.Pod.Name != pod.Name || claims.K8s.Pod.UID != string(pod.UID) {
		t.Errorf("the kubelet's token: aud %v, sub %s, lifetime %ds, pod %s/%s; the volume asks for aud [%s], %ds, for %s, pod %s/%s",
			claims.Aud, claims.Sub, claims.Exp-claims.Iat, claims.K8s.Pod.Name, claims.K8s.Pod.UID, src.Audience, *src.ExpirationSeconds, wantSub, pod.Name, pod.UID)
	}
	fi, _ := os.Stat(file)
	t.Logf("istio-token as the kubelet wrote it: aud %v, %s, lifetime %ds, bound to pod %s; file %v", claims.Aud, claims.Sub, claims.Exp-claims.Iat, claims.K8s.Pod.Name, fi.Mode())
}
