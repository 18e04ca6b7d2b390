package install

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/test/certmanager"

	"github.com/sds-injector/sds-injector/test/harness"
)

// startRealCertManager runs the real cert-manager controller and cainjector
// against the local API server until the test ends. Without their sources
// (../shared/third-party/cert-manager) the test fails saying so: it is
// never skipped silently.
func startRealCertManager(t *testing.T) *certmanager.CertManager {
	t.Helper()
	// Built (or found missing) by TestMain's prepare.
	if bins.CertManagerMissing != "" {
		t.Fatalf("NOT RUN: %s", bins.CertManagerMissing)
	}
	cm, err := certmanager.Start(context.Background(), certmanager.Options{
		Dir: bins.CertManagerDir, Kubeconfig: cp.KubeconfigPath, LogDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cert-manager logs:\n%s", cm.LogTail())
		}
		_ = cm.Stop()
	})
	return cm
}

// waitCertificatesReady waits until every Certificate in ns is Ready and
// returns them.
func waitCertificatesReady(t *testing.T, c client.Client, ns string, want int) []cmapi.Certificate {
	t.Helper()
	var crts cmapi.CertificateList
	harness.Eventually(t, 60*time.Second, "cert-manager to issue the Certificates", func(ctx context.Context) (bool, error) {
		if err := c.List(ctx, &crts, client.InNamespace(ns)); err != nil {
			return false, err
		}
		if len(crts.Items) != want {
			return false, nil
		}
		for _, crt := range crts.Items {
			if !certificateReady(&crt) {
				return false, nil
			}
		}
		return true, nil
	})
	return crts.Items
}

func certificateReady(crt *cmapi.Certificate) bool {
	for _, cond := range crt.Status.Conditions {
		if cond.Type == cmapi.CertificateConditionReady {
			return cond.Status == cmmeta.ConditionTrue && cond.ObservedGeneration == crt.Generation
		}
	}
	return false
}

// injectedWebhooks are the webhook configurations annotated for cainjector.
func injectedWebhooks(ctx context.Context, c client.Client) ([]admissionregistrationv1.MutatingWebhookConfiguration, error) {
	var list admissionregistrationv1.MutatingWebhookConfigurationList
	if err := c.List(ctx, &list); err != nil {
		return nil, err
	}
	var out []admissionregistrationv1.MutatingWebhookConfiguration
	for _, m := range list.Items {
		if m.Annotations[cmapi.WantInjectAnnotation] != "" {
			out = append(out, m)
		}
	}
	return out, nil
}

// waitCABundles waits until cainjector has put ca into every webhook's
// caBundle of the n annotated configurations: byte-equal to ca with exact,
// else containing it (cainjector merges its CA into a bundle it finds,
// feature CAInjectorMerging, GA and on by default), and returns the number
// of certificates in the largest bundle.
func waitCABundles(t *testing.T, c client.Client, n int, ca []byte, exact bool, what string) int {
	t.Helper()
	want := parseCert(t, ca)
	most := 0
	harness.Eventually(t, 60*time.Second, what, func(ctx context.Context) (bool, error) {
		mwcs, err := injectedWebhooks(ctx, c)
		if err != nil || len(mwcs) != n {
			return false, err
		}
		most = 0
		for _, m := range mwcs {
			for _, w := range m.Webhooks {
				certs := bundleCerts(w.ClientConfig.CABundle)
				most = max(most, len(certs))
				if exact && !bytes.Equal(w.ClientConfig.CABundle, ca) {
					return false, nil
				}
				if !slices.ContainsFunc(certs, want.Equal) {
					return false, nil
				}
			}
		}
		return true, nil
	})
	return most
}

// bundleCerts parses the certificates of a PEM bundle.
func bundleCerts(bundle []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, bundle = pem.Decode(bundle)
		if b == nil {
			return out
		}
		if crt, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, crt)
		}
	}
}

func parseCert(t *testing.T, pemData []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(pemData)
	if b == nil {
		t.Fatalf("no PEM certificate in %q", pemData)
	}
	crt, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return crt
}

// secretVolume does the kubelet's job for the injector pod's Secret volume:
// it watches the Secret and projects tls.crt and tls.key into dir the way
// the kubelet's atomic writer does (a timestamped directory, the ..data
// symlink swapped by rename, the files symlinks into ..data), so that
// `sds-injector serve --cert-dir` sees exactly the updates a pod sees.
type secretVolume struct {
	dir   string
	mu    sync.Mutex
	syncs int
	last  []byte // tls.crt last written
	err   error
}

func mountSecret(t *testing.T, ns, name string) *secretVolume {
	t.Helper()
	v := &secretVolume{dir: t.TempDir()}
	wc, err := client.NewWithWatch(cp.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			w, err := wc.Watch(ctx, &corev1.SecretList{}, client.InNamespace(ns), client.MatchingFields{"metadata.name": name})
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
				continue
			}
			for ev := range w.ResultChan() {
				s, ok := ev.Object.(*corev1.Secret)
				if !ok || (ev.Type != watch.Added && ev.Type != watch.Modified) {
					continue // a deleted Secret leaves the files in place, as in a pod
				}
				v.write(s)
			}
			w.Stop()
		}
	}()
	harness.Eventually(t, 60*time.Second, "the Secret "+ns+"/"+name+" to be projected", func(context.Context) (bool, error) {
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.syncs > 0, v.err
	})
	return v
}

