package controlplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/sds-injector/sds-injector/test/harness"
)

const (
	testWebhookPath     = "/mutate-pods"
	testWebhookNSLabel  = "controlplane-test-webhook"
	testWebhookPodLabel = "controlplane-test/mutated"
)

func TestBinaryDirHonoursCompleteKubebuilderAssets(t *testing.T) {
	dir := t.TempDir()
	for _, b := range requiredBinaries(true) {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("KUBEBUILDER_ASSETS", dir)
	got, err := BinaryDir(context.Background(), true)
	if err != nil {
		t.Fatalf("BinaryDir: %v", err)
	}
	if got != dir {
		t.Fatalf("BinaryDir = %q, want KUBEBUILDER_ASSETS %q", got, dir)
	}
}

func TestMissingBinaries(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, EtcdBinary), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	// Present but not executable counts as missing.
	if err := os.WriteFile(filepath.Join(dir, APIServerBinary), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(missingBinaries(dir, true), ",")
	want := "kube-apiserver,kube-controller-manager,kubectl"
	if got != want {
		t.Fatalf("missingBinaries = %q, want %q", got, want)
	}
	if _, err := findBuildScript(); err != nil {
		t.Fatalf("findBuildScript: %v", err)
	}
}

func TestBinaryDirFallsBackFromIncompleteKubebuilderAssets(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the control-plane binaries (may build them); run without -short")
	}
	t.Setenv("KUBEBUILDER_ASSETS", t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	dir, err := BinaryDir(ctx, false)
	if err != nil {
		t.Fatalf("BinaryDir: %v", err)
	}
	if m := missingBinaries(dir, false); len(m) > 0 {
		t.Fatalf("BinaryDir returned %s lacking %v", dir, m)
	}
}

// TestControlPlane starts a real etcd + kube-apiserver + kube-controller-manager
// and checks that objects are stored, that the controllers act on them, that
// kubectl works against it and that an installed mutating webhook is called.
func TestControlPlane(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a local control plane; run without -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()

	begin := time.Now()
	cp, err := Start(ctx, Options{
		WithControllerManager: true,
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			MutatingWebhooks: []*admissionregistrationv1.MutatingWebhookConfiguration{testWebhookConfiguration()},
		},
	})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("control plane up in %s (binaries in %s)", time.Since(begin).Round(time.Millisecond), cp.BinaryDir)
	t.Cleanup(func() {
		stopBegin := time.Now()
		if err := cp.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
		t.Logf("control plane stopped in %s", time.Since(stopBegin).Round(time.Millisecond))
		if _, err := os.Stat(cp.KubeconfigPath); !os.IsNotExist(err) {
			t.Errorf("kubeconfig %s still there after Stop (stat: %v)", cp.KubeconfigPath, err)
		}
	})

	for _, p := range []string{cp.KubeconfigPath, cp.KubectlPath, cp.ControllerManagerLogPath} {
		if p == "" || !isFile(p) {
			t.Fatalf("expected file, got %q (KubeconfigPath=%q KubectlPath=%q ControllerManagerLogPath=%q)",
				p, cp.KubeconfigPath, cp.KubectlPath, cp.ControllerManagerLogPath)
		}
	}

	t.Run("PodWithServiceAccount", func(t *testing.T) {
		ns := createNamespace(ctx, t, cp, "cp-pod", nil)
		// The serviceaccount controller (kube-controller-manager) creates
		// the namespace's default ServiceAccount.
		waitFor(ctx, t, 30*time.Second, "default ServiceAccount in "+ns, func(ctx context.Context) (bool, error) {
			err := cp.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "default"}, &corev1.ServiceAccount{})
			return err == nil, ignoreNotFound(err)
		})

		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"}}
		if err := cp.Client.Create(ctx, sa); err != nil {
			t.Fatalf("creating ServiceAccount: %v", err)
		}
		pod := testPod(ns, "app-0", "app")
		if err := cp.Client.Create(ctx, pod); err != nil {
			t.Fatalf("creating Pod: %v", err)
		}

		var got corev1.Pod
		if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(pod), &got); err != nil {
			t.Fatalf("getting Pod back: %v", err)
		}
		if got.UID == "" || got.CreationTimestamp.IsZero() {
			t.Errorf("pod was not persisted by the API server: uid=%q created=%v", got.UID, got.CreationTimestamp)
		}
		if got.Spec.ServiceAccountName != "app" {
			t.Errorf("serviceAccountName = %q, want app", got.Spec.ServiceAccountName)
		}
		if got.Status.Phase != corev1.PodPending || got.Spec.NodeName != "" {
			t.Errorf("no kubelet/scheduler, want unscheduled Pending pod; got phase=%q node=%q", got.Status.Phase, got.Spec.NodeName)
		}
		if _, ok := got.Labels[testWebhookPodLabel]; ok {
			t.Errorf("pod in a namespace without %s label was mutated by the test webhook", testWebhookNSLabel)
		}
	})

	t.Run("KubectlApplyDeployment", func(t *testing.T) {
		ns := createNamespace(ctx, t, cp, "cp-deploy", nil)
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"}}
		if err := cp.Client.Create(ctx, sa); err != nil {
			t.Fatalf("creating ServiceAccount: %v", err)
		}
		manifest := filepath.Join(t.TempDir(), "deployment.yaml")
		if err := os.WriteFile(manifest, []byte(deploymentManifest(ns)), 0o644); err != nil {
			t.Fatal(err)
		}
		out := kubectl(ctx, t, cp, "apply", "-f", manifest)
		if !strings.Contains(out, "deployment.apps/demo created") {
			t.Fatalf("kubectl apply output %q lacks %q", out, "deployment.apps/demo created")
		}

		var pods []corev1.Pod
		waitFor(ctx, t, 60*time.Second, "2 ReplicaSet-created pods", func(ctx context.Context) (bool, error) {
			var list corev1.PodList
			if err := cp.Client.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{"app": "demo"}); err != nil {
				return false, err
			}
			pods = nil
			for _, p := range list.Items {
				if ref := metav1.GetControllerOf(&p); ref != nil && ref.Kind == "ReplicaSet" {
					pods = append(pods, p)
				}
			}
			return len(pods) == 2, nil
		})
		for _, p := range pods {
			if p.Spec.ServiceAccountName != "app" {
				t.Errorf("pod %s serviceAccountName = %q, want app", p.Name, p.Spec.ServiceAccountName)
			}
		}

		rsName := metav1.GetControllerOf(&pods[0]).Name
		var rs appsv1.ReplicaSet
		if err := cp.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: rsName}, &rs); err != nil {
			t.Fatalf("getting ReplicaSet %s: %v", rsName, err)
		}
		if ref := metav1.GetControllerOf(&rs); ref == nil || ref.Kind != "Deployment" || ref.Name != "demo" {
			t.Fatalf("ReplicaSet %s controller = %+v, want Deployment demo", rsName, ref)
		}
		waitFor(ctx, t, 30*time.Second, "Deployment status.replicas=2", func(ctx context.Context) (bool, error) {
			var d appsv1.Deployment
			if err := cp.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "demo"}, &d); err != nil {
				return false, err
			}
			return d.Status.Replicas == 2, nil
		})

		// Re-applying is a no-op, as with a real cluster.
		if out := kubectl(ctx, t, cp, "apply", "-f", manifest); !strings.Contains(out, "deployment.apps/demo unchanged") {
			t.Errorf("second kubectl apply output %q lacks %q", out, "deployment.apps/demo unchanged")
		}

		// The garbage collector removes the ReplicaSet and its pods.
		kubectl(ctx, t, cp, "delete", "-n", ns, "deployment/demo", "--wait=false")
		waitFor(ctx, t, 60*time.Second, "garbage collection of ReplicaSet and pods", func(ctx context.Context) (bool, error) {
			var rsList appsv1.ReplicaSetList
			if err := cp.Client.List(ctx, &rsList, client.InNamespace(ns)); err != nil {
				return false, err
			}
			var podList corev1.PodList
			if err := cp.Client.List(ctx, &podList, client.InNamespace(ns)); err != nil {
				return false, err
			}
			return len(rsList.Items) == 0 && len(podList.Items) == 0, nil
		})
	})

	t.Run("MutatingWebhook", func(t *testing.T) {
		w := cp.WebhookInstallOptions
		if w.LocalServingPort == 0 || w.LocalServingCertDir == "" || len(w.LocalServingCAData) == 0 {
			t.Fatalf("webhook serving options not filled in: %+v", w)
		}
		var stored admissionregistrationv1.MutatingWebhookConfiguration
		if err := cp.Client.Get(ctx, types.NamespacedName{Name: testWebhookConfiguration().Name}, &stored); err != nil {
			t.Fatalf("getting installed webhook configuration: %v", err)
		}
		cc := stored.Webhooks[0].ClientConfig
		wantURL := "https://" + net.JoinHostPort(w.LocalServingHost, strconv.Itoa(w.LocalServingPort)) + testWebhookPath
		if cc.Service != nil || cc.URL == nil || *cc.URL != wantURL || len(cc.CABundle) == 0 {
			t.Fatalf("installed clientConfig = service %v url %v caBundle %d bytes; want url %s and a CA bundle",
				cc.Service, ptr.Deref(cc.URL, "<nil>"), len(cc.CABundle), wantURL)
		}

		calls := serveTestWebhook(t, w)
		ns := createNamespace(ctx, t, cp, "cp-webhook", map[string]string{testWebhookNSLabel: "enabled"})
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"}}
		if err := cp.Client.Create(ctx, sa); err != nil {
			t.Fatalf("creating ServiceAccount: %v", err)
		}
		pod := testPod(ns, "mutated", "app")
		if err := cp.Client.Create(ctx, pod); err != nil {
			t.Fatalf("creating Pod through the webhook: %v", err)
		}
		if pod.Labels[testWebhookPodLabel] != "true" {
			t.Errorf("created pod labels = %v, want %s=true added by the webhook", pod.Labels, testWebhookPodLabel)
		}
		if n := calls.Load(); n != 1 {
			t.Errorf("webhook called %d times, want 1", n)
		}

		// The namespace controller finalizes a deleted namespace, pods included.
		if err := cp.Client.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatalf("deleting namespace: %v", err)
		}
		waitFor(ctx, t, 60*time.Second, "namespace "+ns+" to be finalized", func(ctx context.Context) (bool, error) {
			err := cp.Client.Get(ctx, types.NamespacedName{Name: ns}, &corev1.Namespace{})
			return apierrors.IsNotFound(err), ignoreNotFound(err)
		})
	})
}

