package chartnode

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/sds-injector/sds-injector/test/chartinstall"
	"github.com/sds-injector/sds-injector/test/load/measure"
	"github.com/sds-injector/sds-injector/test/node"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

const (
	release   = chartinstall.Release
	releaseNS = chartinstall.Namespace
	gwNS      = "gloo-system"
)

func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("the chart on a real node needs root, containerd, a kubelet and a control plane built from source; run without -short")
	}
}

func kubectl(ctx context.Context, args ...string) (string, error) {
	cmd, err := n.CP.KubectlCmd(ctx, args...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestChartOnRealNode runs in order: install, the pods as the kubelet runs
// them, the Gloo gateway injected through the Service, and the rollout
// under load. Each step needs the previous one.
func TestChartOnRealNode(t *testing.T) {
	skipShort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	steps := []struct {
		name string
		fn   func(context.Context, *testing.T)
	}{
		{"HelmInstall", helmInstall},
		{"SecurityContextAsRun", securityContextAsRun},
		{"PDBAndAntiAffinity", pdbAndAntiAffinity},
		{"CABundlePatched", caBundlePatched},
		{"GlooDeploymentInjected", glooDeploymentInjected},
		{"OneWebhookCallPerPod", oneWebhookCallPerPod},
		{"RolloutUnderLoad", rolloutUnderLoad},
		{"FailClosedWithoutInjector", failClosedWithoutInjector},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { s.fn(ctx, t) }) {
			t.Fatalf("%s failed; the later steps need it", s.name)
		}
	}
}

func injectorPods(ctx context.Context, t *testing.T) []corev1.Pod {
	t.Helper()
	pods, err := listInjectorPods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return pods
}

func listInjectorPods(ctx context.Context) ([]corev1.Pod, error) {
	return chartinstall.ListPods(ctx, n.Clientset)
}

func ready(p *corev1.Pod) bool { return chartinstall.Ready(p) }

func helmInstall(ctx context.Context, t *testing.T) {
	inst, err := chartinstall.Install(ctx, n, prepared, chartinstall.Options{Namespaces: []string{gwNS}})
	if err != nil {
		var pods []corev1.Pod
		if inst != nil {
			pods = inst.Pods
		}
		t.Fatalf("%v\n%s", err, describePods(pods)+events(releaseNS))
	}
	t.Logf("helm install: %s", firstLines(inst.HelmOutput, 6))
	t.Logf("%d injector pods Ready %s after helm install started", chartinstall.Replicas, inst.Took.Round(time.Millisecond))
	pods, inj := inst.Pods, prepared.Values[chartinstall.ValueInjector]
	for _, p := range pods {
		if p.Spec.NodeName != n.Name {
			t.Errorf("pod %s scheduled to %q, want %s", p.Name, p.Spec.NodeName, n.Name)
		}
		c := p.Spec.Containers[0]
		if c.Image != inj || c.ImagePullPolicy != corev1.PullNever {
			t.Errorf("pod %s runs image %s (%s), want %s (Never)", p.Name, c.Image, c.ImagePullPolicy, inj)
		}
		if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
			t.Errorf("pod %s: readiness probe %+v, want the chart's httpGet /readyz", p.Name, c.ReadinessProbe)
		}
		st := p.Status.ContainerStatuses[0]
		if !st.Ready || st.RestartCount != 0 {
			t.Errorf("pod %s: container ready=%v restarts=%d", p.Name, st.Ready, st.RestartCount)
		}
		t.Logf("pod %s: IP %s, image %s (%s), container %s", p.Name, p.Status.PodIP, st.Image, st.ImageID, st.ContainerID)
		// The kubelet probes the pod IP: the route stays inside the namespace.
		rt, err := exec.CommandContext(ctx, "ip", "route", "get", p.Status.PodIP).CombinedOutput()
		if err != nil || !strings.Contains(string(rt), "dev cni0") {
			t.Errorf("ip route get %s: %v: %s (want dev cni0)", p.Status.PodIP, err, rt)
		}
	}
	// The API server reaches the webhook through the Service's ClusterIP
	// (no aggregator routing here): kube-proxy has programmed it, once it
	// caught up with the EndpointSlice of the just-Ready pods.
	clusterIP, err := chartinstall.WaitProxied(ctx, n.Clientset, chartinstall.Replicas, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Service %s/%s: ClusterIP %s, kube-proxy (iptables) DNATs it to the %d pod endpoints", releaseNS, release, clusterIP, chartinstall.Replicas)
	// Still no route out with kube-proxy's rules and the pods' links in
	// place (interfaces are not listed: CNI links come and go).
	if out, err := exec.CommandContext(ctx, "ip", "route", "show", "default").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("ip route show default: %v: %q (want no default route)", err, out)
	}
	if out, err := exec.CommandContext(ctx, "ip", "route", "get", "1.1.1.1").CombinedOutput(); err == nil {
		t.Fatalf("the node's namespace has a route to 1.1.1.1: %s", out)
	}
}

