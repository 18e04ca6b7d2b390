package spirenode

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sds-injector/sds-injector/test/harness"
	"github.com/sds-injector/sds-injector/test/node"
	"github.com/sds-injector/sds-injector/test/spire"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

const (
	// svidTTL is short so that a rotation is pushed within the test.
	svidTTL = 30 * time.Second
	// unregisteredUID is a uid no registration entry selects.
	unregisteredUID = 4242
	podName         = "gw"
)

// example is a gateway pod of docs/examples and its gateway container.
type example struct{ file, container string }

var (
	envoyGateway = example{"envoy-gateway-proxy.yaml", "envoy"}
	glooEdge     = example{"gloo-gateway-proxy.yaml", "gateway-proxy"}
)

// gateway is one gateway pod of the proof, ready to be created.
type gateway struct {
	ns     string
	pod    *corev1.Pod
	spiffe string
	// uid is the gateway container's runAsUser (what unix attestation sees).
	uid       int64
	container string
}

// newGateway reads the example, creates its namespace (labelled for the
// namespace-mode webhook), service account and the ConfigMaps and Secrets
// its volumes name (placeholders: gateway-checker does not read them), and
// returns the pod with only test-owned changes: it runs on this node, the
// gateway container runs gateway-checker (same name, user, mounts) without
// Envoy's command, probes, hooks and ports, the other containers run pause.
func newGateway(ctx context.Context, t *testing.T, ex example, ns string, bundle []byte) *gateway {
	t.Helper()
	pod := harness.ExamplePod(t, ex.file, "", "", nil, nil)
	sa := pod.Spec.ServiceAccountName
	if err := n.GatewayNamespace(ctx, ns, "enabled", sa); err != nil {
		t.Fatal(err)
	}
	g := &gateway{ns: ns, pod: pod, container: ex.container,
		spiffe: fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", spire.TrustDomain, ns, sa)}
	pod.ObjectMeta = metav1.ObjectMeta{Name: podName, Namespace: ns, Labels: pod.Labels, Annotations: pod.Annotations}
	if err := n.CreateVolumeSources(ctx, pod); err != nil {
		t.Fatal(err)
	}
	g.uid = n.RunAsChecker(pod, ex.container, checkerRef,
		corev1.EnvVar{Name: "CHECK_MODE", Value: "sds"}, corev1.EnvVar{Name: "CHECK_PATH", Value: inject.SPIRESocketPath},
		corev1.EnvVar{Name: "CHECK_SPIFFE", Value: g.spiffe}, corev1.EnvVar{Name: "CHECK_ROOT", Value: string(bundle)},
		// SPIRE's default ROOTCA: the SPIFFE certificate validator config.
		corev1.EnvVar{Name: "CHECK_ROOTCA_SHAPE", Value: "spiffe"},
		corev1.EnvVar{Name: "CHECK_NODE", Value: ns + "/" + podName})
	if g.uid < 0 {
		t.Fatalf("%s: the gateway container %s sets no runAsUser", ex.file, ex.container)
	}
	return g
}

// gatewayContainer is the gateway's container in pod.
func (g *gateway) gatewayContainer(t *testing.T, pod *corev1.Pod) *corev1.Container {
	t.Helper()
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == g.container {
			return &pod.Spec.Containers[i]
		}
	}
	t.Fatalf("no container %s in the pod", g.container)
	return nil
}

