package install

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/webhook/inject"

	"github.com/sds-injector/sds-injector/test/harness"
)

// kc is a client that also knows cert-manager's types.
func kc(t *testing.T) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := cmapi.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cp.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// applyManifest applies a deploy/manifests file with kubectl, as a user
// would, and removes everything it created when the test ends.
func applyManifest(t *testing.T, name string) *rendered {
	t.Helper()
	return applyFile(t, filepath.Join(repoRoot, "deploy", "manifests", name))
}

func applyFile(t *testing.T, file string) *rendered {
	t.Helper()
	name := filepath.Base(file)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	r := parseManifests(t, string(data))
	ctx := context.Background()
	// Istio discovery's Role lives in the Istio namespace, which must exist
	// (Istio is installed first).
	if err := cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if out, err := kubectl(ctx, "apply", "-f", file); err != nil {
		t.Fatalf("kubectl apply -f %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() { deleteManifest(t, file, r) })
	return r
}

// deleteManifest deletes what file created and waits until the namespace
// is gone and the apiserver no longer calls its webhooks.
func deleteManifest(t *testing.T, file string, r *rendered) {
	t.Helper()
	ctx := context.Background()
	if out, err := kubectl(ctx, "delete", "--ignore-not-found", "--wait=true", "--timeout=180s", "-f", file); err != nil {
		t.Errorf("kubectl delete -f %s: %v\n%s", file, err, out)
	}
	harness.Eventually(t, 3*time.Minute, "namespace "+injectorNS+" to be gone", func(ctx context.Context) (bool, error) {
		err := cp.Client.Get(ctx, types.NamespacedName{Name: injectorNS}, &corev1.Namespace{})
		return apierrors.IsNotFound(err), nil
	})
	for _, mwc := range all[*admissionregistrationv1.MutatingWebhookConfiguration](r) {
		if err := cp.WaitShippedWebhooks(ctx, mwc, false, nil); err != nil {
			t.Error(err)
		}
	}
	// check, which this suite runs, would list the labelled probe namespace.
	if err := cp.RemoveProbeNamespaces(ctx); err != nil {
		t.Error(err)
	}
}

// TestManifestsApply: every plain manifest applies cleanly to the API
// server (cert-manager's CRDs installed), and the objects read back through
// the typed API (cert-manager's types for its objects).
func TestManifestsApply(t *testing.T) {
	harness.NeedControlPlane(t, cp)
	files, _ := filepath.Glob(filepath.Join(repoRoot, "deploy", "manifests", "*.yaml"))
	if len(files) != 8 {
		t.Fatalf("want 8 manifests (4 mode combinations x 2 certificate modes), found %d", len(files))
	}
	c := kc(t)
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			r := applyManifest(t, name)
			ctx := context.Background()
			for _, m := range all[*admissionregistrationv1.MutatingWebhookConfiguration](r) {
				var got admissionregistrationv1.MutatingWebhookConfiguration
				if err := c.Get(ctx, types.NamespacedName{Name: m.Name}, &got); err != nil {
					t.Fatal(err)
				}
				if len(got.Webhooks) != len(m.Webhooks) {
					t.Errorf("%s: %d webhooks stored, %d rendered", m.Name, len(got.Webhooks), len(m.Webhooks))
				}
			}
			var dep appsv1.Deployment
			if err := c.Get(ctx, types.NamespacedName{Namespace: injectorNS, Name: "sds-injector"}, &dep); err != nil {
				t.Fatal(err)
			}
			certs := all[*cmapi.Certificate](r)
			issuers := all[*cmapi.Issuer](r)
			if strings.Contains(name, "cert-manager") != (len(certs) == 2 && len(issuers) == 2) {
				t.Fatalf("%s: %d Certificates, %d Issuers", name, len(certs), len(issuers))
			}
			for _, crt := range certs {
				var got cmapi.Certificate
				if err := c.Get(ctx, client.ObjectKeyFromObject(crt), &got); err != nil {
					t.Fatal(err)
				}
				if got.Spec.PrivateKey == nil || got.Spec.PrivateKey.Algorithm != cmapi.ECDSAKeyAlgorithm || got.Spec.SecretName != crt.Spec.SecretName {
					t.Errorf("Certificate %s read back as %+v", crt.Name, got.Spec)
				}
			}
			for _, iss := range issuers {
				var got cmapi.Issuer
				if err := c.Get(ctx, client.ObjectKeyFromObject(iss), &got); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// --- a webhook on this host behind the rendered Service ----------------------

// hostIP is the address of the suite's network namespace (installNet),
// where the webhooks the API server calls listen: the API server reaches
// the rendered Service through an EndpointSlice, and EndpointSlices refuse
// loopback addresses. TestMain entered the namespace; this checks it.
func hostIP(t *testing.T) string {
	t.Helper()
	ip := installNet.IP()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.String() == ip {
			return ip
		}
	}
	t.Fatalf("%s is on no interface: the suite is not in its network namespace (TestMain enters it)", ip)
	return ""
}

// pointService makes Service ns/name resolve to ip:port for the API server
// (the job the EndpointSlice controller does for real pods).
func pointService(t *testing.T, ns, name, portName, ip string, port int) *discoveryv1.EndpointSlice {
	t.Helper()
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-test", Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "sds-injector-tests",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(portName), Port: ptr.To(int32(port)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	if err := cp.Client.Create(context.Background(), slice); err != nil {
		t.Fatal(err)
	}
	return slice
}

type serveProc struct {
	*harness.Process
	health string
}

// serveArgs takes the container args of the rendered Deployment and adapts
// what differs on this host: files, addresses, the pod namespace.
func serveArgs(t *testing.T, dep *appsv1.Deployment, overrides map[string]string) []string {
	t.Helper()
	var out []string
	seen := map[string]bool{}
	for _, a := range dep.Spec.Template.Spec.Containers[0].Args {
		a = strings.ReplaceAll(a, "$(POD_NAMESPACE)", dep.Namespace)
		name, _, _ := strings.Cut(a, "=")
		if v, ok := overrides[name]; ok {
			a = name + "=" + v
			seen[name] = true
		}
		out = append(out, a)
	}
	for name, v := range overrides {
		if !seen[name] {
			out = append(out, name+"="+v)
		}
	}
	return out
}

func startServe(t *testing.T, args []string) *serveProc {
	t.Helper()
	p := launchServe(t, args)
	t.Cleanup(p.stop)
	return p
}

// launchServe starts `sds-injector serve` (in its own process group) and
// waits until it is ready; the caller stops it.
func launchServe(t *testing.T, args []string) *serveProc {
	t.Helper()
	health := ""
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--health-probe-bind-address="); ok {
			health = v
		}
	}
	proc, err := harness.StartProcess("sds-injector serve", exec.Command(injectorBin, args...))
	if err != nil {
		t.Fatal(err)
	}
	p := &serveProc{Process: proc, health: health}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	go func() { // give up at once when the process exits
		select {
		case <-proc.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := harness.WaitHTTP(ctx, "http://"+health+"/readyz"); err != nil {
		p.stop()
		t.Fatalf("sds-injector serve %v not ready: %v (exit: %v)\n%s", args, err, exitState(proc), proc.Output())
	}
	return p
}

func exitState(p *harness.Process) any {
	if p.Exited() {
		return p.Err()
	}
	return "still running"
}

func (p *serveProc) stop() { _ = p.Stop(15 * time.Second) }

func writeConfig(t *testing.T, r *rendered) string {
	t.Helper()
	cm := one[*corev1.ConfigMap](t, r, "sds-injector")
	f := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(f, []byte(cm.Data["config.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// --- workloads ---------------------------------------------------------------

func makeNamespace(t *testing.T, name string, labels map[string]string, rootCert bool) {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := cp.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Client.Delete(context.Background(), ns) })
	for _, sa := range []string{"gateway-proxy", "default"} {
		if err := cp.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: name, Name: sa}}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	if rootCert {
		createRootCert(t, name)
	}
}

func createRootCert(t *testing.T, ns string) {
	t.Helper()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "istio-ca-root-cert"}, Data: map[string]string{"root-cert.pem": "test"}}
	if err := cp.Client.Create(context.Background(), cm); err != nil {
		t.Fatal(err)
	}
}

func examplePod(t *testing.T, file, ns, name string, labels, annotations map[string]string) *corev1.Pod {
	t.Helper()
	pod := harness.ExamplePod(t, file, ns, name, nil, annotations)
	delete(pod.Labels, "pod-template-hash")
	for k, v := range labels {
		if pod.Labels == nil {
			pod.Labels = map[string]string{}
		}
		pod.Labels[k] = v
	}
	return pod
}

// gatewayDeployment is the Gloo example pod as a Deployment (Recreate, so a
// restart replaces the pod even without a kubelet).
func gatewayDeployment(t *testing.T, ns string) *appsv1.Deployment {
	t.Helper()
	pod := examplePod(t, "gloo-gateway-proxy.yaml", ns, "", nil, nil)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "gateway-proxy"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"gloo": "gateway-proxy"}},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: pod.Labels, Annotations: pod.Annotations}, Spec: pod.Spec},
		},
	}
}

