package flavors

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/test/flavors/kubelet"
	"github.com/sds-injector/sds-injector/test/istiod"
	"github.com/sds-injector/sds-injector/test/sdsclient"
	"github.com/sds-injector/sds-injector/webhook/inject"

	"github.com/sds-injector/sds-injector/test/harness"
)

const repoRoot = "../.."

// Generous bounds: the machine may be small and busy with other tests.
const (
	firstSecretTimeout = 2 * time.Minute
	stopGrace          = 20 * time.Second
)

// gateway is an example gateway pod from docs/examples.
type gateway struct {
	name, file string
	// profile is the built-in gateway profile the pod matches, container
	// its Envoy container.
	profile, container string
}

var gateways = []gateway{
	{"gloo", "gloo-gateway-proxy.yaml", "gloo-edge", "gateway-proxy"},
	{"envoy-gateway", "envoy-gateway-proxy.yaml", "envoy-gateway", "envoy"},
}

// consumes reports whether the gateway's built-in profile says its gateway
// can consume flavor f.
func (g gateway) consumes(t *testing.T, f inject.Flavor) bool {
	for _, p := range inject.BuiltinProfiles() {
		if p.Name == g.profile {
			return len(p.Flavors) == 0 || slices.Contains(p.Flavors, f)
		}
	}
	t.Fatalf("no built-in gateway profile %s", g.profile)
	return false
}

func loadPod(t *testing.T, file string) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "docs", "examples", file))
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return &pod
}

// ------------------------------------------------------------------ images

// Agent images as the kubelet emulator lays them out.
const (
	proxyv2PilotAgent = "/usr/local/bin/pilot-agent"
	// The proxyv2 image's bootstrap template; pilot-agent reads it through
	// the relative path ./var/lib/istio/envoy/envoy_bootstrap_tmpl.json.
	proxyv2BootstrapTemplate = "/var/lib/istio/envoy/envoy_bootstrap_tmpl.json"
	// sds-agent's image (Dockerfile, target sds-agent): the binary in
	// /usr/local/bin (on PATH: the injected probe runs "sds-agent probe")
	// as ENTRYPOINT, on gcr.io/distroless/static-debian12:nonroot, whose
	// WORKDIR is /home/nonroot (the Dockerfile sets none).
	sdsAgentPath    = "/usr/local/bin/sds-agent"
	sdsAgentWorkDir = "/home/nonroot"
	imagePATH       = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// images resolves the agents' images to local binaries: docker.io/istio/
// proxyv2 to pilot-agent built from the istio module istiod runs (its
// WORKDIR, ENTRYPOINT and bootstrap template as in Istio's
// Dockerfile.proxyv2), the sds-agent image to the binary built from
// ./cmd/sds-agent. Gateway images have no files: they are never run.
func (s *suite) images(sdsAgentBin string) func(string) (*kubelet.Image, error) {
	return func(ref string) (*kubelet.Image, error) {
		repo, _, _ := strings.Cut(ref, "@")
		if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
			repo = repo[:i]
		}
		switch {
		case strings.HasSuffix(repo, "/proxyv2"):
			return &kubelet.Image{
				Entrypoint: []string{proxyv2PilotAgent},
				WorkingDir: "/",
				Env:        []string{imagePATH},
				Files: []kubelet.File{
					{Path: proxyv2PilotAgent, Source: filepath.Join(s.istiod.BinaryDir, istiod.AgentBinary), Executable: true},
					{Path: proxyv2BootstrapTemplate, Source: s.bootstrapTemplate()},
				},
			}, nil
		case repo == "ghcr.io/sds-injector/sds-agent":
			if sdsAgentBin == "" {
				return nil, errors.New("no sds-agent binary")
			}
			return &kubelet.Image{
				Entrypoint: []string{sdsAgentPath},
				WorkingDir: sdsAgentWorkDir,
				Env:        []string{imagePATH},
				Files:      []kubelet.File{{Path: sdsAgentPath, Source: sdsAgentBin, Executable: true}},
			}, nil
		}
		return nil, nil
	}
}

// bootstrapTemplate is the Envoy bootstrap template the proxyv2 image of
// istiod's release ships (Istio 1.5 named it envoy_bootstrap_v2.json).
func (s *suite) bootstrapTemplate() string {
	dir := filepath.Join(s.istiod.ModuleDir, "tools", "packaging", "common")
	for _, name := range []string{"envoy_bootstrap.json", "envoy_bootstrap_v2.json"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name)
		}
	}
	return filepath.Join(dir, "envoy_bootstrap.json")
}