// containerPID is the host PID of a pod's container process (ctr tasks ls).
func containerPID(ctx context.Context, t *testing.T, containerID string) int {
	t.Helper()
	id := strings.TrimPrefix(containerID, "containerd://")
	out, err := n.Ctr(ctx, "tasks", "ls")
	if err != nil {
		t.Fatalf("ctr tasks ls: %v\n%s", err, out)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return pid
		}
	}
	t.Fatalf("container %s is not among containerd's tasks:\n%s", id, out)
	return 0
}

func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			m[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return m
}

// rootMountOptions are the mount options of the process's / (mountinfo).
func rootMountOptions(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == "/" {
			return f[5]
		}
	}
	t.Fatalf("no / mount in /proc/%d/mountinfo", pid)
	return ""
}

// securityContextAsRun reads what runc applied, from the kernel's view of
// each injector container's process: uid/gid, no_new_privs, capabilities,
// seccomp, and the root filesystem's mount options.
func securityContextAsRun(ctx context.Context, t *testing.T) {
	for _, p := range injectorPods(ctx, t) {
		if !ready(&p) {
			continue
		}
		pid := containerPID(ctx, t, p.Status.ContainerStatuses[0].ContainerID)
		st := procStatus(t, pid)
		want := map[string]string{
			"Uid": "65532 65532 65532 65532", "Gid": "65532 65532 65532 65532",
			"NoNewPrivs": "1", "CapInh": "0000000000000000", "CapPrm": "0000000000000000",
			"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "CapAmb": "0000000000000000",
			"Seccomp": "2", // filter: RuntimeDefault
		}
		for k, v := range want {
			if st[k] != v {
				t.Errorf("pod %s (pid %d): /proc status %s = %q, want %q", p.Name, pid, k, st[k], v)
			}
		}
		opts := rootMountOptions(t, pid)
		if !strings.HasPrefix(opts, "ro,") && opts != "ro" {
			t.Errorf("pod %s (pid %d): / mounted %q, want read-only", p.Name, pid, opts)
		}
		// The root filesystem refuses writes from inside the container.
		f, err := os.OpenFile(fmt.Sprintf("/proc/%d/root/chartnode-write-test", pid), os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			f.Close()
			t.Errorf("pod %s: wrote to the container's root filesystem", p.Name)
		}
		t.Logf("pod %s, pid %d: Uid %s, Gid %s, Groups %q, NoNewPrivs %s, CapEff %s, CapBnd %s, Seccomp %s; / %s; write to / refused: %v",
			p.Name, pid, st["Uid"], st["Gid"], st["Groups"], st["NoNewPrivs"], st["CapEff"], st["CapBnd"], st["Seccomp"], opts, err)
	}
}

func pdbAndAntiAffinity(ctx context.Context, t *testing.T) {
	var allowed, healthy, expected int32
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		pdb, err := n.Clientset.PolicyV1().PodDisruptionBudgets(releaseNS).Get(ctx, release, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		allowed, healthy, expected = pdb.Status.DisruptionsAllowed, pdb.Status.CurrentHealthy, pdb.Status.ExpectedPods
		return pdb.Status.ObservedGeneration == pdb.Generation && expected == 2 && healthy == 2 && allowed == 1, nil
	})
	if err != nil {
		t.Fatalf("PDB %s: disruptionsAllowed %d, currentHealthy %d, expectedPods %d; want 1, 2, 2 (maxUnavailable 1 of 2): %v", release, allowed, healthy, expected, err)
	}
	t.Logf("PDB %s (disruption controller): expectedPods %d, currentHealthy %d, disruptionsAllowed %d", release, expected, healthy, allowed)
	for _, p := range injectorPods(ctx, t) {
		a := p.Spec.Affinity
		if a == nil || a.PodAntiAffinity == nil || len(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 {
			t.Fatalf("pod %s: affinity %+v, want the chart's soft pod anti-affinity", p.Name, a)
		}
		term := a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0]
		if term.PodAffinityTerm.TopologyKey != "kubernetes.io/hostname" || term.PodAffinityTerm.LabelSelector.MatchLabels["app.kubernetes.io/instance"] != release {
			t.Errorf("pod %s: anti-affinity term %+v", p.Name, term)
		}
	}
	t.Logf("both pods carry the soft anti-affinity (topologyKey kubernetes.io/hostname) and, as a preferred term allows, share the one node %s; spreading over nodes needs more than one node and is not proven here", n.Name)
}