func isInjected(p *corev1.Pod) bool {
	_, ok := p.Annotations[inject.AnnotationStatus]
	return ok
}

// waitInjecting waits until the API server calls the webhook for pods of
// ns (webhook configuration, EndpointSlice and caBundle caches are all
// asynchronous), probing with dry-run creations.
func waitInjecting(t *testing.T, ns string, labels map[string]string) {
	t.Helper()
	i := 0
	harness.Eventually(t, 60*time.Second, "the API server to inject through the installed webhook", func(ctx context.Context) (bool, error) {
		i++
		pod := examplePod(t, "gloo-gateway-proxy.yaml", ns, fmt.Sprintf("probe-%d", i), labels, nil)
		if err := cp.Client.Create(ctx, pod, client.DryRunAll); err != nil {
			return false, nil
		}
		return isInjected(pod), nil
	})
}

// podsOf returns the live pods of a Deployment.
func podsOf(ctx context.Context, ns string, sel map[string]string) ([]corev1.Pod, error) {
	var list corev1.PodList
	if err := cp.Client.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels(sel)); err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// --- certificates made by the test ---------------------------------------------

type keyPair struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	keyPEM  []byte
}

func issue(t *testing.T, tmpl *x509.Certificate, parent *keyPair) *keyPair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl.SerialNumber = serial
	signer, parentCert := key, tmpl
	if parent != nil {
		signer, parentCert = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyDER, _ := x509.MarshalECPrivateKey(key)
	return &keyPair{cert: cert, key: key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})}
}

