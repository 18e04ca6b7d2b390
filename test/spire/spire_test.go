package spire

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"

	"github.com/sds-injector/sds-injector/test/harness"
	"github.com/sds-injector/sds-injector/test/sdsclient"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(childMain(spec))
	}
	os.Exit(m.Run())
}

const (
	examplePod = "../../docs/examples/envoy-gateway-proxy.yaml"
	// svidTTL is short so that a rotation is pushed within the test.
	svidTTL = 30 * time.Second
	// unregisteredUID is a uid no registration entry selects.
	unregisteredUID = 4242
)

// env is one SPIRE server and agent shared by the subtests.
type env struct {
	bins      Binaries
	dir       string
	socketDir string
	server    *Server
	agent     *Agent
	agentBin  string
	token     string
}

func needRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a real SPIRE server and agent (built from source and cached on first use, ~15 min cold); run without -short")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the SPIRE proof runs containers as their own uids and mounts their volumes in a private mount namespace: it needs root")
	}
}

// newDir is a directory every uid can traverse (MkdirTemp's are 0700).
func newDir(t *testing.T, parent, name string) string {
	t.Helper()
	d := filepath.Join(parent, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

func readPod(t *testing.T, path string) *corev1.Pod {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatal(err)
	}
	return &pod
}

// injectSPIRE runs the engine on the example pod with the spire flavor
// and the given socket source.
func injectSPIRE(t *testing.T, src inject.SPIREConfig) (*corev1.Pod, *inject.Status) {
	t.Helper()
	c := inject.DefaultConfig()
	c.Flavor, c.IdentityProvider.SPIRE = inject.FlavorSPIRE, &src
	s, err := c.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	res := inject.Inject(readPod(t, examplePod), s)
	if res.Decision.Outcome != inject.OutcomeInjected {
		t.Fatalf("not injected: %+v", res.Decision)
	}
	st, err := inject.ParseStatus(res.Pod.Annotations[inject.AnnotationStatus])
	if err != nil {
		t.Fatal(err)
	}
	if st.IdentityProvider != inject.IdentityProviderSPIRE {
		t.Fatalf("status records identity provider %q", st.IdentityProvider)
	}
	return res.Pod, st
}

// volumeSource is where the node would find the volume's files: a
// hostPath's path, or for the SPIFFE CSI driver (which publishes the SPIRE
// agent's socket directory into the pod) the agent's socket directory.
func (e *env) volumeSource(t *testing.T, v *corev1.Volume) string {
	t.Helper()
	switch {
	case v.HostPath != nil:
		if v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectory {
			t.Fatalf("hostPath volume %s is not of type Directory", v.Name)
		}
		fi, err := os.Stat(v.HostPath.Path)
		if err != nil || !fi.IsDir() {
			t.Fatalf("hostPath %s: not a directory (%v): the kubelet would refuse the pod", v.HostPath.Path, err)
		}
		return v.HostPath.Path
	case v.CSI != nil:
		if v.CSI.Driver != inject.DefaultSPIRECSIDriver || v.CSI.ReadOnly == nil || !*v.CSI.ReadOnly {
			t.Fatalf("CSI volume %s: driver %s readOnly %v", v.Name, v.CSI.Driver, v.CSI.ReadOnly)
		}
		return e.socketDir
	}
	t.Fatalf("volume %s has neither hostPath nor csi source", v.Name)
	return ""
}

// containerView is how a container of the injected pod sees the volumes
// the engine added: bind mounts at its mount paths, and its uid.
func (e *env) containerView(t *testing.T, pod *corev1.Pod, st *inject.Status, c *corev1.Container) (binds []bindMount, uid, gid int) {
	t.Helper()
	added := map[string]bool{}
	for _, v := range st.Volumes {
		added[v] = true
	}
	for _, m := range c.VolumeMounts {
		if !added[m.Name] {
			continue
		}
		var vol *corev1.Volume
		for i := range pod.Spec.Volumes {
			if pod.Spec.Volumes[i].Name == m.Name {
				vol = &pod.Spec.Volumes[i]
			}
		}
		if vol == nil {
			t.Fatalf("container %s mounts %s, which is not a volume of the pod", c.Name, m.Name)
		}
		binds = append(binds, bindMount{Source: e.volumeSource(t, vol), Target: m.MountPath, ReadOnly: m.ReadOnly})
	}
	if len(binds) == 0 {
		t.Fatalf("container %s mounts none of the volumes the engine added (%v)", c.Name, st.Volumes)
	}
	sc, psc := c.SecurityContext, pod.Spec.SecurityContext
	switch {
	case sc != nil && sc.RunAsUser != nil:
		uid = int(*sc.RunAsUser)
	case psc != nil && psc.RunAsUser != nil:
		uid = int(*psc.RunAsUser)
	default:
		t.Fatalf("container %s sets no runAsUser: its uid (which SPIRE attests) is the image's", c.Name)
	}
	gid = uid
	switch {
	case sc != nil && sc.RunAsGroup != nil:
		gid = int(*sc.RunAsGroup)
	case psc != nil && psc.RunAsGroup != nil:
		gid = int(*psc.RunAsGroup)
	}
	return binds, uid, gid
}

func container(t *testing.T, list []corev1.Container, name string) *corev1.Container {
	t.Helper()
	for i := range list {
		if list[i].Name == name {
			return &list[i]
		}
	}
	t.Fatalf("no container %s", name)
	return nil
}

// childCmd prepares this test binary as a container (see childMain).
func childCmd(ctx context.Context, t *testing.T, spec childSpec) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Setpgid: true}
	return cmd
}