func caBundlePatched(ctx context.Context, t *testing.T) {
	secret, err := n.Clientset.CoreV1().Secrets(releaseNS).Get(ctx, release+"-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the self-managed Secret: %v", err)
	}
	ca := secret.Data["ca.crt"]
	if len(ca) == 0 {
		t.Fatalf("Secret %s-tls has no ca.crt (keys %v)", release, keys(secret.Data))
	}
	for _, name := range []string{release + "-namespace", release + "-per-gateway"} {
		var mwc *admissionregistrationv1.MutatingWebhookConfiguration
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			mwc, err = n.Clientset.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			for _, w := range mwc.Webhooks {
				if !bytes.Contains(w.ClientConfig.CABundle, bytes.TrimSpace(ca)) {
					return false, nil
				}
			}
			return true, nil
		})
		if err != nil {
			t.Fatalf("%s: the caBundle of every webhook does not hold the Secret's CA: %v", name, err)
		}
		t.Logf("%s: %d webhooks, caBundle (%d bytes) holds the self-managed CA; service %s/%s", name, len(mwc.Webhooks),
			len(mwc.Webhooks[0].ClientConfig.CABundle), mwc.Webhooks[0].ClientConfig.Service.Namespace, mwc.Webhooks[0].ClientConfig.Service.Name)
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// gatewayDeployment is Gloo Edge's gateway-proxy (docs/examples), opted in
// per gateway, with test-owned changes: the sds-agent flavor (the release
// agent image), the host network, and gateway-checker in the gateway
// container (same name, user and mounts) without Envoy's ports.
func gatewayDeployment(t *testing.T, root []byte, spiffe string) []byte {
	t.Helper()
	env := []map[string]string{
		{"name": "CHECK_MODE", "value": "sds"}, {"name": "CHECK_PATH", "value": "/var/run/secrets/workload-spiffe-uds/socket"},
		{"name": "CHECK_SPIFFE", "value": spiffe}, {"name": "CHECK_ROOT", "value": string(root)},
		{"name": "CHECK_NODE", "value": "router~" + node.NodeIP + "~gateway-proxy." + gwNS + "~" + gwNS + ".svc.cluster.local"},
	}
	envJSON, _ := json.Marshal(env)
	return []byte(fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: gateway-proxy
  namespace: %[1]s
  labels: {gloo: gateway-proxy}
spec:
  replicas: 1
  selector:
    matchLabels: {gloo: gateway-proxy, gateway-proxy-id: gateway-proxy}
  template:
    metadata:
      labels:
        gloo: gateway-proxy
        gateway-proxy-id: gateway-proxy
        gateway-proxy: live
        sds-injector.io/inject: "true"
      annotations:
        %[2]s: sds-agent
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      securityContext: {fsGroup: 10101, runAsUser: 10101}
      serviceAccountName: gateway-proxy
      containers:
      - name: gateway-proxy
        image: %[3]s
        imagePullPolicy: Never
        env: %[4]s
        securityContext:
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
          readOnlyRootFilesystem: true
          runAsNonRoot: true
          runAsUser: 10101
`, gwNS, inject.AnnotationFlavor, checkerRef, envJSON))
}

func glooDeploymentInjected(ctx context.Context, t *testing.T) {
	cs := n.Clientset
	if _, err := cs.CoreV1().ServiceAccounts(gwNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "gateway-proxy"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	root, err := ist.RootCert(ctx, gwNS)
	if err != nil {
		t.Fatal(err)
	}
	spiffe := fmt.Sprintf("spiffe://%s/ns/%s/sa/gateway-proxy", ist.TrustDomain, gwNS)
	file := filepath.Join(prepared.Dir, "gateway-proxy.yaml")
	if err := os.WriteFile(file, gatewayDeployment(t, root, spiffe), 0o644); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if out, err := kubectl(ctx, "apply", "-f", file); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	var pod *corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := cs.CoreV1().Pods(gwNS).List(ctx, metav1.ListOptions{LabelSelector: "gloo=gateway-proxy"})
		if err != nil || len(pods.Items) != 1 {
			return false, nil
		}
		pod = &pods.Items[0]
		return ready(pod), nil
	})
	if err != nil {
		var s string
		if pod != nil {
			s = describePods([]corev1.Pod{*pod})
		}
		t.Fatalf("the gateway pod did not become Ready: %v\n%s", err, s)
	}
	took := time.Since(started)
	owner := metav1.GetControllerOf(pod)
	if owner == nil || owner.Kind != "ReplicaSet" {
		t.Errorf("gateway pod %s owned by %+v, want a ReplicaSet", pod.Name, owner)
	}
	st, err := inject.ParseStatus(pod.Annotations[inject.AnnotationStatus])
	if err != nil || st == nil {
		t.Fatalf("the gateway pod was not injected (status %q): %v", pod.Annotations[inject.AnnotationStatus], err)
	}
	if st.Flavor != inject.FlavorSDSAgent || st.GatewayContainer != "gateway-proxy" || st.GatewayProfile != "gloo-edge" {
		t.Errorf("injected %s into %s (profile %s), want sds-agent into gateway-proxy (gloo-edge)", st.Flavor, st.GatewayContainer, st.GatewayProfile)
	}
	agentImage := prepared.Values[chartinstall.ValueAgent]
	found := false
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Image == agentImage {
			found = true
		}
	}
	if !found {
		t.Errorf("no container of the gateway pod runs the release agent image %s", agentImage)
	}
	for _, c := range pod.Status.ContainerStatuses {
		if !c.Ready {
			t.Errorf("container %s not ready: %+v", c.Name, c.State)
		}
	}
	evs, err := n.Logs(pod).WaitEvents(ctx, "gateway-proxy", 0, time.Minute, func(evs []node.CheckerEvent) bool {
		return node.CountEvents(evs, "cert") >= 1 && node.CountEvents(evs, "rootca") >= 1
	})
	if err != nil {
		t.Fatalf("gateway-checker verified no certificate: %v", err)
	}
	for _, e := range evs {
		if e.Event == "error" {
			t.Errorf("gateway-checker: %s", e.Error)
		}
		if e.Event == "start" && e.UID != 10101 {
			t.Errorf("gateway-checker ran as uid %d, want the gateway's 10101", e.UID)
		}
		if e.Event == "cert" {
			if e.SPIFFE != "" && e.SPIFFE != spiffe {
				t.Errorf("certificate SPIFFE ID %s, want %s", e.SPIFFE, spiffe)
			}
			t.Logf("gateway-checker (uid 10101) verified the chain to istiod's root and %s: serial %s, valid until %s", spiffe, e.Serial, e.NotAfter.Format(time.RFC3339))
		}
	}
	t.Logf("kubectl apply → ReplicaSet %s → pod %s injected by the chart's webhook pods (flavor %s, agent image %s) → Ready on the kubelet in %s",
		owner.Name, pod.Name, st.Flavor, agentImage, took.Round(time.Millisecond))
}

// rolloutUnderLoad restarts the injector Deployment (kubectl rollout
// restart) while gateway pods are created at a steady rate through the
// per-gateway webhook (failurePolicy Fail: any failed call is a refused
// pod). The pods name a node selector no node has, so they stay Pending:
// admission is what is measured.
// unscheduledGateway is a Gloo gateway pod in gwNS that opts in with the
// label (sds-agent flavor) and never runs: its node selector matches no
// node. run labels it chartnode=run for cleanup.
func unscheduledGateway(name, run string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: gwNS,
			Labels:      map[string]string{"gloo": "gateway-proxy", "sds-injector.io/inject": "true", "chartnode": run},
			Annotations: map[string]string{inject.AnnotationFlavor: "sds-agent"}},
		Spec: corev1.PodSpec{ServiceAccountName: "gateway-proxy",
			NodeSelector: map[string]string{"chartnode.sds-injector.test/no-such-node": "true"},
			Containers:   []corev1.Container{{Name: "gateway-proxy", Image: checkerRef, ImagePullPolicy: corev1.PullNever}}},
	}
}

// oneWebhookCallPerPod: as shipped (reinvocationPolicy Never) the API server
// calls the webhook once per pod, although the ServiceAccount admission
// plugin re-runs after the webhooks and mounts the API token into the
// injected agent container — the change that makes IfNeeded call the
// webhook a second time for every injected pod (docs/performance.md, "The
// apiserver's view on a real node"). Counted by the apiserver's own
// admission webhook histogram.
func oneWebhookCallPerPod(ctx context.Context, t *testing.T) {
	const pods = 10
	calls := func() float64 {
		fams, err := n.CP.APIServerMetrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return measure.HistogramOf(fams, "apiserver_admission_webhook_admission_duration_seconds", map[string]string{"type": "admit"}).Count
	}
	before := calls()
	t.Cleanup(func() {
		_ = n.Clientset.CoreV1().Pods(gwNS).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "chartnode=calls"})
	})
	for i := range pods {
		pod := unscheduledGateway(fmt.Sprintf("calls-%02d", i), "calls")
		got, err := n.Clientset.CoreV1().Pods(gwNS).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Annotations[inject.AnnotationStatus] == "" {
			t.Fatalf("%s was not injected", pod.Name)
		}
		var agent *corev1.Container
		for i := range got.Spec.Containers {
			if got.Spec.Containers[i].Name == "sds-agent" {
				agent = &got.Spec.Containers[i]
			}
		}
		if agent == nil {
			t.Fatalf("%s has no sds-agent container", pod.Name)
		}
		if !slices.ContainsFunc(agent.VolumeMounts, func(m corev1.VolumeMount) bool {
			return m.MountPath == "/var/run/secrets/kubernetes.io/serviceaccount"
		}) {
			t.Fatalf("the ServiceAccount plugin did not mount the API token into the injected sds-agent container after the webhook, so this test no longer shows what IfNeeded would reinvoke on: %+v", agent.VolumeMounts)
		}
	}
	got := calls() - before
	if got != pods {
		t.Errorf("the API server made %v admission webhook calls for %d pods, want one per pod (reinvocationPolicy Never)", got, pods)
	}
	t.Logf("%d injected pods (API token mounted into sds-agent after the webhook): %v admission webhook calls", pods, got)
}

func rolloutUnderLoad(ctx context.Context, t *testing.T) {
	cs := n.Clientset
	before := map[string]bool{}
	for _, p := range injectorPods(ctx, t) {
		before[p.Name] = true
	}
	var (
		mu                          sync.Mutex
		created, failed, uninjected int
		failures                    []string
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	const maxPods = 3000
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < maxPods; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			pod := unscheduledGateway(fmt.Sprintf("roll-%04d", i), "roll")
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			got, err := cs.CoreV1().Pods(gwNS).Create(cctx, pod, metav1.CreateOptions{})
			cancel()
			mu.Lock()
			created++
			switch {
			case err != nil:
				failed++
				failures = append(failures, err.Error())
			case got.Annotations[inject.AnnotationStatus] == "":
				uninjected++
				failures = append(failures, pod.Name+": not injected")
			}
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = cs.CoreV1().Pods(gwNS).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "chartnode=roll"})
	})
	// Some load before the roll starts.
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return created >= 20, nil
	}); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if out, err := kubectl(ctx, "-n", releaseNS, "rollout", "restart", "deployment/"+release); err != nil {
		t.Fatalf("kubectl rollout restart: %v\n%s", err, out)
	}
	out, err := kubectl(ctx, "-n", releaseNS, "rollout", "status", "deployment/"+release, "--timeout=4m")
	if err != nil {
		t.Fatalf("kubectl rollout status: %v\n%s", err, out)
	}
	rolled := time.Since(started)
	// Until every old pod is gone (terminated and deleted).
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := listInjectorPods(ctx)
		if err != nil {
			return false, nil
		}
		r := 0
		for i := range pods {
			if before[pods[i].Name] {
				return false, nil
			}
			if ready(&pods[i]) {
				r++
			}
		}
		return r == 2, nil
	})
	if err != nil {
		t.Fatalf("the old injector pods did not all go: %v\n%s", err, describePods(injectorPods(ctx, t)))
	}
	gone := time.Since(started)
	// A little load after the last old pod went.
	mu.Lock()
	mark := created
	mu.Unlock()
	_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return created >= mark+20, nil
	})
	close(stop)
	<-done
	mu.Lock()
	defer mu.Unlock()
	t.Logf("rollout restart of 2 replicas (maxSurge 1, maxUnavailable 0): rollout status complete after %s, old pods gone after %s; %d gateway pods created at 20/s (20 before the restart, through the roll, 20 after the last old pod went) through the per-gateway webhook (failurePolicy Fail): %d failed admissions, %d not injected",
		rolled.Round(time.Millisecond), gone.Round(time.Millisecond), created, failed, uninjected)
	if created >= maxPods {
		t.Errorf("the stream hit its bound (%d pods) before the roll ended", maxPods)
	}
	if failed > 0 || uninjected > 0 {
		if len(failures) > 10 {
			failures = failures[:10]
		}
		t.Errorf("%d failed admissions and %d pods not injected during the roll; first: %s", failed, uninjected, strings.Join(failures, "\n  "))
	}
}

// events lists a namespace's events (for failure messages).
func events(ns string) string {
	evs, err := n.Clientset.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return "\nevents: " + err.Error()
	}
	var b strings.Builder
	b.WriteString("\nevents in " + ns + ":\n")
	for _, e := range evs.Items {
		fmt.Fprintf(&b, "  %s %s/%s %s: %s\n", e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message)
	}
	return b.String()
}

// failClosedWithoutInjector is the negative control of the rollout step:
// with the injector scaled to 0 the same gateway pod is refused (the
// per-gateway webhook is fail-closed), so a failed call during the roll
// would have shown as a failed admission.
func failClosedWithoutInjector(ctx context.Context, t *testing.T) {
	if out, err := kubectl(ctx, "-n", releaseNS, "scale", "deployment/"+release, "--replicas=0"); err != nil {
		t.Fatalf("kubectl scale: %v\n%s", err, out)
	}
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := listInjectorPods(ctx)
		return err == nil && len(pods) == 0, nil
	})
	if err != nil {
		t.Fatalf("the injector pods did not go: %v", err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "no-injector", Namespace: gwNS,
			Labels: map[string]string{"gloo": "gateway-proxy", "sds-injector.io/inject": "true", "chartnode": "roll"}},
		Spec: corev1.PodSpec{ServiceAccountName: "gateway-proxy",
			NodeSelector: map[string]string{"chartnode.sds-injector.test/no-such-node": "true"},
			Containers:   []corev1.Container{{Name: "gateway-proxy", Image: checkerRef, ImagePullPolicy: corev1.PullNever}}},
	}
	_, err = n.Clientset.CoreV1().Pods(gwNS).Create(ctx, pod, metav1.CreateOptions{})
	if err == nil {
		t.Fatal("a per-gateway pod was admitted with no injector running: the rollout step could not have seen a failed call")
	}
	if !strings.Contains(err.Error(), "failed calling webhook") {
		t.Fatalf("refused, but not by the webhook call: %v", err)
	}
	t.Logf("with 0 injector replicas the per-gateway pod is refused: %v", err)
}

func firstLines(s string, k int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > k {
		lines = lines[:k]
	}
	return strings.Join(lines, " | ")
}

func describePods(pods []corev1.Pod) string {
	var b strings.Builder
	for _, p := range pods {
		fmt.Fprintf(&b, "pod %s: phase %s node %q\n", p.Name, p.Status.Phase, p.Spec.NodeName)
		for _, c := range p.Status.Conditions {
			fmt.Fprintf(&b, "  %s=%s %s %s\n", c.Type, c.Status, c.Reason, c.Message)
		}
		for _, c := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			fmt.Fprintf(&b, "  container %s ready=%v restarts=%d state=%+v last=%+v\n", c.Name, c.Ready, c.RestartCount, c.State, c.LastTerminationState)
		}
	}
	b.WriteString("kubelet log (tail):\n" + n.LogTail("kubelet", 20) + "\nkube-proxy log (tail):\n" + n.LogTail("kube-proxy", 10) + "\nkube-scheduler log (tail):\n" + n.LogTail("kube-scheduler", 10))
	return b.String()
}