// needSDSAgent builds ./cmd/sds-agent once per run (test/harness, static as
// the image builds it); a build failure fails the case.
func needSDSAgent(t *testing.T, _ *suite) string {
	t.Helper()
	return harness.MustBuild(t, harness.Agent, harness.Static)
}

// ------------------------------------------------------------------- cases

// caseSpec is one run of the engine's output through the kubelet emulator.
type caseSpec struct {
	flavor  inject.Flavor
	gateway gateway
	native  bool
	// istioVersion, if set, is the engine's IstioVersion (profile).
	istioVersion string
	// configure changes the engine configuration (negative controls).
	configure func(*inject.Config)
	// mutate changes the injected pod before it is created (negative
	// controls only: the positive cases run the engine's output as is).
	mutate  func(t *testing.T, pod *corev1.Pod, st *inject.Status)
	podOpts kubelet.PodOptions
}

func (c caseSpec) placement() string {
	if c.native {
		return inject.PlacementNative
	}
	return inject.PlacementClassic
}

// running is a case whose agent has been started.
type running struct {
	spec     caseSpec
	pod      *corev1.Pod // as stored by the apiserver
	kp       *kubelet.Pod
	st       *inject.Status
	profile  inject.IstioProfile
	agent    string
	gw       string
	proc     *kubelet.Process
	rootPEM  []byte
	spiffeID string
	node     string
	// istiodLogFrom is the length of istiod's log when the agent started:
	// evidence in istiod's log must come after it.
	istiodLogFrom int
}

var caseSeq struct {
	sync.Mutex
	n int
}