func (v *secretVolume) write(s *corev1.Secret) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(s.Data["tls.crt"]) == 0 || len(s.Data["tls.key"]) == 0 || bytes.Equal(s.Data["tls.crt"], v.last) {
		return
	}
	ts := filepath.Join(v.dir, fmt.Sprintf("..%d_%s", v.syncs, time.Now().Format("2006_01_02_15_04_05.000000000")))
	if v.err = os.Mkdir(ts, 0o700); v.err != nil {
		return
	}
	for _, k := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if v.err = os.WriteFile(filepath.Join(ts, k), s.Data[k], 0o600); v.err != nil {
			return
		}
	}
	old, _ := os.Readlink(filepath.Join(v.dir, "..data"))
	tmp := filepath.Join(v.dir, "..data_tmp")
	_ = os.Remove(tmp)
	if v.err = os.Symlink(filepath.Base(ts), tmp); v.err != nil {
		return
	}
	if v.err = os.Rename(tmp, filepath.Join(v.dir, "..data")); v.err != nil {
		return
	}
	for _, k := range []string{"tls.crt", "tls.key", "ca.crt"} {
		link := filepath.Join(v.dir, k)
		if _, err := os.Lstat(link); err != nil {
			if v.err = os.Symlink(filepath.Join("..data", k), link); v.err != nil {
				return
			}
		}
	}
	if old != "" {
		_ = os.RemoveAll(filepath.Join(v.dir, old))
	}
	v.syncs++
	v.last = append([]byte(nil), s.Data["tls.crt"]...)
}

// servedCert is the leaf certificate the webhook presents at addr,
// verified against ca for the Service name the API server uses.
func servedCert(addr string, ca []byte) (*x509.Certificate, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New("no CA certificate")
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{
		RootCAs: pool, ServerName: releaseName + "." + injectorNS + ".svc", MinVersion: tls.VersionTLS12,
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// getSecret reads ns/name.
func getSecret(t *testing.T, c client.Client, name string) *corev1.Secret {
	t.Helper()
	var s corev1.Secret
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: injectorNS, Name: name}, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// updateCertificate changes a Certificate's spec, retrying on conflicts
// with cert-manager's own writes.
func updateCertificate(t *testing.T, c client.Client, name string, mutate func(*cmapi.Certificate)) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, "updating Certificate "+name, func(ctx context.Context) (bool, error) {
		var crt cmapi.Certificate
		if err := c.Get(ctx, types.NamespacedName{Namespace: injectorNS, Name: name}, &crt); err != nil {
			return false, err
		}
		mutate(&crt)
		err := c.Update(ctx, &crt)
		if apierrors.IsConflict(err) {
			return false, nil
		}
		return err == nil, err
	})
}

// waitReissued waits until the Secret holds a certificate other than
// before and the Certificate is Ready again, and returns the new one.
func waitReissued(t *testing.T, c client.Client, crtName, secretName string, before *x509.Certificate) *x509.Certificate {
	t.Helper()
	var now *x509.Certificate
	harness.Eventually(t, 60*time.Second, "cert-manager to re-issue "+crtName, func(ctx context.Context) (bool, error) {
		var s corev1.Secret
		if err := c.Get(ctx, types.NamespacedName{Namespace: injectorNS, Name: secretName}, &s); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		b, _ := pem.Decode(s.Data["tls.crt"])
		if b == nil {
			return false, nil
		}
		crt, err := x509.ParseCertificate(b.Bytes)
		if err != nil || crt.SerialNumber.Cmp(before.SerialNumber) == 0 {
			return false, nil
		}
		var cert cmapi.Certificate
		if err := c.Get(ctx, types.NamespacedName{Namespace: injectorNS, Name: crtName}, &cert); err != nil {
			return false, err
		}
		now = crt
		return certificateReady(&cert), nil
	})
	return now
}

// waitServed waits until the webhook at addr presents want.
func waitServed(t *testing.T, addr string, ca []byte, want *x509.Certificate) {
	t.Helper()
	harness.Eventually(t, 60*time.Second, "the webhook to serve certificate serial "+want.SerialNumber.String(), func(context.Context) (bool, error) {
		got, err := servedCert(addr, ca)
		return err == nil && got.Equal(want), nil
	})
}

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// gatewayStream creates opted-in gateway pods through the API server one
// after another (two in flight) until stopped, counting failed admissions
// and pods admitted without injection.
type gatewayStream struct {
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	mu          sync.Mutex
	ok          int
	notInjected int
	failed      []error
}

// streamSeq names the pods of every stream of the test binary uniquely.
var streamSeq atomic.Int64

func startGatewayStream(t *testing.T, ns string, labels map[string]string) *gatewayStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	g := &gatewayStream{cancel: cancel}
	tmpl := examplePod(t, "gloo-gateway-proxy.yaml", ns, "", labels, nil)
	for w := 0; w < 2; w++ {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			for ctx.Err() == nil {
				pod := tmpl.DeepCopy()
				pod.Name = fmt.Sprintf("stream-%d", streamSeq.Add(1))
				err := cp.Client.Create(context.Background(), pod)
				g.mu.Lock()
				switch {
				case err != nil:
					g.failed = append(g.failed, err)
				case !isInjected(pod):
					g.ok++
					g.notInjected++
				default:
					g.ok++
				}
				g.mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() { g.stop() })
	return g
}

func (g *gatewayStream) created() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ok
}

// waitCreated waits until n gateways were admitted (or one was refused).
func (g *gatewayStream) waitCreated(t *testing.T, n int) {
	t.Helper()
	harness.Eventually(t, 2*time.Minute, fmt.Sprintf("%d gateway creations", n), func(context.Context) (bool, error) {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.ok >= n || len(g.failed) > 0, nil
	})
}

// stop ends the stream and returns the admitted count, the refusals and the
// admitted pods that were not injected.
func (g *gatewayStream) stop() (int, []error, int) {
	g.cancel()
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ok, g.failed, g.notInjected
}