func newCA(t *testing.T, cn string) *keyPair {
	return issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(3 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, nil)
}

// saKubeconfig is a kubeconfig authenticating as a ServiceAccount, so the
// injector runs with exactly the RBAC the manifests grant it.
func saKubeconfig(t *testing.T, ns, name string) string {
	t.Helper()
	sa := &corev1.ServiceAccount{}
	if err := cp.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, sa); err != nil {
		t.Fatal(err)
	}
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(3600))}}
	if err := cp.Client.SubResource("token").Create(context.Background(), sa, tr); err != nil {
		t.Fatal(err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: cp.Config.Host, CertificateAuthorityData: cp.Config.CAData}
	cfg.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["sa"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "sa"}
	cfg.CurrentContext = "sa"
	f := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, f); err != nil {
		t.Fatal(err)
	}
	return f
}

// istiod is a stand-in istiod Service with a ready endpoint, which is all
// the check's istiod-address check looks at.
func istiod(t *testing.T, ip string) {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}
	if err := cp.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "istiod"}, Ports: []corev1.ServicePort{{Name: "grpc-istiod", Port: 15012}}}}
	if err := cp.Client.Create(ctx, svc); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	var existing discoveryv1.EndpointSlice
	if err := cp.Client.Get(ctx, types.NamespacedName{Namespace: "istio-system", Name: "istiod-test"}, &existing); apierrors.IsNotFound(err) {
		pointService(t, "istio-system", "istiod", "grpc-istiod", ip, 15012)
	}
}