// prepare injects the example pod, creates it in the apiserver with its
// ServiceAccount and the gateway's own objects, and sets up its volumes.
// It returns the kubelet pod, or the SetUpPod error for the caller to
// judge.
func (s *suite) prepare(t *testing.T, c caseSpec) (*running, error) {
	t.Helper()
	ctx := context.Background()
	var sdsBin string
	if c.flavor == inject.FlavorSDSAgent {
		sdsBin = needSDSAgent(t, s)
	}
	cfg := inject.DefaultConfig()
	cfg.Flavor = c.flavor
	cfg.NativeSidecar = c.native
	if rel := istiod.ReleaseUnderTest(); rel != "" {
		// The agent contract of the release that runs.
		cfg.IstioVersion = rel
	}
	if c.istioVersion != "" {
		cfg.IstioVersion = c.istioVersion
	}
	if c.configure != nil {
		c.configure(&cfg)
	}
	settings, err := cfg.Resolve()
	if version, verr := inject.ParseIstioVersion(cfg.IstioVersion); verr == nil {
		if ferr := version.SupportsFlavor(c.flavor); ferr != nil {
			// Expected to be unsupported: the engine must refuse it, for
			// that reason, and nothing is run.
			if err == nil || !strings.Contains(err.Error(), ferr.Error()) {
				t.Fatalf("Istio %s cannot serve flavor %s (%v), but the engine's Resolve gave %v", cfg.IstioVersion, c.flavor, ferr, err)
			}
			noteCase(t, "engine refuses: "+ferr.Error())
			t.Skipf("%s: the engine refuses the configuration as it should: %v", expectedUnsupported, err)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	orig := loadPod(t, c.gateway.file)
	if !c.gateway.consumes(t, c.flavor) {
		// The profile turns this flavor away (the gateway's configuration
		// cannot use it, docs/gateway-wiring.md); the agent is still proven
		// on the same pod shape, requested through the generic profile.
		if orig.Annotations == nil {
			orig.Annotations = map[string]string{}
		}
		orig.Annotations[inject.AnnotationGatewayContainer] = c.gateway.container
		t.Logf("gateway profile %s does not consume flavor %s: requested through the generic profile (annotation %s=%s)",
			c.gateway.profile, c.flavor, inject.AnnotationGatewayContainer, c.gateway.container)
		noteCase(t, "generic profile (the "+c.gateway.profile+" profile does not consume this flavor)")
	}
	caseSeq.Lock()
	caseSeq.n++
	orig.Name = fmt.Sprintf("%s-%d", orig.Name, caseSeq.n)
	caseSeq.Unlock()

	res := inject.Inject(orig, settings)
	if res.Decision.Outcome != inject.OutcomeInjected {
		t.Fatalf("engine did not inject %s: %+v", c.gateway.file, res.Decision)
	}
	st, err := inject.ParseStatus(res.Pod.Annotations[inject.AnnotationStatus])
	if err != nil {
		t.Fatal(err)
	}
	version, err := inject.ParseIstioVersion(st.IstioVersion)
	if err != nil {
		t.Fatal(err)
	}
	r := &running{spec: c, st: st, profile: version.Profile(), gw: st.GatewayContainer}
	switch {
	case len(st.InitContainers) == 1 && c.native:
		r.agent = st.InitContainers[0]
	case len(st.Containers) == 1 && !c.native:
		r.agent = st.Containers[0]
	default:
		t.Fatalf("status lists containers %v and init containers %v for placement %s", st.Containers, st.InitContainers, c.placement())
	}
	pod := res.Pod
	if c.mutate != nil {
		pod = pod.DeepCopy()
		c.mutate(t, pod, st)
	}

	s.ensureNamespace(t, pod.Namespace)
	s.ensureServiceAccount(t, pod.Namespace, pod.Spec.ServiceAccountName)
	s.ensureGatewayObjects(t, orig)
	stored, err := s.clientset.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("the apiserver refused the injected pod: %v", err)
	}
	t.Cleanup(func() {
		err := s.clientset.CoreV1().Pods(stored.Namespace).Delete(context.Background(), stored.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting pod: %v", err)
		}
	})
	r.pod = stored
	r.spiffeID = fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", inject.DefaultTrustDomain, stored.Namespace, stored.Spec.ServiceAccountName)
	r.node = fmt.Sprintf("router~127.0.0.1~%s.%s~%s.svc.cluster.local", stored.Name, stored.Namespace, stored.Namespace)

	// What the pod will mount: istiod publishes its root into every
	// namespace shortly after the namespace exists.
	rctx, cancel := context.WithTimeout(ctx, firstSecretTimeout)
	defer cancel()
	if r.rootPEM, err = s.istiod.RootCert(rctx, stored.Namespace); err != nil {
		t.Fatal(err)
	}

	k := &kubelet.Kubelet{
		Client:        s.clientset,
		Images:        s.images(sdsBin),
		APIServerHost: s.apiHost,
		APIServerPort: s.apiPort,
	}
	kp, err := k.SetUpPod(ctx, stored, c.podOpts)
	if err != nil {
		return r, err
	}
	t.Cleanup(func() {
		if err := kp.Cleanup(); err != nil {
			t.Errorf("removing the pod directory: %v", err)
		}
	})
	r.kp = kp
	if !kp.UIDEmulated {
		t.Logf("not running as root: containers run as uid %d instead of their runAsUser", os.Getuid())
	}
	return r, nil
}

// start runs the agent container. The only changes to what the engine
// wrote are the ones a pod on this machine needs, each with its reason
// (kubelet also records the relative-path mapping of absolute paths).
func (s *suite) start(t *testing.T, r *running) {
	t.Helper()
	portMap := map[int32]int{15020: harness.FreePort(t, "127.0.0.1"), 15021: harness.FreePort(t, "127.0.0.1"), 15090: harness.FreePort(t, "127.0.0.1")}
	rewrite := func(name, value string) (string, string) {
		switch name {
		case "CA_ADDR":
			return s.istiod.CAAddr, "istiod listens on this machine's loopback; localhost:<port> reaches it and matches its serving certificate (ISTIOD_CUSTOM_HOST=localhost)"
		case "PROXY_CONFIG":
			var pc map[string]any
			if err := json.Unmarshal([]byte(value), &pc); err != nil {
				t.Fatalf("PROXY_CONFIG %q: %v", value, err)
			}
			pc["discoveryAddress"] = s.istiod.CAAddr
			pc["statusPort"] = portMap[15020]
			why := "discovery address: same istiod as CA_ADDR; statusPort: 15020 must be free here (the agent binds it on all interfaces)"
			if r.spec.flavor == inject.FlavorIstioProxy {
				pc["binaryPath"] = s.standInEnvoy
				why += "; binaryPath: the stand-in Envoy (the image's /usr/local/bin/envoy is an absolute path the test cannot provide)"
			}
			b, err := json.Marshal(pc)
			if err != nil {
				t.Fatal(err)
			}
			return string(b), why
		}
		return value, ""
	}
	s.bindAbsoluteAgentPaths(t, r)
	r.istiodLogFrom = len(s.istiod.Log())
	proc, err := r.kp.Start(context.Background(), r.agent, kubelet.StartOptions{EnvRewrite: rewrite, PortMap: portMap})
	if err != nil {
		t.Fatal(err)
	}
	r.proc = proc
	t.Cleanup(func() {
		_ = proc.Stop(stopGrace)
		if t.Failed() {
			t.Logf("agent log:\n%s", tail(proc.Log(), 80))
		}
	})
	for _, rw := range proc.Rewrites {
		t.Logf("rewrite: %s", rw)
	}
}

// Istio agents before 1.14 reach their config directory through the
// absolute path /etc/istio/proxy (the SDS socket /etc/istio/proxy/SDS,
// Envoy's bootstrap), and Istio 1.5's agent execs /usr/local/bin/envoy and
// reads /var/lib/istio/envoy/envoy_bootstrap_tmpl.json: in a container
// those are in its own root. test/istio-releases/run.sh runs such releases
// in a private mount namespace (overlays on /etc, /usr/local/bin and
// /var/lib, the stand-in Envoy and the bootstrap template in place) and
// says so with this variable; each case then bind-mounts the agent's
// volumes under /etc/istio at their mountPath, as the real node would.
const privateMountNSEnv = "SDS_INJECTOR_PRIVATE_MOUNT_NS"

const absoluteAgentPathsBefore = 14

func (s *suite) bindAbsoluteAgentPaths(t *testing.T, r *running) {
	t.Helper()
	rel := istiod.ReleaseUnderTest()
	if rel == "" || r.spec.flavor == inject.FlavorSDSAgent {
		return
	}
	v, err := inject.ParseIstioVersion(rel)
	if err != nil {
		t.Fatal(err)
	}
	if v.Minor >= absoluteAgentPathsBefore {
		return
	}
	self, _ := os.Readlink("/proc/self/ns/mnt")
	init, _ := os.Readlink("/proc/1/ns/mnt")
	if os.Getenv(privateMountNSEnv) != "1" || self == "" || self == init {
		t.Fatalf("Istio %s's agent uses the absolute path /etc/istio/proxy (SDS socket, Envoy bootstrap): run this release through test/istio-releases/run.sh, "+
			"which runs it in a private mount namespace (%s=%q, mount namespace %s, init's %s)", rel, privateMountNSEnv, os.Getenv(privateMountNSEnv), self, init)
	}
	for _, m := range mustContainer(t, r, r.agent).VolumeMounts {
		if !strings.HasPrefix(path.Clean(m.MountPath)+"/", "/etc/istio/") {
			continue
		}
		src, err := filepath.EvalSymlinks(r.kp.HostPath(r.agent, m.MountPath))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(m.MountPath, 0o755); err != nil {
			t.Fatalf("private mount namespace: %v", err)
		}
		flags := uintptr(syscall.MS_BIND)
		if err := syscall.Mount(src, m.MountPath, "", flags, ""); err != nil {
			t.Fatalf("bind-mounting volume %s at %s: %v", m.Name, m.MountPath, err)
		}
		if m.ReadOnly {
			if err := syscall.Mount("", m.MountPath, "", flags|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				t.Fatalf("read-only remount of %s: %v", m.MountPath, err)
			}
		}
		mountPath := m.MountPath
		t.Cleanup(func() {
			if err := syscall.Unmount(mountPath, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmounting %s: %v", mountPath, err)
			}
		})
		t.Logf("private mount namespace: volume %s bound at its mountPath %s (the agent uses that absolute path)", m.Name, m.MountPath)
		noteCase(t, "agent run in a private mount namespace: volume "+m.Name+" bound at "+m.MountPath)
	}
}

// --------------------------------------------------------- first secret

// waitSocketSecret waits for the agent's SDS socket (the agent's own view)
// and fetches default and ROOTCA from it; it returns when the socket
// appeared and when the first secret arrived, both after the agent start.
func (r *running) waitSocketSecret(t *testing.T, timeout time.Duration) (socketAt, secretAt time.Duration, secrets map[string]*sdsclient.Secret, err error) {
	t.Helper()
	sock := r.kp.HostPath(r.agent, r.agentSocketPath(t))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err = wait.PollUntilContextCancel(ctx, 5*time.Millisecond, true, func(context.Context) (bool, error) {
		if exited, werr := r.proc.Exited(); exited {
			return false, fmt.Errorf("agent exited: %v", werr)
		}
		_, serr := os.Stat(sock)
		return serr == nil, nil
	})
	if err != nil {
		return 0, 0, nil, fmt.Errorf("waiting for the SDS socket %s: %w", r.agentSocketPath(t), err)
	}
	socketAt = time.Since(r.proc.Started)
	secrets, err = sdsclient.Fetch(ctx, sock, r.node, sdsclient.WorkloadCert, sdsclient.RootCA)
	if err != nil {
		return socketAt, 0, secrets, err
	}
	secretAt = time.Since(r.proc.Started)
	return socketAt, secretAt, secrets, nil
}

// waitFiles waits for the certificate files in the agent's OUTPUT_CERTS
// (the agent's view).
func (r *running) waitFiles(t *testing.T, dir string, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := wait.PollUntilContextCancel(ctx, 5*time.Millisecond, true, func(context.Context) (bool, error) {
		if exited, werr := r.proc.Exited(); exited {
			return false, fmt.Errorf("agent exited: %v", werr)
		}
		for _, f := range certFiles {
			fi, err := os.Stat(r.kp.HostPath(r.agent, path.Join(dir, f)))
			if err != nil || fi.Size() == 0 {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return 0, fmt.Errorf("waiting for %v in %s: %w", certFiles, dir, err)
	}
	return time.Since(r.proc.Started), nil
}

// ------------------------------------------------------------ gateway view

// gatewayView runs the helper as the gateway container (its root as
// working directory, its user and groups, its environment) and returns
// what it saw at containerPath.
func (s *suite) viewFromGateway(t *testing.T, r *running, mode, containerPath string) *gatewayView {
	t.Helper()
	cmd, _, err := r.kp.Command(context.Background(), r.gw, s.helper, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(cmd.Env, gatewayViewEnv+"="+mode, gatewayViewPath+"="+containerPath, gatewayViewNode+"="+r.node)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("gateway-view helper timed out\n%s", stderr.String())
	}
	if err != nil {
		t.Fatalf("gateway-view helper: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	for _, line := range strings.Split(stdout.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, gatewayViewMark); ok {
			var v gatewayView
			if err := json.Unmarshal([]byte(rest), &v); err != nil {
				t.Fatal(err)
			}
			return &v
		}
	}
	t.Fatalf("gateway-view helper printed no result\n%s%s", stdout.String(), stderr.String())
	return nil
}

// --------------------------------------------------------- certificates

// checkWorkloadCert verifies a workload certificate as a gateway would use
// it: the chain verifies against the root istiod published in the pod's
// namespace, the leaf's only URI SAN is the pod's SPIFFE identity, and the
// private key belongs to the leaf.
func checkWorkloadCert(t *testing.T, chainPEM, keyPEM, rootPEM []byte, spiffeID string) *x509.Certificate {
	t.Helper()
	chain := parseCerts(t, "certificate chain", chainPEM)
	roots := x509.NewCertPool()
	for _, c := range parseCerts(t, "istio-ca-root-cert", rootPEM) {
		roots.AddCert(c)
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("the workload certificate does not verify against istio-ca-root-cert: %v", err)
	}
	var uris []string
	for _, u := range leaf.URIs {
		uris = append(uris, u.String())
	}
	if len(uris) != 1 || uris[0] != spiffeID {
		t.Errorf("URI SANs = %v, want [%s]", uris, spiffeID)
	}
	now := time.Now()
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		t.Errorf("certificate valid %s..%s, not now", leaf.NotBefore, leaf.NotAfter)
	}
	key := parseKey(t, keyPEM)
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		t.Errorf("the private key does not belong to the certificate")
	}
	return leaf
}

// checkRoot verifies that a served trust bundle is istiod's root.
func checkRoot(t *testing.T, bundlePEM, rootPEM []byte) {
	t.Helper()
	want := parseCerts(t, "istio-ca-root-cert", rootPEM)
	got := parseCerts(t, "trust bundle", bundlePEM)
	for _, w := range want {
		if !slices.ContainsFunc(got, func(c *x509.Certificate) bool { return c.Equal(w) }) {
			t.Errorf("the trust bundle lacks istiod's root %s", w.Subject)
		}
	}
}

func parseCerts(t *testing.T, what string, data []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no certificate in %d bytes", what, len(data))
	}
	return out
}

func parseKey(t *testing.T, data []byte) crypto.Signer {
	t.Helper()
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("private key: no PEM block in %d bytes", len(data))
	}
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s
		}
	}
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return k
	}
	if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return k
	}
	t.Fatalf("private key: cannot parse %s block", b.Type)
	return nil
}

