// Package sdsagent runs the slim SDS agent (cmd/sds-agent) end to end
// against a real istiod (pilot-discovery built from istio.io/istio) on a
// local kube-apiserver: the agent gets the engine's injected configuration,
// authenticates with a TokenRequest token for the gateway's ServiceAccount
// (audience istio-ca), and serves the certificate istiod issues over SDS on
// its Unix socket.
package sdsagent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/harness"
	"github.com/sds-injector/sds-injector/test/istiod"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

const (
	gwNamespace = "gw"
	gwSA        = "gateway"
	gwPod       = "gw-0"
	wantID      = "spiffe://cluster.local/ns/gw/sa/gateway"
	agentUID    = 1337
	// stranger is a UID in neither the agent's nor the pod's groups.
	stranger = 4242
)

// world is a control plane with istiod, the gateway's namespace and
// ServiceAccount, and a freshly built agent.
type world struct {
	cp       *controlplane.ControlPlane
	ist      *istiod.Istiod
	kube     kubernetes.Interface
	dir      string
	agentBin string
	root     []byte
	roots    *x509.CertPool
}

func setup(tb testing.TB) *world {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	start := time.Now()
	cp := controlplane.MustStart(ctx, tb, controlplane.Options{})
	ist, err := istiod.Start(ctx, cp, istiod.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("istiod log (tail):\n%s", ist.LogTail(40))
		}
		_ = ist.Stop()
	})
	tb.Logf("control plane and istiod (%s) up in %s", ist.Release, time.Since(start).Round(time.Millisecond))

	kube, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		tb.Fatal(err)
	}
	// envtest runs no ServiceAccount admission and no controllers: create
	// the namespace and the ServiceAccount ourselves.
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: gwNamespace}}, metav1.CreateOptions{}); err != nil {
		tb.Fatal(err)
	}
	if _, err := kube.CoreV1().ServiceAccounts(gwNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: gwSA}}, metav1.CreateOptions{}); err != nil {
		tb.Fatal(err)
	}
	root, err := ist.RootCert(ctx, gwNamespace)
	if err != nil {
		tb.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(root) {
		tb.Fatal("istio-ca-root-cert holds no certificate")
	}

	// Short (socket paths are limited to 107 bytes) and traversable by the
	// agent's and the gateway's UIDs.
	dir, err := os.MkdirTemp("", "sdse2e")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	w := &world{cp: cp, ist: ist, kube: kube, dir: dir, root: root, roots: roots}
	w.agentBin = harness.MustBuild(tb, harness.Agent, harness.Static)
	return w
}

// agentPod is the injected sds-agent container laid out on this machine the
// way the kubelet would: its volumes as directories, its environment
// resolved.
type agentPod struct {
	pod       *corev1.Pod
	container corev1.Container
	env       []string
	socket    string
	fsGroup   int64
	gatewayID int64 // the gateway container's UID
}

