package flavors

import (
	"context"
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/sds-injector/sds-injector/test/flavors/kubelet"
	"github.com/sds-injector/sds-injector/test/istiod"
	"github.com/sds-injector/sds-injector/test/sdsclient"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// TestFlavors runs the engine's output for every flavor, example gateway
// and placement against the real istiod, and checks from the gateway
// container that it gets an istiod-issued certificate for its identity.
func TestFlavors(t *testing.T) {
	s := needSuite(t)
	if rel := istiod.ReleaseUnderTest(); rel != "" {
		t.Logf("control plane started in %s; istiod (Istio release %s from %s) ready in %s, CA at %s",
			s.cpStart.Round(time.Millisecond), rel, s.istiod.ModuleDir, s.istiodStart.Round(time.Millisecond), s.istiod.CAAddr)
		for _, n := range s.istiod.Notes {
			t.Logf("differs for Istio %s: %s", rel, n)
		}
	} else {
		t.Logf("control plane started in %s; istiod (istio.io/istio@%s, VERSION %s) ready in %s, CA at %s",
			s.cpStart.Round(time.Millisecond), s.istiod.ModuleVersion, s.istiod.Release, s.istiodStart.Round(time.Millisecond), s.istiod.CAAddr)
	}
	t.Cleanup(func() { t.Logf("timings (this run):\n%s", timingTable()) })
	for _, flavor := range inject.Flavors {
		for _, gw := range gateways {
			for _, native := range []bool{false, true} {
				c := caseSpec{flavor: flavor, gateway: gw, native: native}
				t.Run(fmt.Sprintf("%s/%s/%s", flavor, gw.name, c.placement()), func(t *testing.T) {
					s.reportCase(t, c)
					s.provePositive(t, c)
				})
			}
		}
	}
	// The 1.14-1.21 profile's layout (it adds JWT_POLICY=third-party-jwt),
	// run with the same current agent: this proves the layout and env work
	// with the agent built here, not that a 1.14-1.21 agent works (see
	// docs/compatibility.md for the released agents). Against a release the
	// engine already uses that release's own profile; these cases would
	// only mix another layout into its run.
	if rel := istiod.ReleaseUnderTest(); rel != "" {
		t.Logf("release run: the 1.14-1.21 layout cases are not registered (the engine's istioVersion is the release, %s, profile %s)", rel, releaseProfile(t, rel))
		return
	}
	for _, flavor := range inject.Flavors {
		c := caseSpec{flavor: flavor, gateway: gateways[0], istioVersion: "1.21.6"}
		t.Run(fmt.Sprintf("profile-1.14-1.21-layout/%s/%s/%s", flavor, c.gateway.name, c.placement()), func(t *testing.T) {
			s.provePositive(t, c)
		})
	}
}

func (s *suite) provePositive(t *testing.T, c caseSpec) {
	r, err := s.prepare(t, c)
	if err != nil {
		t.Fatal(err)
	}
	checkToken(t, r)
	s.start(t, r)
	row := timing{Case: fmt.Sprintf("%s / %s / %s", c.flavor, c.gateway.name, c.placement())}
	if c.istioVersion != "" {
		row.Case += fmt.Sprintf(" (Istio %s layout, profile %s)", c.istioVersion, r.profile.Name)
	}

	switch c.flavor {
	case inject.FlavorIstioProxy, inject.FlavorSDSAgent:
		socketAt, secretAt, secrets, err := r.waitSocketSecret(t, firstSecretTimeout)
		if err != nil && c.flavor == inject.FlavorIstioProxy && strings.Contains(err.Error(), "unknown service envoy.service.secret.v3.SecretDiscoveryService") {
			// Measured with Istio 1.5: its agent serves only the v2 SDS API.
			// Current Envoys (the gateways' included) speak only v3.
			noteCase(t, "incompatible: the agent serves SDS v2 only (envoy.service.discovery.v2); the gateway's Envoy and this client speak v3 only")
			t.Skipf("%s: Istio %s's agent serves no v3 SDS: %v", expectedUnsupported, s.istiod.Release, err)
		}
		if err != nil {
			t.Fatalf("no secret from the agent: %v\nistiod log since the agent started (tail):\n%s", err, tail(s.istiod.Log()[r.istiodLogFrom:], 30))
		}
		row.SocketAt, row.FirstSecret = socketAt, secretAt
		recordFirstSecret(t, secretAt)
		if d := secrets[sdsclient.WorkloadCert]; d == nil || len(d.CertificateChain) == 0 {
			t.Fatalf("the agent served no workload certificate: %+v", secrets)
		}

		gwPath := r.gatewayPathOf(t, r.agentSocketPath(t))
		if gwPath != r.profile.SocketPath() {
			t.Errorf("the gateway sees the socket at %s, want %s (the documented path for profile %s)", gwPath, r.profile.SocketPath(), r.profile.Name)
		}
		t.Logf("SDS socket as created by the agent: %s", fileOwner(r.kp.HostPath(r.agent, r.agentSocketPath(t))))
		v := s.viewFromGateway(t, r, "sds", gwPath)
		row.GatewayView = time.Duration(v.Took)
		t.Logf("gateway %s (uid %d, gid %d, groups %v) fetched SDS on %s in %s", r.gw, v.UID, v.GID, v.Groups, gwPath, time.Duration(v.Took))
		if v.Error != "" {
			t.Fatalf("from the gateway container: %s", v.Error)
		}
		def, root := v.Secrets[sdsclient.WorkloadCert], v.Secrets[sdsclient.RootCA]
		if def == nil || root == nil {
			t.Fatalf("from the gateway container: secrets %v, want default and ROOTCA", v.Secrets)
		}
		leaf := checkWorkloadCert(t, def.CertificateChain, def.PrivateKey, r.rootPEM, r.spiffeID)
		checkRoot(t, root.TrustedCA, r.rootPEM)
		t.Logf("default: %s issued by %s, valid until %s; ROOTCA: %d bytes", leaf.URIs[0], leaf.Issuer, leaf.NotAfter.Format(time.RFC3339), len(root.TrustedCA))

	case inject.FlavorIstioAgentFiles:
		outDir := r.agentEnv(t, "OUTPUT_CERTS")
		secretAt, err := r.waitFiles(t, outDir, firstSecretTimeout)
		if err != nil {
			t.Fatalf("no certificate files from the agent: %v", err)
		}
		row.FirstSecret = secretAt
		recordFirstSecret(t, secretAt)
		gwDir := r.gatewayPathOf(t, outDir)
		v := s.viewFromGateway(t, r, "files", gwDir)
		row.GatewayView = time.Duration(v.Took)
		t.Logf("gateway %s (uid %d, gid %d, groups %v) read %s", r.gw, v.UID, v.GID, v.Groups, gwDir)
		if len(v.FileErrors) > 0 || v.Error != "" {
			t.Fatalf("from the gateway container: %v %s", v.FileErrors, v.Error)
		}
		t.Logf("key.pem as written by the agent: %s", fileOwner(r.kp.HostPath(r.agent, path.Join(outDir, "key.pem"))))
		leaf := checkWorkloadCert(t, v.Files["cert-chain.pem"], v.Files["key.pem"], r.rootPEM, r.spiffeID)
		checkRoot(t, v.Files["root-cert.pem"], r.rootPEM)
		t.Logf("cert-chain.pem: %s issued by %s, valid until %s", leaf.URIs[0], leaf.Issuer, leaf.NotAfter.Format(time.RFC3339))
	}
	recordTiming(row)
	s.checkProbes(t, r)
}

// checkProbes runs the injected readiness/startup probe and postStart hook
// where they can pass here.
func (s *suite) checkProbes(t *testing.T, r *running) {
	ctr, err := r.kp.Container(r.agent)
	if err != nil {
		t.Fatal(err)
	}
	if ctr.ReadinessProbe == nil {
		t.Fatal("the agent has no readinessProbe")
	}
	if r.spec.flavor == inject.FlavorIstioProxy {
		// Not faked: there is no Envoy binary here, and the stand-in serves
		// nothing. The agent's readiness is Envoy's.
		res, err := r.kp.RunHandler(context.Background(), r.agent, ctr.ReadinessProbe.ProbeHandler, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if res.Success {
			t.Errorf("readinessProbe passed without an Envoy: %s", res.Detail)
		}
		hooks := "postStart `pilot-agent wait`"
		if r.spec.native {
			hooks = "startupProbe"
		}
		t.Logf("NOT CHECKED: the injected readinessProbe and %s poll Envoy's health listener (:15021/healthz/ready), which only a real Envoy serves; "+
			"there is none here (probe result: %s)", hooks, res.Detail)
		noteCase(t, "readiness not checked (stand-in Envoy serves no :15021)")
		return
	}
	poll := func(what string, h corev1.ProbeHandler, timeout time.Duration) {
		deadline := time.Now().Add(timeout)
		for {
			res, err := r.kp.RunHandler(context.Background(), r.agent, h, 30*time.Second)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			for _, rw := range res.Rewrites {
				t.Logf("%s rewrite: %s", what, rw)
			}
			if res.Success {
				t.Logf("%s passed: %s", what, res.Detail)
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%s did not pass within %s: %s", what, timeout, res.Detail)
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	poll("readinessProbe", ctr.ReadinessProbe.ProbeHandler, time.Minute)
	if r.spec.native {
		if ctr.StartupProbe == nil {
			t.Fatal("native placement without startupProbe")
		}
		poll("startupProbe", ctr.StartupProbe.ProbeHandler, time.Minute)
		return
	}
	if ctr.Lifecycle == nil || ctr.Lifecycle.PostStart == nil {
		t.Fatal("classic placement without postStart hook")
	}
	h, err := kubelet.LifecycleAsProbe(ctr.Lifecycle.PostStart)
	if err != nil {
		t.Fatal(err)
	}
	// The hook blocks until the agent is ready; it runs once.
	res, err := r.kp.RunHandler(context.Background(), r.agent, h, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, rw := range res.Rewrites {
		t.Logf("postStart rewrite: %s", rw)
	}
	if !res.Success {
		t.Errorf("postStart hook %v failed: %s", h.Exec.Command, res.Detail)
	} else {
		t.Logf("postStart hook %v succeeded", h.Exec.Command)
	}
}

// agentEnv returns an env value of the agent container as the engine wrote it.
func (r *running) agentEnv(t *testing.T, name string) string {
	t.Helper()
	ctr, err := r.kp.Container(r.agent)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ctr.Env {
		if e.Name == name {
			return e.Value
		}
	}
	t.Fatalf("the agent container has no env %s", name)
	return ""
}

// agentSocketPath is where the agent serves SDS: the profile's path for
// the stock agent (pilot-agent hard-codes it), SDS_SOCKET_PATH for
// sds-agent.
func (r *running) agentSocketPath(t *testing.T) string {
	if r.spec.flavor == inject.FlavorSDSAgent {
		return r.agentEnv(t, "SDS_SOCKET_PATH")
	}
	return r.profile.SocketPath()
}

// gatewayPathOf translates a path in the agent container to the path the
// gateway container sees the same file at, through the volume both mount.
// If the gateway does not mount that volume it returns the same path,
// which then does not exist for the gateway.
func (r *running) gatewayPathOf(t *testing.T, agentPath string) string {
	t.Helper()
	agent, err := r.kp.Container(r.agent)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := r.kp.Container(r.gw)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range agent.VolumeMounts {
		rest, ok := strings.CutPrefix(path.Clean(agentPath), path.Clean(m.MountPath))
		if !ok || (rest != "" && !strings.HasPrefix(rest, "/")) {
			continue
		}
		for _, gm := range gw.VolumeMounts {
			if gm.Name == m.Name && gm.SubPath == m.SubPath {
				return path.Clean(gm.MountPath + rest)
			}
		}
		t.Logf("the gateway container %s does not mount volume %s", r.gw, m.Name)
		return agentPath
	}
	t.Fatalf("%s is in none of the agent's volume mounts", agentPath)
	return ""
}

// TestNegativeControls shows that the checks can fail, and fail for the
// stated reason: a token for the wrong audience, a missing root
// certificate ConfigMap, a gateway container without the shared mount.
func TestNegativeControls(t *testing.T) {
	s := needSuite(t)
	gw := gateways[0]
	for _, flavor := range inject.Flavors {
		t.Run(string(flavor)+"/wrong-audience", func(t *testing.T) {
			c := caseSpec{flavor: flavor, gateway: gw, configure: func(cfg *inject.Config) { cfg.TokenAudience = "not-istio" }}
			r, err := s.prepare(t, c)
			if err != nil {
				t.Fatal(err)
			}
			checkToken(t, r) // minted exactly as the volume asks: audience not-istio
			s.start(t, r)
			evidence, err := s.waitLog(r, regexp.MustCompile(`token audiences \[\\?"not-istio\\?"\] is invalid for the target audiences \[\\?"istio-ca\\?"\]`), firstSecretTimeout)
			if err != nil {
				t.Fatalf("istiod did not reject the token for the stated reason: %v\nagent log:\n%s", err, tail(r.proc.Log(), 40))
			}
			t.Logf("rejected: %s", evidence)
			s.assertNoSecret(t, r)
			t.Logf("agent log (tail):\n%s", tail(r.proc.Log(), 12))
		})

		t.Run(string(flavor)+"/missing-root-cert-configmap", func(t *testing.T) {
			const absent = "istio-ca-root-cert-absent"
			c := caseSpec{flavor: flavor, gateway: gw, configure: func(cfg *inject.Config) { cfg.RootCertConfigMap = absent }}
			_, err := s.prepare(t, c)
			want := fmt.Sprintf(`MountVolume.SetUp failed for volume %q : configmap %q not found`, inject.VolumeIstiodCACert, absent)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("SetUpPod: %v; want the kubelet's mount failure %q (no container starts)", err, want)
			}
			t.Logf("the kubelet would not start the pod: %v", err)

			// And if the agent ran anyway, without the root certificate:
			c.podOpts = kubelet.PodOptions{IgnoreMountFailures: true}
			r, err := s.prepare(t, c)
			if err != nil {
				t.Fatal(err)
			}
			s.start(t, r)
			var re *regexp.Regexp
			if flavor == inject.FlavorSDSAgent {
				re = regexp.MustCompile(`(?i)root[- _]?cert[^\n]*(no such file|not exist|missing)|(no such file|not exist)[^\n]*root-cert\.pem`)
			} else {
				re = regexp.MustCompile(`root CA file for CA does not exist \S*var/run/secrets/istio/root-cert\.pem`)
			}
			evidence, err := s.waitLog(r, re, firstSecretTimeout)
			if err != nil {
				t.Fatalf("the agent did not fail for the missing root certificate: %v\nagent log:\n%s", err, tail(r.proc.Log(), 40))
			}
			t.Logf("agent without root certificate: %s", evidence)
			s.assertNoSecret(t, r)
			t.Logf("agent log (tail):\n%s", tail(r.proc.Log(), 12))
		})

		t.Run(string(flavor)+"/gateway-without-shared-mount", func(t *testing.T) {
			c := caseSpec{flavor: flavor, gateway: gw, mutate: func(t *testing.T, pod *corev1.Pod, st *inject.Status) {
				if len(st.GatewayMounts) == 0 {
					t.Fatal("the engine gave the gateway no mount")
				}
				for i := range pod.Spec.Containers {
					ctr := &pod.Spec.Containers[i]
					if ctr.Name != st.GatewayContainer {
						continue
					}
					var kept []corev1.VolumeMount
					for _, m := range ctr.VolumeMounts {
						shared := false
						for _, gm := range st.GatewayMounts {
							shared = shared || gm.Name == m.Name
						}
						if !shared {
							kept = append(kept, m)
						}
					}
					ctr.VolumeMounts = kept
				}
			}}
			r, err := s.prepare(t, c)
			if err != nil {
				t.Fatal(err)
			}
			s.start(t, r)
			// The agent itself works ...
			var gwPath, mode string
			if flavor == inject.FlavorIstioAgentFiles {
				outDir := r.agentEnv(t, "OUTPUT_CERTS")
				if _, err := r.waitFiles(t, outDir, firstSecretTimeout); err != nil {
					t.Fatalf("the agent itself failed: %v", err)
				}
				gwPath, mode = r.gatewayPathOf(t, outDir), "files"
			} else {
				if _, _, _, err := r.waitSocketSecret(t, firstSecretTimeout); err != nil {
					t.Fatalf("the agent itself failed: %v", err)
				}
				gwPath, mode = r.gatewayPathOf(t, r.agentSocketPath(t)), "sds"
			}
			// ... but the gateway cannot see its output.
			v := s.viewFromGateway(t, r, mode, gwPath)
			var errs []string
			if v.Error != "" {
				errs = append(errs, v.Error)
			}
			for _, e := range v.FileErrors {
				errs = append(errs, e)
			}
			if len(errs) == 0 || (mode == "files" && len(v.FileErrors) != len(certFiles)) {
				t.Fatalf("the gateway without the shared mount still got %d files / secrets %v", len(v.Files), v.Secrets)
			}
			for _, e := range errs {
				if !strings.Contains(e, "no such file or directory") {
					t.Errorf("gateway view failed for another reason than the missing mount: %s", e)
				}
			}
			t.Logf("gateway without the shared mount: %s", strings.Join(errs, "; "))
		})
	}
}

// assertNoSecret checks that the agent gives the gateway nothing: no SDS
// response within a few seconds, or no certificate files.
func (s *suite) assertNoSecret(t *testing.T, r *running) {
	t.Helper()
	switch r.spec.flavor {
	case inject.FlavorIstioAgentFiles:
		dir := r.agentEnv(t, "OUTPUT_CERTS")
		for _, f := range certFiles {
			if _, err := os.Stat(r.kp.HostPath(r.agent, path.Join(dir, f))); err == nil {
				t.Errorf("%s/%s exists", dir, f)
			}
		}
	default:
		sock := r.kp.HostPath(r.agent, r.agentSocketPath(t))
		if _, err := os.Stat(sock); err != nil {
			t.Logf("no SDS socket: %v", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		secrets, err := sdsclient.Fetch(ctx, sock, r.node, sdsclient.WorkloadCert)
		if err == nil {
			t.Errorf("the agent served %v", secrets)
			return
		}
		t.Logf("SDS request for default unanswered: %v", err)
	}
}

// fileOwner describes a file's mode and owner.
func fileOwner(p string) string {
	fi, err := os.Stat(p)
	if err != nil {
		return err.Error()
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf("mode %v, uid %d, gid %d", fi.Mode(), st.Uid, st.Gid)
	}
	return fmt.Sprintf("mode %v", fi.Mode())
}

func releaseProfile(t *testing.T, release string) string {
	v, err := inject.ParseIstioVersion(release)
	if err != nil {
		t.Fatalf("%s=%q: %v", istiod.EnvRelease, release, err)
	}
	return v.Profile().Name
}