// --- running check -------------------------------------------------------------

type checkOutput struct {
	OK      bool           `json:"ok"`
	Summary map[string]int `json:"summary"`
	Checks  []struct {
		Name    string   `json:"name"`
		Status  string   `json:"status"`
		Message string   `json:"message"`
		Details []string `json:"details"`
		Fix     []string `json:"fix"`
		Pods    []struct {
			Namespace, Name, Owner, Problem, Command string
		} `json:"pods"`
	} `json:"checks"`
	exit   int
	stderr string
}

func (o *checkOutput) status(name string) string {
	for _, c := range o.Checks {
		if c.Name == name {
			return c.Status
		}
	}
	return "missing"
}

func (o *checkOutput) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "exit %d, ok %v %v\n", o.exit, o.OK, o.Summary)
	for _, c := range o.Checks {
		fmt.Fprintf(&b, "  %s %s: %s\n", c.Status, c.Name, c.Message)
		for _, d := range c.Details {
			fmt.Fprintf(&b, "      %s\n", d)
		}
		for _, f := range c.Fix {
			fmt.Fprintf(&b, "      fix: %s\n", f)
		}
	}
	return b.String() + o.stderr
}

func runCheck(t *testing.T, args ...string) *checkOutput {
	t.Helper()
	cmd := exec.Command(injectorBin, append([]string{"check", "--kubeconfig", cp.KubeconfigPath, "-o", "json"}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	res := &checkOutput{stderr: errOut.String()}
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		res.exit = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(out.Bytes(), res); err != nil {
		t.Fatalf("check -o json: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	return res
}

// checkSettles is how long expectCheck waits for the API server's caches
// to show a fault.
const checkSettles = 30 * time.Second

// expectCheck runs check and asserts the overall result and the status of
// the named checks.
func expectCheck(t *testing.T, want map[string]string, args ...string) *checkOutput {
	t.Helper()
	var res *checkOutput
	// Some faults reach the API server's caches (its webhook
	// configurations, a Service's endpoints) asynchronously: run check until
	// the named checks show what is wanted or the time is up, then assert on
	// the last run.
	_ = wait.PollUntilContextTimeout(context.Background(), harness.PollInterval, checkSettles, true, func(context.Context) (bool, error) {
		res = runCheck(t, args...)
		for name, st := range want {
			if res.status(name) != st {
				return false, nil
			}
		}
		return true, nil
	})
	failed := false
	for name, st := range want {
		if got := res.status(name); got != st {
			t.Errorf("check %s: %s, want %s", name, got, st)
			failed = true
		}
	}
	anyFail := false
	for _, c := range res.Checks {
		anyFail = anyFail || c.Status == "fail"
	}
	wantExit := 0
	if anyFail {
		wantExit = 2
	}
	if res.exit != wantExit || res.OK == anyFail {
		t.Errorf("exit status %d, ok %v; want %d", res.exit, res.OK, wantExit)
		failed = true
	}
	if failed {
		t.Logf("check output:\n%s", res)
	}
	return res
}

func allPass() map[string]string {
	return map[string]string{
		"configuration": "pass", "webhook-configurations": "pass", "serving-certificate": "pass",
		"webhook-endpoints": "pass", "gateway-profile-conditions": "pass", "istiod-address": "pass", "istio-root-cert": "pass", "gateway-pods": "pass",
	}
}

func without(m map[string]string, name, status string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	out[name] = status
	return out
}

func mustUpdate(t *testing.T, obj client.Object, mutate func()) {
	t.Helper()
	ctx := context.Background()
	if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		t.Fatal(err)
	}
	mutate()
	if err := cp.Client.Update(ctx, obj); err != nil {
		t.Fatal(err)
	}
}