// injectAgent injects the Gloo Edge example gateway pod with the sds-agent
// flavor and prepares the agent container's volumes: the socket emptyDir,
// the projected token (TokenRequest with the projection's audience and
// lifetime) and the istio-ca-root-cert ConfigMap. extraEnv is appended.
func (w *world) injectAgent(t testing.TB, extraEnv ...string) *agentPod {
	t.Helper()
	ctx := context.Background()
	b, err := os.ReadFile("../../docs/examples/gloo-gateway-proxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{}
	if err := yaml.Unmarshal(b, pod); err != nil {
		t.Fatal(err)
	}
	pod.Name, pod.Namespace, pod.Spec.ServiceAccountName = gwPod, gwNamespace, gwSA
	cfg := inject.DefaultConfig()
	cfg.Flavor = inject.FlavorSDSAgent
	res := inject.Inject(pod, cfg.MustResolve())
	if res.Decision.Outcome != inject.OutcomeInjected {
		t.Fatalf("not injected: %+v", res.Decision)
	}
	pod = res.Pod
	if n := len(pod.Spec.Containers); n != 2 {
		t.Fatalf("the injected pod has %d containers, want the gateway plus one agent", n)
	}
	ap := &agentPod{pod: pod, container: pod.Spec.Containers[0], fsGroup: -1}
	if ap.container.Name != "sds-agent" {
		t.Fatalf("first container %s", ap.container.Name)
	}
	if sc := pod.Spec.SecurityContext; sc != nil && sc.FSGroup != nil {
		ap.fsGroup = *sc.FSGroup
	}
	ap.gatewayID = -1
	if sc := pod.Spec.SecurityContext; sc != nil && sc.RunAsUser != nil {
		ap.gatewayID = *sc.RunAsUser
	}

	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]string{} // container path -> host path
	for _, m := range ap.container.VolumeMounts {
		host := filepath.Join(w.dir, "volumes", m.Name)
		mounts[m.MountPath] = host
		if err := os.MkdirAll(host, 0o755); err != nil {
			t.Fatal(err)
		}
		v := vols[m.Name]
		switch {
		case v.EmptyDir != nil:
			// An emptyDir with fsGroup: setgid, group-owned by fsGroup, 0777.
			if ap.fsGroup >= 0 {
				if err := os.Chown(host, 0, int(ap.fsGroup)); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(host, 0o777|os.ModeSetgid); err != nil {
				t.Fatal(err)
			}
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				sat := src.ServiceAccountToken
				if sat == nil {
					continue
				}
				tr, err := w.kube.CoreV1().ServiceAccounts(gwNamespace).CreateToken(ctx, gwSA, &authenticationv1.TokenRequest{
					Spec: authenticationv1.TokenRequestSpec{Audiences: []string{sat.Audience}, ExpirationSeconds: sat.ExpirationSeconds},
				}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				w.writeVolumeFile(t, filepath.Join(host, sat.Path), []byte(tr.Status.Token), 0o640, ap.fsGroup)
			}
		case v.ConfigMap != nil:
			cm, err := w.kube.CoreV1().ConfigMaps(gwNamespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for k, val := range cm.Data {
				w.writeVolumeFile(t, filepath.Join(host, k), []byte(val), 0o644, -1)
			}
		default:
			t.Fatalf("volume %s: unexpected source", m.Name)
		}
	}

	fields := map[string]string{"metadata.name": gwPod, "metadata.namespace": gwNamespace, "spec.serviceAccountName": gwSA,
		"status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.2"}
	for _, e := range ap.container.Env {
		v := e.Value
		if e.ValueFrom != nil {
			var ok bool
			if v, ok = fields[e.ValueFrom.FieldRef.FieldPath]; !ok {
				t.Fatalf("env %s: unexpected field %s", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		}
		for cpath, host := range mounts {
			if strings.HasPrefix(v, cpath+"/") {
				v = host + strings.TrimPrefix(v, cpath)
			}
		}
		if e.Name == "CA_ADDR" {
			// What DNS would resolve istiod.istio-system.svc:15012 to.
			v = w.ist.CAAddr
		}
		if e.Name == "SDS_SOCKET_PATH" {
			ap.socket = v
		}
		ap.env = append(ap.env, e.Name+"="+v)
	}
	ap.env = append(ap.env, extraEnv...)
	return ap
}

func (w *world) writeVolumeFile(t testing.TB, path string, data []byte, mode os.FileMode, gid int64) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if gid >= 0 {
		if err := os.Chown(path, 0, int(gid)); err != nil {
			t.Fatal(err)
		}
	}
}

// asRoot reports whether the test can switch UIDs like the kubelet.
func asRoot() bool { return os.Geteuid() == 0 }

// credential is what the kubelet would run a container process as: uid
// (gid = uid) with the pod's fsGroup as a supplementary group when
// podGroups. Without root, or with uid < 0, the test's own user.
func (ap *agentPod) credential(uid int64, podGroups bool) *syscall.SysProcAttr {
	if uid < 0 || !asRoot() {
		return nil
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}
	if podGroups && ap.fsGroup >= 0 {
		cred.Groups = []uint32{uint32(ap.fsGroup)}
	}
	return &syscall.SysProcAttr{Credential: cred}
}

// command runs the agent binary with the container's environment.
func (ap *agentPod) command(bin string, uid int64, podGroups bool, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Dir, cmd.SysProcAttr = ap.env, "/", ap.credential(uid, podGroups)
	return cmd
}

// execHandler runs an exec probe or hook command of the injected container
// (["sds-agent", subcommand...]) with the binary built here.
func (ap *agentPod) execHandler(t testing.TB, bin string, argv []string, uid int64, podGroups bool, timeout time.Duration) (string, error) {
	t.Helper()
	if len(argv) < 2 || argv[0] != "sds-agent" {
		t.Fatalf("handler %v does not run sds-agent", argv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, argv[1:]...)
	cmd.Env, cmd.Dir, cmd.SysProcAttr = ap.env, "/", ap.credential(uid, podGroups)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestRealIstiod(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: this test starts a local kube-apiserver and a real istiod (built from istio.io/istio on first use, about 10 minutes) and waits for a certificate rotation")
	}
	w := setup(t)
	// A short lifetime, so that the rotation happens within the test.
	const ttl = 30 * time.Second
	ap := w.injectAgent(t, "CERT_TTL="+ttl.String())

	began := time.Now()
	agentProc := harness.Start(t, "sds-agent", ap.command(w.agentBin, agentUID, true))

	// Classic placement: the kubelet runs the postStart hook, which must
	// return once the certificate is served (it holds the gateway back).
	hook := ap.container.Lifecycle.PostStart.Exec.Command
	if out, err := ap.execHandler(t, w.agentBin, hook, agentUID, true, 3*time.Minute); err != nil {
		t.Fatalf("postStart %v: %v\n%s", hook, err, out)
	} else {
		t.Logf("postStart %v returned after %s: %s", hook, time.Since(began).Round(time.Millisecond), out)
	}
	probe := ap.container.ReadinessProbe.Exec.Command
	if out, err := ap.execHandler(t, w.agentBin, probe, agentUID, true, 10*time.Second); err != nil {
		t.Fatalf("readiness probe %v: %v\n%s", probe, err, out)
	}

	// The socket's permissions: the gateway container (its own UID, in the
	// pod's fsGroup) can use it; a UID outside the pod's groups cannot.
	fi, err := os.Stat(ap.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("socket %s mode %v", ap.socket, fi.Mode())
	if ap.fsGroup >= 0 {
		if !asRoot() {
			t.Fatalf("the socket's UID and group checks switch users as the kubelet does: run this test as root (uid %d now)", os.Geteuid())
		}
		if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o660 || int64(st.Gid) != ap.fsGroup || st.Uid != agentUID {
			t.Errorf("socket mode %v owner %d:%d, want 0660 %d:%d (fsGroup shares the emptyDir)", fi.Mode(), st.Uid, st.Gid, agentUID, ap.fsGroup)
		}
		if out, err := ap.execHandler(t, w.agentBin, probe, ap.gatewayID, true, 10*time.Second); err != nil {
			t.Errorf("the gateway's UID %d cannot use the socket: %v\n%s", ap.gatewayID, err, out)
		}
		if out, err := ap.execHandler(t, w.agentBin, probe, stranger, false, 10*time.Second); err == nil || !strings.Contains(out, "permission denied") {
			t.Errorf("UID %d outside the pod's groups reached the socket: %v %s", stranger, err, out)
		}
	}

	// The gateway's Envoy: one stream for both secrets.
	s := subscribe(t, ap.socket, "default", "ROOTCA")
	got := map[string]bool{}
	var first *x509.Certificate
	for !got["default"] || !got["ROOTCA"] {
		for name, sec := range s.next(time.Minute) {
			got[name] = true
			switch name {
			case "default":
				first = workloadCert(t, sec, wantID, w.roots)
			case "ROOTCA":
				ca := sec.GetValidationContext().GetTrustedCa().GetInlineBytes()
				if string(ca) != string(w.root) {
					t.Errorf("ROOTCA differs from istio-ca-root-cert:\n%s\nwant\n%s", ca, w.root)
				}
			}
		}
	}
	t.Logf("default: %s serial %s issuer %q valid %s – %s", first.URIs[0], first.SerialNumber.Text(16), first.Issuer,
		first.NotBefore.Format(time.RFC3339), first.NotAfter.Format(time.RFC3339))
	if life := time.Until(first.NotAfter); life > ttl+5*time.Second {
		t.Errorf("certificate valid for %s more, want the requested %s", life, ttl)
	}

	// Rotation: a new certificate is pushed on the open stream before the
	// first one expires.
	for {
		sec := s.next(3 * ttl)["default"]
		if sec == nil {
			continue
		}
		leaf := workloadCert(t, sec, wantID, w.roots)
		if leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
			t.Logf("rotated at %s before expiry: serial %s valid until %s", time.Until(first.NotAfter).Round(time.Second),
				leaf.SerialNumber.Text(16), leaf.NotAfter.Format(time.RFC3339))
			if !time.Now().Before(first.NotAfter) {
				t.Errorf("rotation came after the old certificate expired")
			}
			break
		}
	}

	// No TCP port: the reason the flavor is allowed on hostNetwork pods.
	if l := tcpListeners(t, agentProc.Cmd.Process.Pid); len(l) != 0 {
		t.Errorf("sds-agent listens on TCP: %v", l)
	}

	t.Run("pilot-agent issues the same identity", func(t *testing.T) {
		w.comparePilotAgent(t, first)
	})

	// Shutdown: the gateway goes away, then SIGTERM; the agent exits
	// cleanly and removes its socket.
	s.close()
	stopStart := time.Now()
	if err := agentProc.Stop(30 * time.Second); err != nil {
		t.Errorf("sds-agent exit: %v", err)
	}
	t.Logf("sds-agent stopped %s after SIGTERM", time.Since(stopStart).Round(time.Millisecond))
	if _, err := os.Stat(ap.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	log := agentProc.Output()
	for _, want := range []string{"certificate issued", "all SDS streams closed", "stopped"} {
		if !strings.Contains(log, want) && !(want == "all SDS streams closed" && strings.Contains(log, "shutting down")) {
			t.Errorf("agent log lacks %q", want)
		}
	}
}

// comparePilotAgent runs the stock pilot-agent with Envoy disabled against
// the same istiod and token, and checks it gets the same identity from the
// same issuer.
func (w *world) comparePilotAgent(t *testing.T, ours *x509.Certificate) {
	wd, out, _ := w.runPilotAgent(t)
	leaf := waitCertChain(t, filepath.Join(out, "cert-chain.pem"))[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != ours.URIs[0].String() {
		t.Errorf("pilot-agent identity %v, sds-agent %v", leaf.URIs, ours.URIs)
	}
	if leaf.Issuer.String() != ours.Issuer.String() {
		t.Errorf("pilot-agent issuer %q, sds-agent %q", leaf.Issuer, ours.Issuer)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: w.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("pilot-agent certificate: %v", err)
	}
	t.Logf("pilot-agent (%s): %s issuer %q", wd, leaf.URIs[0], leaf.Issuer)
}

// runPilotAgent starts pilot-agent in DISABLE_ENVOY mode (the
// istio-agent-files flavor) in a fresh working directory, with a token for
// the gateway's ServiceAccount; it returns the directory, OUTPUT_CERTS and
// the process.
func (w *world) runPilotAgent(t testing.TB) (wd, outCerts string, proc *harness.Process) {
	t.Helper()
	wd = filepath.Join(w.dir, "pilot-agent")
	outCerts = filepath.Join(wd, "out-certs")
	tokenDir := filepath.Join(wd, "var", "run", "secrets", "tokens")
	rootDir := filepath.Join(wd, "var", "run", "secrets", "istio")
	for _, d := range []string{outCerts, tokenDir, rootDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tr, err := w.kube.CoreV1().ServiceAccounts(gwNamespace).CreateToken(context.Background(), gwSA, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"istio-ca"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tokenDir, "istio-token"), []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootDir, "root-cert.pem"), w.root, 0o644); err != nil {
		t.Fatal(err)
	}
	statusPort := harness.FreePort(t, "127.0.0.1")
	cmd := exec.Command(filepath.Join(w.ist.BinaryDir, istiod.AgentBinary), "proxy", "sidecar", "--log_output_level=default:info")
	// The agent reads its token and CA root relative to its working directory.
	cmd.Dir = wd
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + wd,
		"DISABLE_ENVOY=true", "OUTPUT_CERTS=" + outCerts,
		"CA_ADDR=" + w.ist.CAAddr, "PILOT_CERT_PROVIDER=istiod",
		"POD_NAME=" + gwPod, "POD_NAMESPACE=" + gwNamespace, "SERVICE_ACCOUNT=" + gwSA, "INSTANCE_IP=127.0.0.1",
		"CLOUD_PLATFORM=none", "ISTIO_META_CLUSTER_ID=Kubernetes", "TRUST_DOMAIN=cluster.local", "JWT_POLICY=third-party-jwt",
		// The status port cannot be turned off and binds all interfaces:
		// a free port keeps parallel runs apart.
		fmt.Sprintf(`PROXY_CONFIG={"discoveryAddress":"%s","statusPort":%d}`, w.ist.CAAddr, statusPort),
	}
	return wd, outCerts, harness.Start(t, "pilot-agent", cmd)
}

// waitCertChain waits for pilot-agent to have written a whole certificate
// chain to path (every PEM block a certificate, nothing left over) and
// returns it.
func waitCertChain(t testing.TB, path string) []*x509.Certificate {
	t.Helper()
	var chain []*x509.Certificate
	harness.Await(context.Background(), t, 2*time.Minute, "pilot-agent's "+path, func(context.Context) (bool, error) {
		data, err := os.ReadFile(path)
		if err != nil {
			return false, err
		}
		chain = chain[:0]
		for {
			var block *pem.Block
			if block, data = pem.Decode(data); block == nil {
				break
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return false, err
			}
			chain = append(chain, c)
		}
		if len(bytes.TrimSpace(data)) > 0 {
			return false, fmt.Errorf("%d bytes after the last whole PEM block", len(data))
		}
		return len(chain) > 0, nil
	})
	return chain
}