// gatewayClient runs an SDS client as the gateway container and returns
// what it saw.
func gatewayClient(t *testing.T, mode string, binds []bindMount, uid, gid int, timeout time.Duration) childOut {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	cmd := childCmd(ctx, t, childSpec{Mode: mode, Binds: binds, UID: uid, GID: gid, Socket: inject.SPIRESocketPath, Timeout: timeout})
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gateway client (%s, uid %d): %v\n%s", mode, uid, err, stderr.String())
	}
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, childResult); ok {
			var res childOut
			if err := json.Unmarshal([]byte(rest), &res); err != nil {
				t.Fatal(err)
			}
			return res
		}
	}
	t.Fatalf("gateway client printed no result:\n%s\n%s", out, stderr.String())
	return childOut{}
}

func decodeSecret(t *testing.T, m secretMsg) *tlsv3.Secret {
	t.Helper()
	var s tlsv3.Secret
	if err := proto.Unmarshal(m.Secret, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

func certPool(t *testing.T, pemBytes []byte) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("no certificate in bundle %q", pemBytes)
	}
	return pool
}

// verifyLeaf checks the chain and key, validity now, the SPIFFE ID and the
// chain against the bundle, and returns the leaf.
func verifyLeaf(t *testing.T, chain, key []byte, wantID string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	leaf, err := sdsclient.VerifyWorkload(chain, key, wantID, roots, time.Now())
	if err != nil {
		t.Fatalf("default: %v", err)
	}
	return leaf
}

// spiffeBundle is the trust bundle of SPIRE's default ROOTCA shape: Envoy's
// SPIFFE certificate validator config with the trust domain's CA inline.
func spiffeBundle(t *testing.T, sec *tlsv3.Secret) []byte {
	t.Helper()
	cvc := sec.GetValidationContext().GetCustomValidatorConfig()
	if cvc == nil || cvc.GetName() != "envoy.tls.cert_validator.spiffe" {
		t.Fatalf("ROOTCA is not a SPIFFE validator config: %v", sec)
	}
	var cfg tlsv3.SPIFFECertValidatorConfig
	if err := cvc.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		t.Fatalf("ROOTCA typed_config: %v", err)
	}
	if len(cfg.GetTrustDomains()) != 1 || cfg.GetTrustDomains()[0].GetName() != TrustDomain {
		t.Fatalf("ROOTCA trust domains %v, want [%s]", cfg.GetTrustDomains(), TrustDomain)
	}
	return cfg.GetTrustDomains()[0].GetTrustBundle().GetInlineBytes()
}

