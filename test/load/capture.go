package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// The reviews the cpu mode sends, as kube-apiserver sent them: captured by
// `go run ./test/load capture` and checked in, so that every run measures
// the same bytes. The webhook's benchmarks read them too.
const (
	capturedDir   = "webhook/server/testdata/apiserver-reviews"
	capturedGloo  = "gloo-chart.json"
	capturedPlain = "plain-app.json"
)

// runCapture records two AdmissionReviews as a real kube-apiserver sends
// them to a namespace-mode webhook: the pod of Gloo Edge v1.22.1's chart
// Deployment (test/gateways/testdata/gloo, rendered from Gloo's own chart)
// and the plain application pod of docs/examples, each created in a
// namespace labelled for injection. The apiserver has run its own
// admission plugins by then (the ServiceAccount token volume, default
// tolerations, defaulting, managedFields), which is what a webhook
// decodes in production. A recorder stands in for the webhook and
// answers "allowed" without a patch.
func runCapture() error {
	ctx := context.Background()
	cp, err := controlplane.Start(ctx, controlplane.Options{WebhookInstallOptions: envtest.WebhookInstallOptions{}})
	if err != nil {
		return err
	}
	defer func() { _ = cp.Stop() }()
	w := cp.WebhookInstallOptions
	rec, err := startRecorder(w.LocalServingHost, w.LocalServingPort, w.LocalServingCertDir)
	if err != nil {
		return err
	}
	defer rec.stop()

	// The shipped namespace mode no longer sends ordinary pods (its
	// looks-like-a-gateway matchCondition), so the recording uses it
	// without that condition: the plain pod's review is what the webhook
	// decodes on its skip path (a configuration without the condition, or
	// a pod the condition lets through and the engine skips).
	file, err := withoutGatewayCondition(filepath.Join(repoRoot(), "deploy", "webhook", "namespace-mode.yaml"))
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(file) }()
	mwc, err := cp.InstallMutatingWebhookFile(ctx, file)
	if err != nil {
		return err
	}
	if err := cp.WaitShippedWebhooks(ctx, mwc, true, nil); err != nil {
		return err
	}
	c := cp.Client
	gloo, err := glooChartPod()
	if err != nil {
		return err
	}
	plain, err := examplePod("plain-app.yaml")
	if err != nil {
		return err
	}
	for _, p := range []*corev1.Pod{gloo, plain} {
		if err := ensureNamespace(ctx, c, p.Namespace, p.Spec.ServiceAccountName); err != nil {
			return err
		}
		if err := c.Create(ctx, p, client.FieldOwner("kube-controller-manager")); err != nil {
			return fmt.Errorf("creating pod %s: %w", p.Name, err)
		}
	}
	for file, name := range map[string]string{capturedGloo: gloo.Name, capturedPlain: plain.Name} {
		body, ok := rec.review(name)
		if !ok {
			return fmt.Errorf("the apiserver sent no review of pod %s", name)
		}
		var indented bytes.Buffer
		if err := json.Indent(&indented, body, "", " "); err != nil {
			return err
		}
		path := filepath.Join(repoRoot(), capturedDir, file)
		if err := os.WriteFile(path, append(indented.Bytes(), '\n'), 0o644); err != nil {
			return err
		}
		fmt.Printf("wrote %s (%d bytes as sent)\n", path, len(body))
	}
	return nil
}

// glooChartPod is the pod the ReplicaSet of Gloo's chart Deployment
// creates: the template with the ReplicaSet's name, hash label and owner.
func glooChartPod() (*corev1.Pod, error) {
	data, err := os.ReadFile(filepath.Join(repoRoot(), "test", "gateways", "testdata", "gloo", "gateway-proxy-deployment.yaml"))
	if err != nil {
		return nil, err
	}
	var d appsv1.Deployment
	if err := yaml.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	if d.Kind != "Deployment" {
		return nil, errors.New("gateway-proxy-deployment.yaml holds no Deployment")
	}
	const hash = "5d8f7b9c6d"
	p := &corev1.Pod{ObjectMeta: *d.Spec.Template.ObjectMeta.DeepCopy(), Spec: *d.Spec.Template.Spec.DeepCopy()}
	p.Namespace, p.Name = d.Namespace, d.Name+"-"+hash+"-x7k2q"
	if p.Labels == nil {
		p.Labels = map[string]string{}
	}
	p.Labels["pod-template-hash"] = hash
	yes := true
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: d.Name + "-" + hash,
		UID: "3f6c1e0a-9a52-4d1e-8c7b-2b1f0e9d4a11", Controller: &yes, BlockOwnerDeletion: &yes}}
	if p.Spec.ServiceAccountName == "" {
		p.Spec.ServiceAccountName = "default"
	}
	return p, nil
}

func ensureNamespace(ctx context.Context, c client.Client, ns, sa string) error {
	err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{inject.NamespaceLabel: "enabled"}}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	// The controller-manager's ServiceAccount controller is not running.
	err = c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: ns}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// recorder answers every review with "allowed" and keeps the bodies by
// the pod's name.
type recorder struct {
	srv *http.Server
	mu  sync.Mutex
	got map[string][]byte
}

func startRecorder(host string, port int, certDir string) (*recorder, error) {
	r := &recorder{got: map[string][]byte{}}
	r.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(r.serve)}
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	go func() {
		_ = r.srv.ServeTLS(l, filepath.Join(certDir, "tls.crt"), filepath.Join(certDir, "tls.key"))
	}()
	return r, nil
}

func (r *recorder) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var ar struct {
		APIVersion string `json:"apiVersion"`
		Request    struct {
			UID    string `json:"uid"`
			Object struct {
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			} `json:"object"`
		} `json:"request"`
	}
	if err := json.Unmarshal(body, &ar); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.got[ar.Request.Object.Metadata.Name] = body
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = fmt.Fprintf(w, `{"apiVersion":%q,"kind":"AdmissionReview","response":{"uid":%q,"allowed":true}}`, ar.APIVersion, ar.Request.UID)
}

func (r *recorder) review(name string) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.got[name]
	return b, ok
}

func (r *recorder) stop() { _ = r.srv.Close() }

// withoutGatewayCondition writes a copy of a shipped webhook configuration
// without its looks-like-a-gateway matchCondition and returns its path.
func withoutGatewayCondition(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(data, &mwc); err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	found := false
	for i := range mwc.Webhooks {
		conds := mwc.Webhooks[i].MatchConditions[:0]
		for _, c := range mwc.Webhooks[i].MatchConditions {
			if c.Name == "looks-like-a-gateway" {
				found = true
				continue
			}
			conds = append(conds, c)
		}
		mwc.Webhooks[i].MatchConditions = conds
	}
	if !found {
		return "", fmt.Errorf("%s has no looks-like-a-gateway matchCondition", file)
	}
	out, err := yaml.Marshal(&mwc)
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp("", "namespace-mode-*.yaml")
	if err != nil {
		return "", err
	}
	if _, err := f.Write(out); err != nil {
		_ = f.Close()
		return "", err
	}
	return f.Name(), f.Close()
}
