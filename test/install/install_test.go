package install

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/test/certmanager"
	"github.com/sds-injector/sds-injector/webhook/inject"

	"github.com/sds-injector/sds-injector/test/harness"
)

// create stores a pod through the API server (and so the webhooks) and
// returns what was stored.
func create(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	if err := cp.Client.Create(context.Background(), pod); err != nil {
		t.Fatalf("creating %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return pod
}

// TestInstallCertManager installs deploy/manifests/namespace-per-gateway-cert-manager.yaml
// exactly as shipped next to the real cert-manager v1.21.2 controller and
// cainjector (processes against the local API server). cert-manager issues
// the chart's CA and serving Certificates, cainjector fills the caBundles,
// and the real `sds-injector serve`, with the rendered Deployment's
// arguments, reads the serving Secret through a kubelet-style projection
// of it and is called by the API server behind the rendered Service. Then:
// a renewal forced through cert-manager under a stream of fail-closed
// gateway creations fails none and is served without a restart; cainjector
// repairs a caBundle overwritten by hand; `sds-injector check` passes, and
// each fault it claims to detect is induced (through cert-manager where it
// manages the object) and reported.
func TestInstallCertManager(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	ip := hostIP(t)
	c := kc(t)
	ctx := context.Background()
	cmgr := startRealCertManager(t)
	start := time.Now()
	r := applyManifest(t, "namespace-per-gateway-cert-manager.yaml")
	crts := waitCertificatesReady(t, c, injectorNS, 2)
	var serving, caCrt cmapi.Certificate
	for _, crt := range crts {
		if crt.Spec.IsCA {
			caCrt = crt
		} else {
			serving = crt
		}
	}
	if caCrt.Name == "" || serving.Name == "" {
		t.Fatalf("want a CA and a serving Certificate, got %d Certificates", len(crts))
	}
	issued := time.Since(start)
	secret := getSecret(t, c, serving.Spec.SecretName)
	ca := secret.Data["ca.crt"]
	if !bytes.Equal(ca, getSecret(t, c, caCrt.Spec.SecretName).Data["tls.crt"]) {
		t.Fatal("the serving Secret's ca.crt must be the CA Certificate's")
	}
	leaf := parseCert(t, secret.Data["tls.crt"])
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "sds-injector.sds-injector.svc"}); err != nil {
		t.Fatalf("the issued serving certificate does not verify for the Service: %v", err)
	}
	mwcs, err := injectedWebhooks(ctx, c)
	if err != nil || len(mwcs) != 2 {
		t.Fatalf("want the 2 installed webhook configurations annotated for cainjector, got %d (%v)", len(mwcs), err)
	}
	waitCABundles(t, c, len(mwcs), ca, true, "cainjector to inject the CA into every webhook")
	t.Logf("real cert-manager: Certificates Ready %v after apply, caBundles injected %v after apply (serial %s, expires %s)",
		issued.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), leaf.SerialNumber, leaf.NotAfter.Format(time.RFC3339))

	vol := mountSecret(t, injectorNS, serving.Spec.SecretName)
	port := harness.FreePort(t, ip)
	addr := hostPort(ip, port)
	args := serveArgs(t, one[*appsv1.Deployment](t, r, "sds-injector"), map[string]string{
		"--config": writeConfig(t, r), "--cert-dir": vol.dir, "--host": ip, "--port": strconv.Itoa(port),
		"--health-probe-bind-address": "127.0.0.1:" + strconv.Itoa(harness.FreePort(t, "127.0.0.1")), "--metrics-bind-address": "0",
	})
	srv := launchServe(t, args)
	t.Cleanup(func() { srv.stop() }) // srv is replaced when a subtest restarts it
	endpoints := pointService(t, injectorNS, "sds-injector", "https-webhook", ip, port)
	istiod(t, ip)
	makeNamespace(t, "cm-gw", map[string]string{inject.NamespaceLabel: "enabled"}, true)
	makeNamespace(t, "cm-apps", nil, true)
	waitInjecting(t, "cm-gw", nil)
	waitInjecting(t, "cm-apps", map[string]string{inject.LabelInject: "true"})

	t.Run("the installed webhooks inject", func(t *testing.T) {
		if !isInjected(create(t, examplePod(t, "gloo-gateway-proxy.yaml", "cm-gw", "gw", nil, nil))) {
			t.Error("namespace mode: gateway not injected")
		}
		if isInjected(create(t, examplePod(t, "plain-app.yaml", "cm-gw", "app", nil, nil))) {
			t.Error("namespace mode: an ordinary pod was injected")
		}
		if !isInjected(create(t, examplePod(t, "gloo-gateway-proxy.yaml", "cm-apps", "opted-in", map[string]string{inject.LabelInject: "true"}, nil))) {
			t.Error("per-gateway mode: opted-in gateway not injected")
		}
		if !isInjected(create(t, examplePod(t, "gloo-gateway-proxy.yaml", "cm-apps", "opted-in-ann", nil, map[string]string{inject.AnnotationInject: "true"}))) {
			t.Error("per-gateway mode: gateway opted in by annotation not injected")
		}
		if isInjected(create(t, examplePod(t, "gloo-gateway-proxy.yaml", "cm-apps", "not-opted-in", nil, nil))) {
			t.Error("per-gateway mode: a gateway that did not opt in was injected")
		}
		dep := gatewayDeployment(t, "cm-gw")
		if err := cp.Client.Create(ctx, dep); err != nil {
			t.Fatal(err)
		}
		harness.Eventually(t, 60*time.Second, "the Deployment's pod to be created injected", func(ctx context.Context) (bool, error) {
			pods, err := podsOf(ctx, "cm-gw", map[string]string{"gloo": "gateway-proxy"})
			for _, p := range pods {
				if len(p.OwnerReferences) > 0 && isInjected(&p) {
					return true, nil
				}
			}
			return false, err
		})
	})

	t.Run("renewal through cert-manager under load, fail-closed", func(t *testing.T) {
		var perGW admissionregistrationv1.MutatingWebhookConfiguration
		if err := c.Get(ctx, types.NamespacedName{Name: "sds-injector-per-gateway"}, &perGW); err != nil {
			t.Fatal(err)
		}
		if fp := perGW.Webhooks[0].FailurePolicy; fp == nil || *fp != admissionregistrationv1.Fail {
			t.Fatalf("the per-gateway webhook must fail closed, has failurePolicy %v", fp)
		}
		before, err := servedCert(addr, ca)
		if err != nil || !before.Equal(leaf) {
			t.Fatalf("before the renewal the webhook must serve the issued certificate: %v", err)
		}
		pid := srv.Cmd.Process.Pid
		load := startGatewayStream(t, "cm-apps", map[string]string{inject.LabelInject: "true"})
		load.waitCreated(t, 10)
		// cmctl-style re-issue: delete the Secret; cert-manager issues a new
		// certificate (rotationPolicy Always: a new key) from the same CA.
		renewStart := time.Now()
		if err := c.Delete(ctx, &corev1.Secret{ObjectMeta: metavOf(types.NamespacedName{Namespace: injectorNS, Name: serving.Spec.SecretName})}); err != nil {
			t.Fatal(err)
		}
		renewed := waitReissued(t, c, serving.Name, serving.Spec.SecretName, before)
		reissuedAfter := time.Since(renewStart)
		waitServed(t, addr, ca, renewed)
		servedAfter := time.Since(renewStart)
		atSwitch := load.created()
		load.waitCreated(t, atSwitch+10)
		ok, failed, notInjected := load.stop()
		t.Logf("renewal: serial %s -> %s; re-issued %v and served %v after the Secret was deleted; %d gateways created during the renewal (%d after the new certificate was served), %d failed admissions, %d not injected",
			before.SerialNumber, renewed.SerialNumber, reissuedAfter.Round(time.Millisecond), servedAfter.Round(time.Millisecond), ok, ok-atSwitch, len(failed), notInjected)
		if len(failed) > 0 {
			t.Errorf("%d admissions failed during the renewal (fail-closed webhook); first: %v", len(failed), failed[0])
		}
		if notInjected > 0 {
			t.Errorf("%d gateways admitted without injection", notInjected)
		}
		if renewed.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(before.PublicKey) {
			t.Error("rotationPolicy Always: the renewed certificate must have a new key")
		}
		if srv.Exited() || srv.Cmd.Process.Pid != pid || srv.Cmd.Process.Signal(syscall.Signal(0)) != nil {
			t.Error("the webhook must serve the new certificate without a restart")
		}
		if !bytes.Equal(getSecret(t, c, serving.Spec.SecretName).Data["ca.crt"], ca) {
			t.Error("the renewal must keep the CA (the caBundle stays valid)")
		}
		leaf = renewed
	})

	t.Run("renewal by a short duration under load, fail-closed", func(t *testing.T) {
		pid := srv.Cmd.Process.Pid
		load := startGatewayStream(t, "cm-apps", map[string]string{inject.LabelInject: "true"})
		load.waitCreated(t, 10)
		// renewBefore just under the duration: cert-manager schedules the
		// renewal 5s after each issuance, by itself.
		updateCertificate(t, c, serving.Name, func(crt *cmapi.Certificate) {
			crt.Spec.Duration = &metav1.Duration{Duration: time.Hour}
			crt.Spec.RenewBefore = &metav1.Duration{Duration: time.Hour - 5*time.Second}
		})
		short := waitReissued(t, c, serving.Name, serving.Spec.SecretName, leaf)
		waitServed(t, addr, ca, short)
		var crt cmapi.Certificate
		if err := c.Get(ctx, types.NamespacedName{Namespace: injectorNS, Name: serving.Name}, &crt); err != nil {
			t.Fatal(err)
		}
		if crt.Status.RenewalTime == nil {
			t.Fatal("cert-manager scheduled no renewal")
		}
		renewalTime := crt.Status.RenewalTime.Time
		renewed := waitReissued(t, c, serving.Name, serving.Spec.SecretName, short)
		observed := time.Now()
		waitServed(t, addr, ca, renewed)
		servedAt := time.Now()
		if observed.Before(renewalTime) {
			t.Errorf("re-issued at %v, before the scheduled renewal time %v: not a time-based renewal", observed, renewalTime)
		}
		atSwitch := load.created()
		load.waitCreated(t, atSwitch+10)
		ok, failed, notInjected := load.stop()
		t.Logf("time-based renewal: scheduled %s, re-issued %v after it, served %v after it; %d gateways created across 2 re-issues, %d failed admissions, %d not injected",
			renewalTime.Format(time.RFC3339), observed.Sub(renewalTime).Round(time.Millisecond), servedAt.Sub(renewalTime).Round(time.Millisecond), ok, len(failed), notInjected)
		if len(failed) > 0 {
			t.Errorf("%d admissions failed during the renewal (fail-closed webhook); first: %v", len(failed), failed[0])
		}
		if notInjected > 0 {
			t.Errorf("%d gateways admitted without injection", notInjected)
		}
		if srv.Exited() || srv.Cmd.Process.Pid != pid || srv.Cmd.Process.Signal(syscall.Signal(0)) != nil {
			t.Error("the webhook must serve the renewed certificates without a restart")
		}
		updateCertificate(t, c, serving.Name, func(crt *cmapi.Certificate) {
			crt.Spec.Duration, crt.Spec.RenewBefore = serving.Spec.Duration, serving.Spec.RenewBefore
		})
		leaf = waitReissued(t, c, serving.Name, serving.Spec.SecretName, renewed)
		waitServed(t, addr, ca, leaf)
	})

	t.Run("the chart's extra SANs reach the issued certificate", func(t *testing.T) {
		// The serving Certificate as the chart renders it with
		// certificates.certManager.extraDNSNames/extraIPAddresses, applied
		// over the installed one: cert-manager re-issues with those SANs and
		// the webhook serves them, verifiable by IP.
		chart := one[*cmapi.Certificate](t, mustRender(t, "--set", "certificates.mode=cert-manager",
			"--set-json", `certificates.certManager.extraDNSNames=["webhook.example.test"]`,
			"--set-json", `certificates.certManager.extraIPAddresses=["`+ip+`"]`), serving.Name)
		updateCertificate(t, c, serving.Name, func(crt *cmapi.Certificate) { crt.Spec = chart.Spec })
		extra := waitReissued(t, c, serving.Name, serving.Spec.SecretName, leaf)
		if !slices.Contains(extra.DNSNames, "webhook.example.test") || !slices.ContainsFunc(extra.IPAddresses, func(a net.IP) bool { return a.String() == ip }) {
			t.Fatalf("issued SANs: DNS %v, IP %v", extra.DNSNames, extra.IPAddresses)
		}
		waitServed(t, addr, ca, extra)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}) // ServerName: the IP
		if err != nil {
			t.Fatalf("the served certificate must verify for %s: %v", ip, err)
		}
		conn.Close()
		updateCertificate(t, c, serving.Name, func(crt *cmapi.Certificate) { crt.Spec = serving.Spec })
		leaf = waitReissued(t, c, serving.Name, serving.Spec.SecretName, extra)
		waitServed(t, addr, ca, leaf)
	})

	t.Run("cainjector restores a caBundle overwritten by hand", func(t *testing.T) {
		other := newCA(t, "someone-else")
		for _, name := range []string{"sds-injector-namespace", "sds-injector-per-gateway"} {
			mwc := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metavOf(types.NamespacedName{Name: name})}
			mustUpdate(t, mwc, func() {
				for i := range mwc.Webhooks {
					mwc.Webhooks[i].ClientConfig.CABundle = other.certPEM
				}
			})
		}
		overwritten := time.Now()
		n := waitCABundles(t, c, 2, ca, false, "cainjector to restore the CA in the caBundles")
		t.Logf("cainjector restored the CA into 2 overwritten webhook configurations in %v (it merges: %d certificates in the bundle, the hand-written one kept)",
			time.Since(overwritten).Round(time.Millisecond), n)
		waitInjecting(t, "cm-apps", map[string]string{inject.LabelInject: "true"})
		if !isInjected(create(t, examplePod(t, "gloo-gateway-proxy.yaml", "cm-apps", "after-repair", map[string]string{inject.LabelInject: "true"}, nil))) {
			t.Error("per-gateway mode: gateway not injected after the repair")
		}
	})

	t.Run("check passes on the healthy installation", func(t *testing.T) {
		res := expectCheck(t, allPass())
		if !strings.Contains(strings.Join(res.Checks[2].Details, "\n"), "Secret sds-injector/sds-injector-tls") {
			t.Errorf("the serving certificate should be read from the Certificate's Secret:\n%s", res)
		}
		// --dial verifies what the running server presents.
		res = expectCheck(t, allPass(), "--dial", addr)
		if !strings.Contains(strings.Join(res.Checks[2].Details, "\n"), "the server at "+ip) {
			t.Errorf("--dial should verify the served certificate:\n%s", res)
		}
		out, err := exec.Command(injectorBin, "check", "--kubeconfig", cp.KubeconfigPath).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "PASS  serving-certificate") || !strings.Contains(string(out), "8 passed, 0 warning(s), 0 failed") {
			t.Errorf("text output (%v):\n%s", err, out)
		}
	})

	mwcKey := types.NamespacedName{Name: "sds-injector-namespace"}
	t.Run("fault: cainjector down, caBundle missing or wrong", func(t *testing.T) {
		if err := cmgr.StopProcess(certmanager.CAInjectorBinary); err != nil {
			t.Fatal(err)
		}
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metavOf(mwcKey)}
		mustUpdate(t, mwc, func() { mwc.Webhooks[0].ClientConfig.CABundle = nil })
		res := expectCheck(t, without(allPass(), "webhook-configurations", "fail"))
		assertMentions(t, res, "webhook-configurations", "no caBundle", "cainjector")
		other := newCA(t, "someone-else")
		mustUpdate(t, mwc, func() { mwc.Webhooks[0].ClientConfig.CABundle = other.certPEM })
		res = expectCheck(t, without(allPass(), "serving-certificate", "fail"))
		assertMentions(t, res, "serving-certificate", "does not verify")
		expectCheck(t, without(allPass(), "serving-certificate", "fail"), "--dial", addr)
		if err := cmgr.StartProcess(certmanager.CAInjectorBinary); err != nil {
			t.Fatal(err)
		}
		waitCABundles(t, c, 2, ca, false, "the restarted cainjector to repair the caBundle")
		expectCheck(t, allPass())
	})
	t.Run("fault: serving certificate about to expire", func(t *testing.T) {
		before := leaf
		updateCertificate(t, c, serving.Name, func(crt *cmapi.Certificate) {
			crt.Spec.Duration = &metav1.Duration{Duration: 72 * time.Hour}
			crt.Spec.RenewBefore = &metav1.Duration{Duration: time.Hour}
		})
		short := waitReissued(t, c, serving.Name, serving.Spec.SecretName, before)
		if d := short.NotAfter.Sub(short.NotBefore); d > 73*time.Hour {
			t.Fatalf("cert-manager issued a certificate valid %v, want 72h", d)
		}
		res := expectCheck(t, without(allPass(), "serving-certificate", "fail"))
		assertMentions(t, res, "serving-certificate", "expires", "less than --min-validity")
		expectCheck(t, allPass(), "--min-validity", "24h")
		updateCertificate(t, c, serving.Name, func(crt *cmapi.Certificate) {
			crt.Spec.Duration, crt.Spec.RenewBefore = serving.Spec.Duration, serving.Spec.RenewBefore
		})
		leaf = waitReissued(t, c, serving.Name, serving.Spec.SecretName, short)
		waitServed(t, addr, ca, leaf)
		expectCheck(t, allPass())
	})
	t.Run("fault: serving certificate for the wrong name", func(t *testing.T) {
		before := leaf
		updateCertificate(t, c, serving.Name, func(crt *cmapi.Certificate) { crt.Spec.DNSNames = []string{"sds-injector.other.svc"} })
		waitReissued(t, c, serving.Name, serving.Spec.SecretName, before)
		res := expectCheck(t, without(allPass(), "serving-certificate", "fail"))
		assertMentions(t, res, "serving-certificate", "sds-injector.sds-injector.svc")
		updateCertificate(t, c, serving.Name, func(crt *cmapi.Certificate) { crt.Spec.DNSNames = serving.Spec.DNSNames })
		leaf = waitReissued(t, c, serving.Name, serving.Spec.SecretName, before)
		waitServed(t, addr, ca, leaf)
		expectCheck(t, allPass())
	})
	t.Run("fault: cert-manager Certificate not Ready", func(t *testing.T) {
		// An issuer that does not exist: cert-manager marks the
		// Certificate not Ready and cannot issue.
		updateCertificate(t, c, serving.Name, func(crt *cmapi.Certificate) { crt.Spec.IssuerRef.Name = "no-such-issuer" })
		harness.Eventually(t, 60*time.Second, "cert-manager to mark the Certificate not Ready", func(ctx context.Context) (bool, error) {
			var crt cmapi.Certificate
			if err := c.Get(ctx, types.NamespacedName{Namespace: injectorNS, Name: serving.Name}, &crt); err != nil {
				return false, err
			}
			for _, cond := range crt.Status.Conditions {
				if cond.Type == cmapi.CertificateConditionReady && cond.ObservedGeneration == crt.Generation {
					return cond.Status == cmmeta.ConditionFalse, nil
				}
			}
			return false, nil
		})
		res := expectCheck(t, without(allPass(), "serving-certificate", "warn"))
		assertMentions(t, res, "serving-certificate", "not Ready")
		updateCertificate(t, c, serving.Name, func(crt *cmapi.Certificate) { crt.Spec.IssuerRef = serving.Spec.IssuerRef })
		waitCertificatesReady(t, c, injectorNS, 2)
		expectCheck(t, allPass())
	})
	t.Run("fault: no ready webhook endpoints", func(t *testing.T) {
		mustUpdate(t, endpoints, func() { endpoints.Endpoints[0].Conditions.Ready = ptr.To(false) })
		res := expectCheck(t, without(allPass(), "webhook-endpoints", "fail"))
		assertMentions(t, res, "webhook-endpoints", "no ready endpoints")
		mustUpdate(t, endpoints, func() { endpoints.Endpoints[0].Conditions.Ready = ptr.To(true) })
	})
	t.Run("fault: opted-in namespace without istio-ca-root-cert", func(t *testing.T) {
		cmap := &corev1.ConfigMap{}
		cmap.Namespace, cmap.Name = "cm-gw", "istio-ca-root-cert"
		if err := cp.Client.Delete(ctx, cmap); err != nil {
			t.Fatal(err)
		}
		res := expectCheck(t, without(allPass(), "istio-root-cert", "fail"))
		assertMentions(t, res, "istio-root-cert", "cm-gw: ConfigMap istio-ca-root-cert missing")
		createRootCert(t, "cm-gw")
	})
	t.Run("fault: istiod's CA address does not resolve", func(t *testing.T) {
		res := expectCheck(t, without(allPass(), "istiod-address", "fail"), "--ca-address", "istiod-1-99.istio-system.svc:15012")
		assertMentions(t, res, "istiod-address", "does not exist")
		expectCheck(t, without(allPass(), "istiod-address", "fail"), "--ca-address", "istiod.istio-system.svc:15010")
		expectCheck(t, without(allPass(), "istiod-address", "fail"), "--ca-address", "no-such-istiod.invalid:15012")
		expectCheck(t, allPass(), "--ca-address", "localhost:15012")
		slice := &discoveryv1.EndpointSlice{}
		slice.Namespace, slice.Name = "istio-system", "istiod-test"
		if err := cp.Client.Delete(ctx, slice); err != nil {
			t.Fatal(err)
		}
		res = expectCheck(t, without(allPass(), "istiod-address", "fail"))
		assertMentions(t, res, "istiod-address", "no ready endpoints")
		istiod(t, ip)
	})
	t.Run("fault: a gateway profile the webhook's condition does not know", func(t *testing.T) {
		// The installed configuration plus a profile added by hand, as if
		// the ConfigMap had been edited instead of the chart's
		// config.gatewayProfiles: the rendered condition lacks it.
		var cm corev1.ConfigMap
		if err := cp.Client.Get(ctx, types.NamespacedName{Namespace: injectorNS, Name: "sds-injector"}, &cm); err != nil {
			t.Fatal(err)
		}
		var installed map[string]any
		if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &installed); err != nil {
			t.Fatal(err)
		}
		if p, _ := installed["gatewayProfiles"].([]any); len(p) > 0 {
			t.Fatalf("the installed configuration already has gatewayProfiles: %v", p)
		}
		installed["gatewayProfiles"] = []any{map[string]any{
			"name": "team-edge", "selector": map[string]any{"matchLabels": map[string]any{"team/edge": "envoy"}}, "containers": []any{"proxy"},
		}}
		data, err := yaml.Marshal(installed)
		if err != nil {
			t.Fatal(err)
		}
		extra := filepath.Join(t.TempDir(), "extra.yaml")
		if err := os.WriteFile(extra, data, 0o600); err != nil {
			t.Fatal(err)
		}
		res := expectCheck(t, without(allPass(), "gateway-profile-conditions", "fail"), "--config", extra)
		assertMentions(t, res, "gateway-profile-conditions", "team-edge")
	})
	t.Run("fault: invalid or missing configuration", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(bad, []byte(harness.ConfigHeader+"flavor: envoy\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		res := runCheck(t, "--config", bad)
		if res.status("configuration") != "fail" || res.exit != 2 || res.status("gateway-pods") != "skip" {
			t.Errorf("invalid configuration:\n%s", res)
		}
		expectCheck(t, without(allPass(), "configuration", "warn"), "--config-map", "no-such-config")
	})
	t.Run("fault: gateway created while the webhook was down", func(t *testing.T) {
		makeNamespace(t, "cm-late", map[string]string{inject.NamespaceLabel: "enabled"}, true)
		srv.stop()
		if err := cp.Client.Create(ctx, gatewayDeployment(t, "cm-late")); err != nil {
			t.Fatal(err)
		}
		// namespace mode fails open: the pod is admitted without the agent.
		harness.Eventually(t, 60*time.Second, "the gateway pod to be admitted", func(ctx context.Context) (bool, error) {
			pods, err := podsOf(ctx, "cm-late", map[string]string{"gloo": "gateway-proxy"})
			return err == nil && len(pods) == 1 && !isInjected(&pods[0]), err
		})
		srv = launchServe(t, args)
		res := expectCheck(t, without(allPass(), "gateway-pods", "fail"))
		var cmd string
		for _, ch := range res.Checks {
			if ch.Name == "gateway-pods" {
				if len(ch.Pods) != 1 || ch.Pods[0].Namespace != "cm-late" || ch.Pods[0].Owner != "deployment/gateway-proxy" || ch.Pods[0].Problem != "not-injected" {
					t.Fatalf("pods %+v", ch.Pods)
				}
				cmd = ch.Pods[0].Command
			}
		}
		if cmd != "kubectl -n cm-late rollout restart deployment/gateway-proxy" {
			t.Fatalf("restart command %q", cmd)
		}
		out, _ := exec.Command(injectorBin, "check", "--kubeconfig", cp.KubeconfigPath).CombinedOutput()
		t.Logf("sds-injector check:\n%s", out)
		if !strings.Contains(string(out), "FAIL  gateway-pods") || !strings.Contains(string(out), "fix: "+cmd) {
			t.Errorf("text output:\n%s", out)
		}
		// Running the printed command fixes it.
		if out, err := kubectl(ctx, strings.Fields(strings.TrimPrefix(cmd, "kubectl "))...); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		harness.Eventually(t, 60*time.Second, "the restarted gateway to be injected", func(ctx context.Context) (bool, error) {
			pods, err := podsOf(ctx, "cm-late", map[string]string{"gloo": "gateway-proxy"})
			return err == nil && len(pods) == 1 && isInjected(&pods[0]), err
		})
		expectCheck(t, allPass())
	})
	t.Run("fault: gateway running before its namespace opted in", func(t *testing.T) {
		makeNamespace(t, "cm-before", nil, true)
		create(t, examplePod(t, "gloo-gateway-proxy.yaml", "cm-before", "early", nil, nil))
		expectCheck(t, allPass())
		ns := &corev1.Namespace{}
		ns.Name = "cm-before"
		mustUpdate(t, ns, func() { ns.Labels[inject.NamespaceLabel] = "enabled" })
		res := expectCheck(t, without(allPass(), "gateway-pods", "fail"))
		assertMentions(t, res, "gateway-pods", "cm-before/early", "kubectl -n cm-before delete pod early")
		pod := &corev1.Pod{}
		pod.Namespace, pod.Name = "cm-before", "early"
		if err := cp.Client.Delete(ctx, pod); err != nil {
			t.Fatal(err)
		}
		expectCheck(t, allPass())
	})
	t.Run("fault: opted-in gateway that cannot be injected", func(t *testing.T) {
		pod := examplePod(t, "gloo-gateway-proxy.yaml", "cm-apps", "host-network", map[string]string{inject.LabelInject: "true"}, nil)
		pod.Spec.HostNetwork = true
		if isInjected(create(t, pod)) {
			t.Fatal("a hostNetwork gateway with the istio-proxy flavor must not be injected")
		}
		res := expectCheck(t, without(allPass(), "gateway-pods", "warn"))
		assertMentions(t, res, "gateway-pods", "cm-apps/host-network", "host-network")
		if err := cp.Client.Delete(ctx, pod); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("fault: webhook configurations not installed", func(t *testing.T) {
		for _, name := range []string{"sds-injector-namespace", "sds-injector-per-gateway"} {
			mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
			mwc.Name = name
			if err := cp.Client.Delete(ctx, mwc); err != nil {
				t.Fatal(err)
			}
		}
		res := runCheck(t)
		if res.status("webhook-configurations") != "fail" || res.status("serving-certificate") != "skip" || res.exit != 2 {
			t.Errorf("no webhook configurations:\n%s", res)
		}
		assertMentions(t, res, "webhook-configurations", "no sds-injector webhook configuration is installed")
	})
}

// TestInstallSelfManaged renders the chart as `helm install` would, with
// cluster-wide mode only and an extra gateway profile, applies it, runs the
// real `sds-injector serve` authenticated as the chart's ServiceAccount (so
// the chart's RBAC must be enough), and proves that the API server injects
// built-in and custom gateways, trusting the injector's own certificates;
// `check` passes on it.
func TestInstallSelfManaged(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	ip := hostIP(t)
	values := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(values, []byte(`createNamespace: true
modes:
  namespace: {enabled: false}
  perGateway: {enabled: false}
  clusterWide: {enabled: true}
config:
  gatewayProfiles:
  - name: team-edge
    selector: {matchLabels: {app.kubernetes.io/name: team-edge-envoy}}
    containers: [envoy]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := helmTemplate(t, "-f", values)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "install.yaml")
	if err := os.WriteFile(file, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	r := applyFile(t, file)

	port := harness.FreePort(t, ip)
	args := serveArgs(t, one[*appsv1.Deployment](t, r, "sds-injector"), map[string]string{
		"--config": writeConfig(t, r), "--cert-dir": t.TempDir(), "--host": ip, "--port": strconv.Itoa(port),
		"--health-probe-bind-address": "127.0.0.1:" + strconv.Itoa(harness.FreePort(t, "127.0.0.1")), "--metrics-bind-address": "0",
		"--kubeconfig":           saKubeconfig(t, injectorNS, "sds-injector"),
		"--ca-propagation-delay": "2s", // test speed; the chart's default is 30s
	})
	pointService(t, injectorNS, "sds-injector", "https-webhook", ip, port)
	srv := startServe(t, args) // ready = certificate issued and trusted by the webhook configuration
	istiod(t, ip)
	makeNamespace(t, "sm-edge", nil, true)
	makeNamespace(t, "sm-off", map[string]string{inject.NamespaceLabel: "disabled"}, true)
	waitInjecting(t, "sm-edge", nil)

	t.Run("the installed webhook injects", func(t *testing.T) {
		if !isInjected(create(t, examplePod(t, "gloo-gateway-proxy.yaml", "sm-edge", "gloo", nil, nil))) {
			t.Error("built-in profile not injected")
		}
		if !isInjected(create(t, examplePod(t, "envoy-gateway-proxy.yaml", "sm-edge", "eg", nil, nil))) {
			t.Error("Envoy Gateway not injected")
		}
		team := examplePod(t, "plain-app.yaml", "sm-edge", "team-edge", map[string]string{"app.kubernetes.io/name": "team-edge-envoy"}, nil)
		team.Spec.Containers[0].Name = "envoy"
		if stored := create(t, team); !isInjected(stored) || !strings.Contains(stored.Annotations[inject.AnnotationStatus], "team-edge") {
			t.Errorf("the extra gateway profile did not reach the CEL condition and the engine: %v", stored.Annotations)
		}
		if isInjected(create(t, examplePod(t, "plain-app.yaml", "sm-edge", "app", nil, nil))) {
			t.Error("an ordinary pod was injected")
		}
		if isInjected(create(t, examplePod(t, "gloo-gateway-proxy.yaml", "sm-off", "gloo", nil, nil))) {
			t.Error("a namespace labelled sds-injection=disabled was injected")
		}
	})

	t.Run("check passes", func(t *testing.T) {
		res := expectCheck(t, allPass())
		assertMentions(t, res, "serving-certificate", "Secret sds-injector/sds-injector-tls")
		expectCheck(t, allPass(), "--dial", ip+":"+strconv.Itoa(port))
	})

	t.Run("an overwritten caBundle is repaired and check passes again", func(t *testing.T) {
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		mwc.Name = "sds-injector-cluster-wide"
		mustUpdate(t, mwc, func() { mwc.Webhooks[0].ClientConfig.CABundle = newCA(t, "tamper").certPEM })
		harness.Eventually(t, 60*time.Second, "check to pass after the injector repairs the caBundle", func(context.Context) (bool, error) {
			res := runCheck(t)
			return res.OK && res.status("serving-certificate") == "pass", nil
		})
	})
	if t.Failed() {
		t.Logf("sds-injector serve output:\n%s", srv.Output())
	}
}

func metavOf(k types.NamespacedName) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: k.Name, Namespace: k.Namespace}
}

func assertMentions(t *testing.T, res *checkOutput, check string, want ...string) {
	t.Helper()
	for _, c := range res.Checks {
		if c.Name != check {
			continue
		}
		text := c.Message + "\n" + strings.Join(c.Details, "\n") + "\n" + strings.Join(c.Fix, "\n")
		for _, w := range want {
			if !strings.Contains(text, w) {
				t.Errorf("check %s does not mention %q:\n%s", check, w, text)
			}
		}
		return
	}
	t.Errorf("no check %s", check)
}