func TestSPIREFlavor(t *testing.T) {
	needRoot(t)
	// A cold SPIRE build takes ~20 minutes on a loaded 2-core machine.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	bins, err := Build(ctx)
	if err != nil {
		t.Fatalf("building SPIRE v%s: %v", Version, err)
	}
	if bins.Built > 0 {
		t.Logf("built SPIRE v%s in %s (cached from now on)", Version, bins.Built.Round(time.Second))
	}
	tmp, err := os.MkdirTemp("", "spire-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(tmp) })
	e := &env{bins: bins, dir: newDir(t, tmp, "")}
	e.socketDir = newDir(t, tmp, "agent-sockets")
	e.agentBin = harness.MustBuild(t, harness.Agent, harness.Static)

	started := time.Now()
	if e.server, err = StartServer(ctx, bins, newDir(t, tmp, "server")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.server.Stop)
	t.Logf("spire-server healthy after %s", time.Since(started).Round(time.Millisecond))
	if e.token, err = e.server.JoinToken(ctx); err != nil {
		t.Fatal(err)
	}

	csiPod, csiStatus := injectSPIRE(t, inject.SPIREConfig{CSIDriver: inject.DefaultSPIRECSIDriver})
	gw := container(t, csiPod.Spec.Containers, csiStatus.GatewayContainer)
	_, gwUID, _ := e.containerView(t, csiPod, csiStatus, gw)
	spiffeID := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", TrustDomain, csiPod.Namespace, csiPod.Spec.ServiceAccountName)
	if err := e.server.RegisterUID(ctx, AgentID(e.token), spiffeID, gwUID, svidTTL); err != nil {
		t.Fatal(err)
	}
	t.Logf("registered %s for the gateway container's uid %d", spiffeID, gwUID)

	// The startup wait, as the engine wrote it, started before the agent:
	// it returns only once the agent's socket answers.
	wait := container(t, csiPod.Spec.InitContainers, inject.SPIREWaitContainer)
	if csiPod.Spec.InitContainers[0].Name != inject.SPIREWaitContainer {
		t.Fatalf("the wait is not the first init container: %v", csiPod.Spec.InitContainers[0].Name)
	}
	waitBinds, waitUID, waitGID := e.containerView(t, csiPod, csiStatus, wait)
	waitCtx, waitCancel := context.WithTimeout(ctx, 3*time.Minute)
	defer waitCancel()
	waitCmd := childCmd(waitCtx, t, childSpec{Mode: "exec", Binds: waitBinds, UID: waitUID, GID: waitGID,
		Exec: append([]string{e.agentBin}, wait.Args...)})
	waitOut, waitErr := &harness.Buffer{}, &harness.Buffer{}
	waitCmd.Stdout, waitCmd.Stderr = waitOut, waitErr
	if err := waitCmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitDone := make(chan error, 1)
	go func() { waitDone <- waitCmd.Wait() }()
	// The wait must be waiting (its first "not yet" line) before the agent
	// starts, so that its return is caused by the agent.
	waitingSince := time.Now()
	for !strings.Contains(waitErr.String(), "not yet") {
		select {
		case err := <-waitDone:
			t.Fatalf("the startup wait ended before the SPIRE agent ran: %v\n%s%s", err, waitOut.String(), waitErr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Since(waitingSince) > time.Minute {
			t.Fatalf("the startup wait printed nothing: %q", waitErr.String())
		}
	}

	agentStarted := time.Now()
	if e.agent, err = StartAgent(ctx, bins, newDir(t, tmp, "agent"), e.socketDir, e.server, e.token); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.agent.Stop)
	t.Logf("spire-agent healthy after %s", time.Since(agentStarted).Round(time.Millisecond))
	select {
	case err := <-waitDone:
		if err != nil || !strings.Contains(waitOut.String(), inject.SPIRESocketPath+" answers: served ROOTCA after") {
			t.Fatalf("startup wait: %v\n%s%s", err, waitOut.String(), waitErr.String())
		}
		t.Logf("startup wait (uid %d) returned %s after the agent started: %s", waitUID, time.Since(agentStarted).Round(time.Millisecond), strings.TrimSpace(waitOut.String()))
	case <-waitCtx.Done():
		t.Fatalf("the startup wait did not return once the agent answered:\n%s%s", waitOut.String(), waitErr.String())
	}

	for _, src := range []struct {
		name string
		cfg  inject.SPIREConfig
	}{
		{"csi", inject.SPIREConfig{CSIDriver: inject.DefaultSPIRECSIDriver}},
		{"hostPath", inject.SPIREConfig{HostPath: e.socketDir}},
	} {
		t.Run(src.name, func(t *testing.T) {
			pod, st := injectSPIRE(t, src.cfg)
			if st.SocketSource != src.name {
				t.Fatalf("status socket source %q", st.SocketSource)
			}
			gw := container(t, pod.Spec.Containers, st.GatewayContainer)
			binds, uid, gid := e.containerView(t, pod, st, gw)
			for _, b := range binds {
				if !b.ReadOnly {
					t.Errorf("the gateway mounts %s read-write", b.Target)
				}
			}
			fetchStart := time.Now()
			res := gatewayClient(t, "fetch", binds, uid, gid, time.Minute)
			if res.Error != "" {
				t.Fatalf("gateway (uid %d): %s\nagent log:\n%s", uid, res.Error, e.agent.Log())
			}
			t.Logf("gateway (uid %d) got default and ROOTCA over %s in %s", uid, inject.SPIRESocketPath, time.Since(fetchStart).Round(time.Millisecond))
			bundle := spiffeBundle(t, decodeSecret(t, res.Secrets[0]))
			leaf := verifyLeaf(t, res.DefaultChain, res.DefaultKey, spiffeID, certPool(t, bundle))
			plain := decodeSecret(t, *res.Plain).GetValidationContext()
			if plain.GetCustomValidatorConfig() != nil || len(plain.GetTrustedCa().GetInlineBytes()) == 0 {
				t.Fatalf("ROOTCA with disable_spiffe_cert_validation is not a plain trusted_ca: %v", plain)
			}
			verifyLeaf(t, res.DefaultChain, res.DefaultKey, spiffeID, certPool(t, plain.GetTrustedCa().GetInlineBytes()))
			t.Logf("leaf %s valid %s, verifies against both ROOTCA shapes", leaf.URIs[0], leaf.NotAfter.Sub(leaf.NotBefore).Round(time.Second))
		})
	}

	t.Run("rotation", func(t *testing.T) {
		pod, st := injectSPIRE(t, inject.SPIREConfig{CSIDriver: inject.DefaultSPIRECSIDriver})
		binds, uid, gid := e.containerView(t, pod, st, container(t, pod.Spec.Containers, st.GatewayContainer))
		res := gatewayClient(t, "stream", binds, uid, gid, 3*svidTTL)
		if res.Error != "" {
			t.Fatalf("stream: %s", res.Error)
		}
		if len(res.Secrets) < 2 {
			t.Fatalf("%d responses on the open stream, want a rotation", len(res.Secrets))
		}
		firstMsg, last := res.Secrets[0], res.Secrets[len(res.Secrets)-1]
		a, b := decodeSecret(t, firstMsg).GetTlsCertificate(), decodeSecret(t, last).GetTlsCertificate()
		roots := fetchBundle(t, e, binds, uid, gid)
		l1 := verifyLeaf(t, a.GetCertificateChain().GetInlineBytes(), a.GetPrivateKey().GetInlineBytes(), spiffeID, roots)
		l2 := verifyLeaf(t, b.GetCertificateChain().GetInlineBytes(), b.GetPrivateKey().GetInlineBytes(), spiffeID, roots)
		if l1.SerialNumber.Cmp(l2.SerialNumber) == 0 || !l2.NotAfter.After(l1.NotAfter) {
			t.Fatalf("no new certificate: serials %s %s, not after %s %s", l1.SerialNumber, l2.SerialNumber, l1.NotAfter, l2.NotAfter)
		}
		t.Logf("rotated certificate pushed on the open stream %s after the first (%s before the first expired; SVID TTL %s)",
			last.At.Sub(firstMsg.At).Round(time.Second), l1.NotAfter.Sub(last.At).Round(time.Second), svidTTL)
	})

	t.Run("unregistered-uid", func(t *testing.T) {
		pod, st := injectSPIRE(t, inject.SPIREConfig{CSIDriver: inject.DefaultSPIRECSIDriver})
		binds, _, _ := e.containerView(t, pod, st, container(t, pod.Spec.Containers, st.GatewayContainer))
		res := gatewayClient(t, "unregistered", binds, unregisteredUID, unregisteredUID, 30*time.Second)
		for _, m := range res.Secrets {
			if m.Name == inject.SecretCertificate {
				t.Fatalf("uid %d, which no entry selects, got a certificate", unregisteredUID)
			}
		}
		if res.Code != "InvalidArgument" || !strings.Contains(res.Error, "not authorized") {
			t.Fatalf("uid %d: default failed with %s %q, want InvalidArgument (not authorized)", unregisteredUID, res.Code, res.Error)
		}
		if len(res.Secrets) != 1 || res.Secrets[0].Name != inject.SecretRootCA {
			t.Fatalf("uid %d: want ROOTCA still served, got %d secrets", unregisteredUID, len(res.Secrets))
		}
		t.Logf("uid %d: no certificate (%s: %s); ROOTCA still served", unregisteredUID, res.Code, res.Error)
	})

	t.Run("wait-times-out", func(t *testing.T) {
		// The engine's wait against a socket directory no agent serves.
		empty := newDir(t, tmp, "no-agent")
		binds := []bindMount{{Source: empty, Target: wait.VolumeMounts[0].MountPath, ReadOnly: true}}
		cmd := childCmd(ctx, t, childSpec{Mode: "exec", Binds: binds, UID: waitUID, GID: waitGID,
			Exec: append(append([]string{e.agentBin}, wait.Args...), "--timeout=2s")})
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Fatalf("wait without an agent: %v\n%s", err, out.String())
		}
		want := "timed out after 2s: the SDS socket " + inject.SPIRESocketPath + " never served ROOTCA"
		if !strings.Contains(out.String(), want) {
			t.Fatalf("no timeout line %q in:\n%s", want, out.String())
		}
		t.Logf("timeout line: %s", lastLine(out.String()))
	})
}

func fetchBundle(t *testing.T, e *env, binds []bindMount, uid, gid int) *x509.CertPool {
	t.Helper()
	res := gatewayClient(t, "fetch", binds, uid, gid, time.Minute)
	if res.Error != "" {
		t.Fatal(res.Error)
	}
	return certPool(t, spiffeBundle(t, decodeSecret(t, res.Secrets[0])))
}

func lastLine(s string) string {
	var last string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			last = sc.Text()
		}
	}
	return last
}
