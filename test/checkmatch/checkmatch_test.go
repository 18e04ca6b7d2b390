// Package checkmatch proves that `sds-injector check` decides "would the
// API server send this pod to our webhook" as a real kube-apiserver does:
// for every shipped webhook configuration (deploy/webhook) and a custom
// one whose CEL reads request and spec, a table of namespaces and pods is
// submitted as dry-run creates; a recording webhook on loopback sees which
// ones the apiserver sends, and check.Matcher must give the same answer
// for each.
package checkmatch

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/internal/check"
	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/harness"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// recorder is an admission webhook that admits everything unchanged and
// remembers which pods (namespace/name) it was sent.
type recorder struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(req.Body).Decode(&review); err != nil || review.Request == nil {
		http.Error(w, "bad review", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.seen[review.Request.Namespace+"/"+review.Request.Name] = true
	r.mu.Unlock()
	review.Response = &admissionv1.AdmissionResponse{UID: review.Request.UID, Allowed: true}
	review.Request = nil
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&review)
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.seen = map[string]bool{}
	r.mu.Unlock()
}

func (r *recorder) called(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[key]
}

// servingCert makes a CA and a certificate for 127.0.0.1 signed by it.
func servingCert(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "checkmatch CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// pointAt makes every webhook of mwc call url, trusting caPEM.
func pointAt(mwc *admissionregistrationv1.MutatingWebhookConfiguration, url string, caPEM []byte) {
	for i := range mwc.Webhooks {
		mwc.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url, CABundle: caPEM}
	}
}

var namespaces = map[string]map[string]string{
	"enabled":      {inject.NamespaceLabel: "enabled"},
	"plain":        nil,
	"disabled":     {inject.NamespaceLabel: "disabled"},
	"sds-injector": nil,
	"kube-system":  nil, // exists already
}

type podCase struct {
	name                string
	labels, annotations map[string]string
	container           string
	// mayFail: the apiserver may refuse the create after admission (a
	// mirror pod is not the API's to create); only the call is compared.
	mayFail bool
}

var pods = []podCase{
	{name: "gw"},
	{name: "gw-label-true", labels: map[string]string{inject.LabelInject: "true"}},
	{name: "gw-label-false", labels: map[string]string{inject.LabelInject: "false"}},
	{name: "gw-annotation-true", annotations: map[string]string{inject.AnnotationInject: "true"}},
	{name: "gw-label-false-annotation-true", labels: map[string]string{inject.LabelInject: "false"}, annotations: map[string]string{inject.AnnotationInject: "true"}},
	{name: "gw-mirror", annotations: map[string]string{"kubernetes.io/config.mirror": "x"}, mayFail: true},
	{name: "app", labels: map[string]string{"app": "web"}, container: "web"},
	{name: "app-gateway-container", labels: map[string]string{"app": "web"}, annotations: map[string]string{inject.AnnotationGatewayContainer: "envoy"}, container: "envoy"},
	{name: "app-annotation-true", labels: map[string]string{"app": "web"}, annotations: map[string]string{inject.AnnotationInject: "true"}, container: "web"},
}

func (p podCase) pod(ns string) *corev1.Pod {
	labels := map[string]string{}
	if p.container == "" {
		labels["gloo"] = "gateway-proxy"
	}
	for k, v := range p.labels {
		labels[k] = v
	}
	container := p.container
	if container == "" {
		container = "gateway-proxy"
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: p.name, Labels: labels, Annotations: p.annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: container, Image: "registry.example/envoy:1"}}},
	}
}

// customMWC has no selectors and a CEL that reads request and spec.
func customMWC() *admissionregistrationv1.MutatingWebhookConfiguration {
	none, ignore := admissionregistrationv1.SideEffectClassNone, admissionregistrationv1.Ignore
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "checkmatch-custom"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name: "custom.checkmatch.sds-injector.io",
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			MatchConditions: []admissionregistrationv1.MatchCondition{
				{Name: "not-plain", Expression: "request.namespace != 'plain' && request.operation == 'CREATE'"},
				{Name: "gateway-container", Expression: "object.spec.containers.exists(c, c.name == 'gateway-proxy' || c.name == 'envoy')"},
			},
			SideEffects: &none, FailurePolicy: &ignore, AdmissionReviewVersions: []string{"v1"},
		}},
	}
}

func TestMatcherAgreesWithTheAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a local kube-apiserver + etcd (built from source and cached on first use); run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cp := controlplane.MustStart(ctx, t, controlplane.Options{})

	rec := &recorder{seen: map[string]bool{}}
	srv := httptest.NewUnstartedServer(rec)
	cert, caPEM := servingCert(t)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	url := srv.URL + "/inject"

	c := cp.Client
	nsObjs := map[string]*corev1.Namespace{}
	for name, labels := range namespaces {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
		if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		// The apiserver's view: the labels it set (kubernetes.io/metadata.name).
		var got corev1.Namespace
		if err := c.Get(ctx, client.ObjectKey{Name: name}, &got); err != nil {
			t.Fatal(err)
		}
		nsObjs[name] = &got
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
		if err := c.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}

	configs := []struct {
		name string
		mwc  *admissionregistrationv1.MutatingWebhookConfiguration
		// wait waits until the apiserver does (want) or does not call the
		// configuration's webhooks.
		wait func(mwc *admissionregistrationv1.MutatingWebhookConfiguration, want bool) error
	}{}
	shipped := func(mwc *admissionregistrationv1.MutatingWebhookConfiguration, want bool) error {
		return cp.WaitShippedWebhooks(ctx, mwc, want, nil)
	}
	for _, f := range []string{"namespace-mode.yaml", "per-gateway-mode.yaml", "cluster-wide-mode.yaml"} {
		configs = append(configs, struct {
			name string
			mwc  *admissionregistrationv1.MutatingWebhookConfiguration
			wait func(*admissionregistrationv1.MutatingWebhookConfiguration, bool) error
		}{f, harness.ShippedWebhook(t, f), shipped})
	}
	probe := pods[0].pod("enabled")
	configs = append(configs, struct {
		name string
		mwc  *admissionregistrationv1.MutatingWebhookConfiguration
		wait func(*admissionregistrationv1.MutatingWebhookConfiguration, bool) error
	}{"custom (CEL on request and spec)", customMWC(), func(mwc *admissionregistrationv1.MutatingWebhookConfiguration, want bool) error {
		return cp.WaitWebhook(ctx, mwc.Webhooks[0].Name, want, func(ctx context.Context) error {
			return c.Create(ctx, probe.DeepCopy(), client.DryRunAll)
		})
	}})

	for _, cfg := range configs {
		t.Run(cfg.name, func(t *testing.T) {
			mwc := cfg.mwc
			pointAt(mwc, url, caPEM)
			// As written, before the apiserver's defaulting (Create
			// fills mwc in with the stored object).
			asWritten := mwc.DeepCopy()
			if err := c.Create(ctx, mwc); err != nil {
				t.Fatal(err)
			}
			if err := cfg.wait(mwc, true); err != nil {
				t.Fatal(err)
			}
			matcher := check.NewMatcher([]*admissionregistrationv1.MutatingWebhookConfiguration{asWritten})
			rec.reset()
			var names []string
			for n := range namespaces {
				names = append(names, n)
			}
			sort.Strings(names)
			agreed, called := 0, 0
			for _, ns := range names {
				for _, pc := range pods {
					pod := pc.pod(ns)
					err := c.Create(ctx, pod.DeepCopy(), client.DryRunAll)
					if err != nil && !pc.mayFail {
						t.Errorf("%s/%s: dry-run create: %v", ns, pc.name, err)
						continue
					}
					apiserver := rec.called(ns + "/" + pc.name)
					ours := matcher.Matches(nsObjs[ns], pod)
					if apiserver != ours {
						t.Errorf("%s/%s (labels %v, annotations %v): the apiserver calls the webhook: %v, check.Matcher says %v",
							ns, pc.name, pod.Labels, pod.Annotations, apiserver, ours)
						continue
					}
					agreed++
					if apiserver {
						called++
					}
				}
			}
			t.Logf("%s: %d of %d cases agree (%d sent to the webhook)", cfg.name, agreed, len(names)*len(pods), called)
			// A table in which nothing (or everything) is sent proves little.
			if called == 0 || called == len(names)*len(pods) {
				t.Errorf("the table does not separate: %d of %d cases sent", called, len(names)*len(pods))
			}
			if err := c.Delete(ctx, mwc); err != nil {
				t.Fatal(err)
			}
			if err := cfg.wait(mwc, false); err != nil {
				t.Fatal(fmt.Errorf("removing %s: %w", mwc.Name, err))
			}
		})
	}
}