// create creates the pod through the apiserver (and so the webhook) and
// checks what the webhook injected: the spire flavor with the hostPath
// socket source, spire-wait first, the socket directory mounted read-only.
func (g *gateway) create(ctx context.Context, t *testing.T) *corev1.Pod {
	t.Helper()
	got, err := n.Clientset.CoreV1().Pods(g.ns).Create(ctx, g.pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the pod through the apiserver (and webhook): %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.DeletePod(ctx, g.ns, podName); err != nil {
			t.Error(err)
		}
	})
	st, err := inject.ParseStatus(got.Annotations[inject.AnnotationStatus])
	if err != nil || st == nil {
		t.Fatalf("the webhook did not inject the pod (status annotation %q): %v", got.Annotations[inject.AnnotationStatus], err)
	}
	if st.Flavor != inject.FlavorSPIRE || st.IdentityProvider != inject.IdentityProviderSPIRE || st.SocketSource != inject.SocketSourceHostPath ||
		st.GatewayContainer != g.container || !slices.Equal(st.InitContainers, []string{inject.SPIREWaitContainer}) || st.Image != sdsAgentRef {
		t.Fatalf("injected %+v, want flavor spire, provider spire, socket source hostPath, init container %s, image %s, into %s",
			st, inject.SPIREWaitContainer, sdsAgentRef, g.container)
	}
	if len(got.Spec.InitContainers) == 0 || got.Spec.InitContainers[0].Name != inject.SPIREWaitContainer {
		t.Fatalf("%s is not the first init container: %v", inject.SPIREWaitContainer, got.Spec.InitContainers)
	}
	var vol *corev1.Volume
	for i := range got.Spec.Volumes {
		if got.Spec.Volumes[i].Name == inject.VolumeWorkloadSocket {
			vol = &got.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.HostPath == nil || vol.HostPath.Path != socketDir || vol.HostPath.Type == nil || *vol.HostPath.Type != corev1.HostPathDirectory {
		t.Fatalf("volume %s is %+v, want hostPath %s (Directory)", inject.VolumeWorkloadSocket, vol, socketDir)
	}
	mounted := false
	for _, m := range g.gatewayContainer(t, got).VolumeMounts {
		if m.Name == inject.VolumeWorkloadSocket {
			mounted = m.ReadOnly && m.MountPath == filepath.Dir(inject.SPIRESocketPath)
		}
	}
	if !mounted {
		t.Fatalf("the gateway container does not mount %s read-only at %s", inject.VolumeWorkloadSocket, filepath.Dir(inject.SPIRESocketPath))
	}
	t.Logf("injected by the webhook: flavor %s, provider %s, socket source %s (%s), placement %s, init container %s (%s)",
		st.Flavor, st.IdentityProvider, st.SocketSource, vol.HostPath.Path, st.Placement, inject.SPIREWaitContainer, st.Image)
	return got
}

// checkIdentity waits for the gateway's first verified certificate and
// ROOTCA and checks the checker ran as the gateway's uid with the socket
// there at its start.
func (g *gateway) checkIdentity(ctx context.Context, t *testing.T, pod *corev1.Pod) []node.CheckerEvent {
	t.Helper()
	evs, err := n.Logs(pod).WaitEvents(ctx, g.container, 0, 2*time.Minute, func(evs []node.CheckerEvent) bool {
		return node.CountEvents(evs, "cert") >= 1 && node.CountEvents(evs, "rootca") >= 1 || node.CountEvents(evs, "error") > 0
	})
	if err != nil {
		t.Fatalf("gateway-checker: %v\nagent log (tail):\n%s", err, harness.Tail(agent.Log(), 20))
	}
	for _, e := range evs {
		if e.Event == "error" {
			t.Fatalf("gateway-checker reported: %s", e.Error)
		}
	}
	start := evs[0]
	if start.Event != "start" || start.PresentAtStart == nil {
		t.Fatalf("first gateway event %+v, want start", start)
	}
	if !*start.PresentAtStart {
		t.Errorf("the gateway container started without the socket %s", inject.SPIRESocketPath)
	}
	if int64(start.UID) != g.uid {
		t.Errorf("gateway-checker ran as uid %d, want the gateway's %d", start.UID, g.uid)
	}
	c := node.FirstEvent(evs, "cert")
	if c.SPIFFE != g.spiffe {
		t.Errorf("certificate for %s, want %s", c.SPIFFE, g.spiffe)
	}
	return evs
}

// agent is the SPIRE agent, started by the test after the first pod.
var agent *spire.Agent

func TestSPIREFlavorOnRealNode(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: needs root; starts a real node (kubelet, containerd, control plane, built on first use) and SPIRE v1.13.3 (built from source on first use, ~20 min cold) in a private network namespace")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bundle, err := srv.Bundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	token, err := srv.JoinToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	parent := spire.AgentID(token)

	// The Envoy Gateway example in its own namespace, registered by the
	// gateway container's uid (unix workload attestor).
	eg := newGateway(ctx, t, envoyGateway, "envoy-gateway-system", bundle)
	if err := srv.RegisterUID(ctx, parent, eg.spiffe, int(eg.uid), svidTTL); err != nil {
		t.Fatal(err)
	}
	t.Logf("registered %s for uid %d (unix attestor), X.509 SVID TTL %s", eg.spiffe, eg.uid, svidTTL)

	// Startup gate: the pod is created before the SPIRE agent runs.
	created := time.Now()
	eg.create(ctx, t)
	var waitLog []node.LogLine
	waiting, err := n.WaitPod(ctx, eg.ns, podName, 2*time.Minute, func(p *corev1.Pod) bool {
		s := node.StatusOf(p, inject.SPIREWaitContainer)
		if s == nil || s.State.Running == nil || node.StatusOf(p, eg.container) == nil {
			return false
		}
		waitLog, _ = n.ContainerLog(eg.ns, podName, string(p.UID), inject.SPIREWaitContainer, 0)
		return slices.ContainsFunc(waitLog, func(l node.LogLine) bool { return strings.Contains(l.Text, "wait-socket: not yet") })
	})
	if err != nil {
		t.Fatalf("%s never ran and waited: %v\n%s", inject.SPIREWaitContainer, err, n.Describe(waiting))
	}
	// Held: the gateway container has not started.
	held, err := n.Clientset.CoreV1().Pods(eg.ns).Get(ctx, podName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gs := node.StatusOf(held, eg.container)
	if gs == nil || gs.State.Waiting == nil {
		t.Fatalf("the gateway container is not held back before the agent runs: %+v", gs)
	}
	if _, err := n.Logs(held).Events(eg.container, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the gateway container has a log before the agent runs (%v)", err)
	}
	if ws := node.StatusOf(held, inject.SPIREWaitContainer); ws == nil || ws.State.Running == nil || ws.RestartCount != 0 {
		t.Fatalf("%s is not still waiting: %+v", inject.SPIREWaitContainer, ws)
	}
	t.Logf("gate: %s running (its log: %q), gateway container %s waiting (%s), %s after create",
		inject.SPIREWaitContainer, lastText(waitLog), eg.container, gs.State.Waiting.Reason, time.Since(created).Round(time.Millisecond))

	agentStarted := time.Now()
	k8sAttestor := fmt.Sprintf("  WorkloadAttestor \"k8s\" {\n    plugin_data {\n      kubelet_read_only_port = %d\n    }\n  }", n.KubeletReadOnlyPort)
	agent, err = spire.StartAgentWith(ctx, bins, filepath.Join(spireDir, "agent"), socketDir, srv, token, k8sAttestor)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Stop)
	agentHealthy := time.Since(agentStarted)
	ready, err := n.WaitPod(ctx, eg.ns, podName, 2*time.Minute, node.PodReady)
	if err != nil {
		t.Fatalf("pod not Ready once the agent runs: %v\n%s\nagent log (tail):\n%s", err, n.Describe(ready), harness.Tail(agent.Log(), 20))
	}
	podReadyAt := time.Now()
	ws := node.StatusOf(ready, inject.SPIREWaitContainer)
	if ws == nil || ws.State.Terminated == nil || ws.State.Terminated.ExitCode != 0 || ws.RestartCount != 0 {
		t.Fatalf("%s did not complete once: %+v", inject.SPIREWaitContainer, ws)
	}
	waitLog, err = n.ContainerLog(eg.ns, podName, string(ready.UID), inject.SPIREWaitContainer, 0)
	if err != nil {
		t.Fatal(err)
	}
	answered := waitLog[len(waitLog)-1]
	if !strings.Contains(answered.Text, inject.SPIRESocketPath+" answers: served ROOTCA after") {
		t.Fatalf("%s's last line %q, want its answer line", inject.SPIREWaitContainer, answered.Text)
	}

	evs := eg.checkIdentity(ctx, t, ready)
	start, cert := evs[0], node.FirstEvent(evs, "cert")
	if !start.LogTime.After(answered.Time) {
		t.Errorf("the gateway started (%s) before %s's answer (%s)", start.LogTime, inject.SPIREWaitContainer, answered.Time)
	}
	if !answered.Time.After(agentStarted) {
		t.Errorf("%s answered (%s) before the agent started (%s)", inject.SPIREWaitContainer, answered.Time, agentStarted)
	}
	t.Logf("spire-agent healthy %s after its start; %s: %q at %s after the agent's start; gateway container (uid %d) started %s after that; pod Ready %s after the agent's start",
		agentHealthy.Round(time.Millisecond), inject.SPIREWaitContainer, answered.Text, answered.Time.Sub(agentStarted).Round(time.Millisecond),
		start.UID, start.LogTime.Sub(answered.Time).Round(time.Millisecond), podReadyAt.Sub(agentStarted).Round(time.Millisecond))
	t.Logf("identity: gateway (uid %d) verified default (serial %s, exactly %s, valid until %s) against the SPIRE bundle, %s after its start (%d retries before: %s), and ROOTCA in SPIRE's SPIFFE validator shape",
		start.UID, cert.Serial, cert.SPIFFE, cert.NotAfter.Format(time.RFC3339), cert.Time.Sub(start.Time).Round(time.Millisecond),
		node.CountEvents(evs, "stream-end"), firstErr(evs))

	t.Run("rotation", func(t *testing.T) {
		evs, err := n.Logs(ready).WaitEvents(ctx, eg.container, 0, svidTTL+time.Minute, func(evs []node.CheckerEvent) bool {
			return node.RotatedAfter(evs, cert) != nil || node.CountEvents(evs, "error") > 0
		})
		if err != nil {
			t.Fatalf("no rotated certificate on the open stream within %s (TTL %s): %v", svidTTL+time.Minute, svidTTL, err)
		}
		rot := node.RotatedAfter(evs, cert)
		if rot == nil {
			t.Fatalf("gateway-checker reported an error: %s", node.FirstEvent(evs, "error").Error)
		}
		if !rot.NotAfter.After(cert.NotAfter) || rot.SPIFFE != eg.spiffe {
			t.Errorf("rotated certificate %+v, want a later expiry than %s and %s", rot, cert.NotAfter, eg.spiffe)
		}
		if rot.Time.After(cert.NotAfter) {
			t.Errorf("rotated after the old certificate expired")
		}
		t.Logf("rotation: serial %s → %s pushed on the same stream %s after the first, %s before the first expired (SVID TTL %s)",
			cert.Serial, rot.Serial, rot.Time.Sub(cert.Time).Round(time.Millisecond), cert.NotAfter.Sub(rot.Time).Round(time.Second), svidTTL)
	})

	t.Run("k8s-attestor", func(t *testing.T) {
		// The Gloo Edge example, registered by namespace and service
		// account only (k8s workload attestor, which asks the kubelet):
		// no entry selects its uid.
		gl := newGateway(ctx, t, glooEdge, "gloo-system", bundle)
		sa := gl.pod.Spec.ServiceAccountName
		if err := srv.Register(ctx, parent, gl.spiffe, svidTTL, "k8s:ns:"+gl.ns, "k8s:sa:"+sa); err != nil {
			t.Fatal(err)
		}
		created := time.Now()
		gl.create(ctx, t)
		ready, err := n.WaitPod(ctx, gl.ns, podName, 2*time.Minute, node.PodReady)
		if err != nil {
			t.Fatalf("pod not Ready: %v\n%s", err, n.Describe(ready))
		}
		evs := gl.checkIdentity(ctx, t, ready)
		c := node.FirstEvent(evs, "cert")
		t.Logf("gateway (uid %d), registered only by k8s:ns:%s and k8s:sa:%s, verified %s (serial %s) %s after the pod's create (%s after its start)",
			evs[0].UID, gl.ns, sa, c.SPIFFE, c.Serial, c.Time.Sub(created).Round(time.Millisecond), c.Time.Sub(evs[0].Time).Round(time.Millisecond))
	})

	t.Run("unregistered-uid", func(t *testing.T) {
		// The Envoy Gateway example in another namespace, its gateway
		// container as a uid no entry selects (nor do its namespace and
		// service account).
		un := newGateway(ctx, t, envoyGateway, "edge-unregistered", bundle)
		uid := int64(unregisteredUID)
		c := un.gatewayContainer(t, un.pod)
		c.SecurityContext.RunAsUser, c.SecurityContext.RunAsGroup, un.uid = &uid, &uid, uid
		un.create(ctx, t)
		ready, err := n.WaitPod(ctx, un.ns, podName, 2*time.Minute, node.PodReady)
		if err != nil {
			t.Fatalf("pod not Ready: %v\n%s", err, n.Describe(ready))
		}
		evs, err := n.Logs(ready).WaitEvents(ctx, un.container, 0, time.Minute, func(evs []node.CheckerEvent) bool {
			return node.CountEvents(evs, "rootca") >= 1 && refusals(evs) >= 3 || node.CountEvents(evs, "cert") > 0
		})
		if err != nil {
			t.Fatalf("no ROOTCA and refusals: %v", err)
		}
		if n := node.CountEvents(evs, "cert"); n > 0 {
			t.Fatalf("uid %d, which no entry selects, got %d certificate(s)", unregisteredUID, n)
		}
		if evs[0].UID != unregisteredUID {
			t.Fatalf("gateway-checker ran as uid %d, want %d", evs[0].UID, unregisteredUID)
		}
		t.Logf("uid %d: no certificate, %d refusals in %s (%s); ROOTCA still served",
			unregisteredUID, refusals(evs), evs[len(evs)-1].Time.Sub(evs[0].Time).Round(time.Millisecond), firstErr(evs))
	})
}

// refusals counts the default streams that SPIRE ended with "not authorized".
func refusals(evs []node.CheckerEvent) int {
	c := 0
	for _, e := range evs {
		if e.Event == "stream-end" && strings.Contains(e.Error, "InvalidArgument") && strings.Contains(e.Error, "not authorized") {
			c++
		}
	}
	return c
}

func firstErr(evs []node.CheckerEvent) string {
	if e := node.FirstEvent(evs, "stream-end"); e != nil {
		return e.Error
	}
	return "none"
}

func lastText(lines []node.LogLine) string {
	if len(lines) == 0 {
		return ""
	}
	return lines[len(lines)-1].Text
}