// checkToken verifies that the emulator minted the istio-token exactly as
// the injected projected volume asks: audience, expiration, the pod's
// ServiceAccount, bound to the pod.
func checkToken(t *testing.T, r *running) {
	t.Helper()
	var src *corev1.ServiceAccountTokenProjection
	for _, v := range r.pod.Spec.Volumes {
		if v.Name == inject.VolumeIstioToken && v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					src = s.ServiceAccountToken
				}
			}
		}
	}
	if src == nil {
		t.Fatalf("the injected pod has no projected %s volume", inject.VolumeIstioToken)
	}
	var tok *kubelet.IssuedToken
	for i := range r.kp.Tokens {
		if r.kp.Tokens[i].Volume == inject.VolumeIstioToken {
			tok = &r.kp.Tokens[i]
		}
	}
	if tok == nil {
		t.Fatal("no token was requested for the istio-token volume")
	}
	for _, m := range mustContainer(t, r, r.agent).VolumeMounts {
		if m.Name == inject.VolumeIstioToken {
			t.Logf("istio-token as the kubelet wrote it: %s", fileOwner(r.kp.HostPath(r.agent, path.Join(m.MountPath, src.Path))))
		}
	}
	if !slices.Equal(tok.Audiences, []string{src.Audience}) || src.ExpirationSeconds == nil || tok.ExpirationSeconds != *src.ExpirationSeconds {
		t.Errorf("token requested with audiences %v, expiration %ds; the volume asks for %q, %v", tok.Audiences, tok.ExpirationSeconds, src.Audience, src.ExpirationSeconds)
	}
	parts := strings.Split(tok.Token, ".")
	if len(parts) != 3 {
		t.Fatal("the token is not a JWT")
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
	wantSub := "system:serviceaccount:" + r.pod.Namespace + ":" + r.pod.Spec.ServiceAccountName
	if !slices.Equal(claims.Aud, []string{src.Audience}) || claims.Sub != wantSub || claims.Exp-claims.Iat != *src.ExpirationSeconds ||
		claims.K8s.Pod.Name != r.pod.Name || claims.K8s.Pod.UID != string(r.pod.UID) {
		t.Errorf("token claims aud=%v sub=%s lifetime=%ds pod=%s/%s; want aud=[%s] sub=%s lifetime=%ds pod=%s/%s",
			claims.Aud, claims.Sub, claims.Exp-claims.Iat, claims.K8s.Pod.Name, claims.K8s.Pod.UID,
			src.Audience, wantSub, *src.ExpirationSeconds, r.pod.Name, r.pod.UID)
	}
}