func testWebhookConfiguration() *admissionregistrationv1.MutatingWebhookConfiguration {
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "MutatingWebhookConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: "controlplane-test"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name: "label.controlplane-test.sds-injector.io",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{
				Service: &admissionregistrationv1.ServiceReference{
					Namespace: "sds-injector", Name: "sds-injector", Path: ptr.To(testWebhookPath),
				},
			},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{
					APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
				},
			}},
			NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{testWebhookNSLabel: "enabled"},
			},
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          ptr.To[int32](5),
		}},
	}
}

// serveTestWebhook serves a mutating webhook that labels pods, on the address
// and certificate envtest allocated. Only the exact configured path is
// served, as controller-runtime's webhook server does.
func serveTestWebhook(t *testing.T, w *envtest.WebhookInstallOptions) *atomic.Int32 {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(w.LocalServingCertDir, "tls.crt"), filepath.Join(w.LocalServingCertDir, "tls.key"))
	if err != nil {
		t.Fatalf("loading webhook serving certificate: %v", err)
	}
	calls := &atomic.Int32{}
	mux := http.NewServeMux()
	mux.HandleFunc(testWebhookPath, func(rw http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		var review admissionv1.AdmissionReview
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
			http.Error(rw, fmt.Sprintf("bad review: %v", err), http.StatusBadRequest)
			return
		}
		var pod corev1.Pod
		if err := json.Unmarshal(review.Request.Object.Raw, &pod); err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		var patch string
		if pod.Labels == nil {
			patch = `[{"op":"add","path":"/metadata/labels","value":{"controlplane-test/mutated":"true"}}]`
		} else {
			patch = `[{"op":"add","path":"/metadata/labels/controlplane-test~1mutated","value":"true"}]`
		}
		pt := admissionv1.PatchTypeJSONPatch
		review.Response = &admissionv1.AdmissionResponse{
			UID: review.Request.UID, Allowed: true, Patch: []byte(patch), PatchType: &pt,
		}
		review.Request = nil
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(&review)
	})
	ln, err := tls.Listen("tcp", net.JoinHostPort(w.LocalServingHost, strconv.Itoa(w.LocalServingPort)),
		&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("listening for webhook: %v", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return calls
}

func createNamespace(ctx context.Context, t *testing.T, cp *ControlPlane, prefix string, labels map[string]string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-", Labels: labels}}
	if err := cp.Client.Create(ctx, ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	return ns.Name
}

func testPod(ns, name, serviceAccount string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			ServiceAccountName: serviceAccount,
			Containers:         []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
}

func deploymentManifest(ns string) string {
	return `apiVersion: apps/v1
kind: Deployment
metadata:
  name: demo
  namespace: ` + ns + `
  labels:
    app: demo
spec:
  replicas: 2
  selector:
    matchLabels:
      app: demo
  template:
    metadata:
      labels:
        app: demo
    spec:
      serviceAccountName: app
      containers:
      - name: app
        image: registry.k8s.io/pause:3.10
`
}

func kubectl(ctx context.Context, t *testing.T, cp *ControlPlane, args ...string) string {
	t.Helper()
	cmd, err := cp.KubectlCmd(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// waitFor is harness.Await for this package's tests.
func waitFor(ctx context.Context, t *testing.T, timeout time.Duration, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	harness.Await(ctx, t, timeout, what, cond)
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