// -------------------------------------------------------- apiserver objects

func (s *suite) ensureNamespace(t *testing.T, name string) {
	t.Helper()
	_, err := s.clientset.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// ensureServiceAccount creates the pod's ServiceAccount: envtest runs no
// ServiceAccount admission or controller.
func (s *suite) ensureServiceAccount(t *testing.T, ns, name string) {
	t.Helper()
	_, err := s.clientset.CoreV1().ServiceAccounts(ns).Create(context.Background(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// ensureGatewayObjects creates placeholders for the ConfigMaps and Secrets
// the gateway's own volumes reference (its controller would have created
// them): the kubelet mounts every volume of a pod before starting any
// container.
func (s *suite) ensureGatewayObjects(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	placeholder := map[string]string{"sds-injector.io/test-placeholder": "gateway's own object; content irrelevant here"}
	keys := func(items []corev1.KeyToPath) []string {
		if len(items) == 0 {
			return []string{"placeholder"}
		}
		var out []string
		for _, it := range items {
			out = append(out, it.Key)
		}
		return out
	}
	for _, v := range pod.Spec.Volumes {
		switch {
		case v.ConfigMap != nil:
			cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: v.ConfigMap.Name, Annotations: placeholder}, Data: map[string]string{}}
			for _, k := range keys(v.ConfigMap.Items) {
				cm.Data[k] = "{}"
			}
			if _, err := s.clientset.CoreV1().ConfigMaps(pod.Namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		case v.Secret != nil:
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: v.Secret.SecretName, Annotations: placeholder}, Data: map[string][]byte{}}
			for _, k := range keys(v.Secret.Items) {
				sec.Data[k] = []byte("placeholder")
			}
			if _, err := s.clientset.CoreV1().Secrets(pod.Namespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
		}
	}
}

// ----------------------------------------------------------------- misc

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitLog waits until re matches the agent's output, or istiod's output
// since the agent started.
func (s *suite) waitLog(r *running, re *regexp.Regexp, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if m := re.FindString(r.proc.Log()); m != "" {
			return "agent: " + m, nil
		}
		if l := s.istiod.Log(); len(l) >= r.istiodLogFrom {
			if m := re.FindString(l[r.istiodLogFrom:]); m != "" {
				return "istiod: " + m, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "", fmt.Errorf("no log line matching %q within %s", re, timeout)
}

// expectedUnsupported marks a case that cannot work with the Istio release
// under test; the skip message after it says why.
const expectedUnsupported = "EXPECTED-UNSUPPORTED"

// Machine-readable results for test/istio-releases/run.sh: with
// SDS_INJECTOR_FLAVOR_RESULTS set, every case appends one tab-separated
// line: release, flavor, gateway, placement, result (pass, fail,
// unsupported, skip), first certificate in ms ("-" if none), notes.
const resultsEnv = "SDS_INJECTOR_FLAVOR_RESULTS"

var caseNotes struct {
	sync.Mutex
	byTest map[string][]string
	first  map[string]time.Duration
}

// noteCase records a note for the results line of t's case.
func noteCase(t *testing.T, note string) {
	caseNotes.Lock()
	defer caseNotes.Unlock()
	if caseNotes.byTest == nil {
		caseNotes.byTest = map[string][]string{}
	}
	caseNotes.byTest[t.Name()] = append(caseNotes.byTest[t.Name()], note)
}

func recordFirstSecret(t *testing.T, d time.Duration) {
	caseNotes.Lock()
	defer caseNotes.Unlock()
	if caseNotes.first == nil {
		caseNotes.first = map[string]time.Duration{}
	}
	caseNotes.first[t.Name()] = d
}

// reportCase registers the results line of t's case; call it first in the
// case so that it runs last.
func (s *suite) reportCase(t *testing.T, c caseSpec) {
	file := os.Getenv(resultsEnv)
	if file == "" {
		return
	}
	t.Cleanup(func() {
		caseNotes.Lock()
		notes, first := caseNotes.byTest[t.Name()], caseNotes.first[t.Name()]
		caseNotes.Unlock()
		result := "pass"
		switch {
		case t.Failed():
			result = "fail"
		case t.Skipped() && slices.ContainsFunc(notes, func(n string) bool {
			return strings.HasPrefix(n, "engine refuses: ") || strings.HasPrefix(n, "incompatible: ")
		}):
			result = "unsupported"
		case t.Skipped():
			result = "skip"
		}
		ms := "-"
		if first > 0 {
			ms = fmt.Sprintf("%.0f", float64(first)/float64(time.Millisecond))
		}
		clean := strings.NewReplacer("\t", " ", "\n", " ")
		line := strings.Join([]string{s.istiod.Release, string(c.flavor), c.gateway.name, c.placement(), result, ms,
			clean.Replace(strings.Join(notes, "; "))}, "\t") + "\n"
		f, err := os.OpenFile(file, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Errorf("results file: %v", err)
			return
		}
		defer f.Close()
		if _, err := f.WriteString(line); err != nil {
			t.Errorf("results file: %v", err)
		}
	})
}

// timing is one row of the timings table.
type timing struct {
	Case                  string
	SocketAt, FirstSecret time.Duration
	GatewayView           time.Duration
}

var timings struct {
	sync.Mutex
	rows []timing
}

func recordTiming(row timing) {
	timings.Lock()
	defer timings.Unlock()
	timings.rows = append(timings.rows, row)
}

func timingTable() string {
	timings.Lock()
	defer timings.Unlock()
	var b strings.Builder
	b.WriteString("| case | SDS socket after agent start | first secret after agent start | gateway-view check |\n|---|---|---|---|\n")
	ms := func(d time.Duration) string {
		if d == 0 {
			return "—"
		}
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	for _, r := range timings.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.Case, ms(r.SocketAt), ms(r.FirstSecret), ms(r.GatewayView))
	}
	return b.String()
}

func mustContainer(t *testing.T, r *running, name string) *corev1.Container {
	t.Helper()
	c, err := r.kp.Container(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
