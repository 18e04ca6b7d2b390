package check

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
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

func TestClusterServiceName(t *testing.T) {
	for _, tc := range []struct {
		host, svc, ns string
		ok            bool
	}{
		{"istiod.istio-system.svc", "istiod", "istio-system", true},
		{"istiod-1-30.istio-system.svc.cluster.local", "istiod-1-30", "istio-system", true},
		{"istiod.istio-system.svc.cluster.local.", "istiod", "istio-system", true},
		{"istiod.istio-system.svc.example.org", "", "", false},
		{"istiod.istio-system", "", "", false},
		{"istiod.svc", "", "", false},
		{"a.b.c.svc", "", "", false},
		{"istiod.example.com", "", "", false},
	} {
		svc, ns, ok := clusterServiceName(tc.host, "cluster.local")
		if svc != tc.svc || ns != tc.ns || ok != tc.ok {
			t.Errorf("%s: got %q %q %v", tc.host, svc, ns, ok)
		}
	}
}

func TestSelectorAndRules(t *testing.T) {
	if !selectorMatches(nil, nil) {
		t.Error("a nil selector matches everything")
	}
	if !selectorMatches(&metav1.LabelSelector{}, map[string]string{"a": "b"}) {
		t.Error("an empty selector matches everything")
	}
	if selectorMatches(&metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}}, nil) {
		t.Error("a selector with requirements does not match a pod without labels")
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}}
	pod := gatewayPod("ns", "gw", nil, nil)
	for _, tc := range []struct {
		op       admissionregistrationv1.OperationType
		versions []string
		want     bool
	}{
		{admissionregistrationv1.Create, []string{"v1"}, true},
		{admissionregistrationv1.OperationAll, []string{"*"}, true},
		{admissionregistrationv1.Update, []string{"v1"}, false},
		{admissionregistrationv1.Create, nil, false}, // no apiVersions: matches nothing, as in the apiserver
	} {
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "w",
			Rules: []admissionregistrationv1.RuleWithOperations{{Operations: []admissionregistrationv1.OperationType{tc.op},
				Rule: admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: tc.versions, Resources: []string{"pods"}}}}}}}
		if got := NewMatcher([]*admissionregistrationv1.MutatingWebhookConfiguration{mwc}).Matches(ns, pod); got != tc.want {
			t.Errorf("rule %s %v: matches %v, want %v", tc.op, tc.versions, got, tc.want)
		}
	}
}

func shippedMWC(t *testing.T, file string) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "webhook", file))
	if err != nil {
		t.Fatal(err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(data, &mwc); err != nil {
		t.Fatal(err)
	}
	return &mwc
}

func gatewayPod(ns, name string, labels, annotations map[string]string) *corev1.Pod {
	l := map[string]string{"gloo": "gateway-proxy"}
	for k, v := range labels {
		l[k] = v
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l, Annotations: annotations},
		Spec:       corev1.PodSpec{ServiceAccountName: "gateway-proxy", Containers: []corev1.Container{{Name: "gateway-proxy", Image: "quay.io/solo-io/gloo-envoy-wrapper:1.19.20"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

// TestInScopeShippedConfigurations evaluates the shipped webhook
// configurations (selectors and CEL) the way the API server does.
func TestInScopeShippedConfigurations(t *testing.T) {
	k := &Env{ns: map[string]*corev1.Namespace{}}
	for name, l := range map[string]map[string]string{"enabled": {inject.NamespaceLabel: "enabled"}, "plain": nil, "disabled": {inject.NamespaceLabel: "disabled"}, "kube-system": nil} {
		labels := map[string]string{"kubernetes.io/metadata.name": name}
		for a, b := range l {
			labels[a] = b
		}
		k.ns[name] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	app := func(ns string, labels, ann map[string]string) *corev1.Pod {
		p := gatewayPod(ns, "app", nil, ann)
		p.Labels = labels
		return p
	}
	for _, tc := range []struct {
		file string
		pod  *corev1.Pod
		want bool
	}{
		{"namespace-mode.yaml", gatewayPod("enabled", "gw", nil, nil), true},
		{"namespace-mode.yaml", gatewayPod("plain", "gw", nil, nil), false},
		{"namespace-mode.yaml", gatewayPod("enabled", "gw", map[string]string{inject.LabelInject: "false"}, nil), false},
		{"namespace-mode.yaml", gatewayPod("enabled", "gw", nil, map[string]string{"kubernetes.io/config.mirror": "x"}), false},
		{"per-gateway-mode.yaml", gatewayPod("plain", "gw", map[string]string{inject.LabelInject: "true"}, nil), true},
		{"per-gateway-mode.yaml", gatewayPod("plain", "gw", nil, map[string]string{inject.AnnotationInject: "true"}), true},
		{"per-gateway-mode.yaml", gatewayPod("plain", "gw", nil, nil), false},
		{"per-gateway-mode.yaml", gatewayPod("plain", "gw", map[string]string{inject.LabelInject: "false"}, map[string]string{inject.AnnotationInject: "true"}), false},
		{"per-gateway-mode.yaml", gatewayPod("enabled", "gw", map[string]string{inject.LabelInject: "true"}, nil), false},
		{"cluster-wide-mode.yaml", gatewayPod("plain", "gw", nil, nil), true},
		{"cluster-wide-mode.yaml", gatewayPod("disabled", "gw", nil, nil), false},
		{"cluster-wide-mode.yaml", gatewayPod("kube-system", "gw", nil, nil), false},
		{"cluster-wide-mode.yaml", app("plain", map[string]string{"app": "web"}, nil), false},
		{"cluster-wide-mode.yaml", app("plain", nil, map[string]string{inject.AnnotationGatewayContainer: "envoy"}), true},
	} {
		m := NewMatcher([]*admissionregistrationv1.MutatingWebhookConfiguration{shippedMWC(t, tc.file)})
		if got := m.Matches(k.ns[tc.pod.Namespace], tc.pod); got != tc.want {
			t.Errorf("%s: pod %s/%s labels %v annotations %v: in scope %v, want %v", tc.file, tc.pod.Namespace, tc.pod.Name, tc.pod.Labels, tc.pod.Annotations, got, tc.want)
		}
	}
	// A condition this evaluator cannot compile counts as matching.
	mwc := shippedMWC(t, "namespace-mode.yaml")
	mwc.Webhooks[0].MatchConditions = []admissionregistrationv1.MatchCondition{{Name: "x", Expression: "authorizer.group('').resource('pods').check('create').allowed()"}}
	m := NewMatcher([]*admissionregistrationv1.MutatingWebhookConfiguration{mwc})
	if !m.Matches(k.ns["enabled"], gatewayPod("enabled", "gw", nil, nil)) {
		t.Error("an unevaluable condition must not hide a gateway")
	}
}

func testScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := cmapi.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRestartCommand(t *testing.T) {
	ctrl := func(kind, name string) []metav1.OwnerReference {
		return []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: name, Controller: ptr.To(true), UID: "u"}}
	}
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "gw", Name: "gateway-proxy-abc", OwnerReferences: ctrl("Deployment", "gateway-proxy")}}
	orphanRS := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "gw", Name: "lonely"}}
	c := fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(rs, orphanRS).Build()
	k := &Env{c: c}
	for _, tc := range []struct {
		owners       []metav1.OwnerReference
		owner, cmdPr string
	}{
		{ctrl("ReplicaSet", "gateway-proxy-abc"), "deployment/gateway-proxy", "kubectl -n gw rollout restart deployment/gateway-proxy"},
		{ctrl("ReplicaSet", "lonely"), "replicaset/lonely", "kubectl -n gw delete pod p"},
		{ctrl("DaemonSet", "envoy"), "daemonset/envoy", "kubectl -n gw rollout restart daemonset/envoy"},
		{ctrl("StatefulSet", "edge"), "statefulset/edge", "kubectl -n gw rollout restart statefulset/edge"},
		{ctrl("Rollout", "edge"), "rollout/edge", "kubectl -n gw delete pod p"},
		{nil, "", "kubectl -n gw delete pod p"},
	} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "gw", Name: "p", OwnerReferences: tc.owners}}
		owner, cmd := k.restartCommand(context.Background(), pod)
		if owner != tc.owner || !strings.HasPrefix(cmd, tc.cmdPr) {
			t.Errorf("owners %v: got %q %q, want %q %q", tc.owners, owner, cmd, tc.owner, tc.cmdPr)
		}
	}
}

type testPKI struct {
	caPEM, certPEM []byte
}

func makePKI(t *testing.T, dnsName string, validity time.Duration) testPKI {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dnsName}, DNSNames: []string{dnsName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validity), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return testPKI{
		caPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}
}

// fakeWorld is a healthy cert-manager-mode installation in a fake client.
func fakeWorld(t *testing.T, pki testPKI) []client.Object {
	t.Helper()
	mwc := shippedMWC(t, "namespace-mode.yaml")
	mwc.Annotations = map[string]string{cmapi.WantInjectAnnotation: "sds-injector/sds-injector-serving"}
	mwc.Webhooks[0].ClientConfig.CABundle = pki.caPEM
	nsObj := func(name string, l map[string]string) *corev1.Namespace {
		labels := map[string]string{"kubernetes.io/metadata.name": name}
		for k, v := range l {
			labels[k] = v
		}
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	slice := func(ns, svc, port string, p int32) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.1"}}},
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(port), Port: ptr.To(p)}},
		}
	}
	injected := gatewayPod("gloo-system", "gw-injected", nil, map[string]string{inject.AnnotationStatus: "{}"})
	return []client.Object{
		mwc,
		nsObj("sds-injector", nil), nsObj("gloo-system", map[string]string{inject.NamespaceLabel: "enabled"}), nsObj("istio-system", nil),
		&cmapi.Certificate{ObjectMeta: metav1.ObjectMeta{Namespace: "sds-injector", Name: "sds-injector-serving"},
			Spec:   cmapi.CertificateSpec{SecretName: "sds-injector-tls", DNSNames: []string{"sds-injector.sds-injector.svc"}},
			Status: cmapi.CertificateStatus{Conditions: []cmapi.CertificateCondition{{Type: cmapi.CertificateConditionReady, Status: cmmeta.ConditionTrue}}}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "sds-injector", Name: "sds-injector-tls"}, Data: map[string][]byte{"tls.crt": pki.certPEM}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "sds-injector", Name: "sds-injector"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "https-webhook", Port: 443}}}},
		slice("sds-injector", "sds-injector", "https-webhook", 9443),
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "istiod"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc-istiod", Port: 15012}}}},
		slice("istio-system", "istiod", "grpc-istiod", 15012),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "gloo-system", Name: "istio-ca-root-cert"}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "sds-injector", Name: "sds-injector"}, Data: map[string]string{"config.yaml": "apiVersion: sds-injector.io/v1alpha1\nkind: InjectorConfig\nflavor: istio-proxy\n"}},
		injected,
	}
}

func runFakeCheck(t *testing.T, objs []client.Object) *Report {
	t.Helper()
	c := fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(objs...).Build()
	o := Options{Namespace: "sds-injector", ConfigMap: "sds-injector", CertSecret: "sds-injector-tls",
		WebhookConfigurations: []string{"sds-injector-namespace", "sds-injector-per-gateway", "sds-injector-cluster-wide"}, MinValidity: 7 * 24 * time.Hour}
	return RunChecks(context.Background(), All(), NewEnv(c, o))
}

func statusOf(r *Report, name string) Status {
	for _, c := range r.Checks {
		if c.Name == name {
			return c.Status
		}
	}
	return "missing"
}

func TestCheckFake(t *testing.T) {
	pki := makePKI(t, "sds-injector.sds-injector.svc", 90*24*time.Hour)
	r := runFakeCheck(t, fakeWorld(t, pki))
	if !r.OK {
		var b bytes.Buffer
		_ = Write(&b, r, "text")
		t.Fatalf("healthy world fails:\n%s", b.String())
	}

	t.Run("uninjected gateway", func(t *testing.T) {
		objs := append(fakeWorld(t, pki), gatewayPod("gloo-system", "gw-late", nil, nil))
		r := runFakeCheck(t, objs)
		if statusOf(r, checkGatewayPods) != StatusFail || r.OK {
			t.Fatalf("%+v", r.Checks)
		}
		pods := resultOf(t, r, checkGatewayPods).Pods
		if len(pods) != 1 || pods[0].Name != "gw-late" || pods[0].Problem != "not-injected" || !strings.Contains(pods[0].Command, "delete pod gw-late") {
			t.Errorf("%+v", pods)
		}
	})
	t.Run("expiring certificate", func(t *testing.T) {
		short := makePKI(t, "sds-injector.sds-injector.svc", 2*24*time.Hour)
		r := runFakeCheck(t, fakeWorld(t, short))
		if statusOf(r, checkServingCert) != StatusFail {
			t.Fatalf("%+v", r.Checks)
		}
	})
	t.Run("certificate for another name", func(t *testing.T) {
		r := runFakeCheck(t, fakeWorld(t, makePKI(t, "webhook.example.com", 90*24*time.Hour)))
		if statusOf(r, checkServingCert) != StatusFail {
			t.Fatalf("%+v", r.Checks)
		}
	})
	t.Run("missing root certificate", func(t *testing.T) {
		objs := fakeWorld(t, pki)
		var kept []client.Object
		for _, o := range objs {
			if o.GetName() != "istio-ca-root-cert" {
				kept = append(kept, o)
			}
		}
		r := runFakeCheck(t, kept)
		if statusOf(r, checkRootCert) != StatusFail {
			t.Fatalf("%+v", r.Checks)
		}
	})
	t.Run("configuration without apiVersion", func(t *testing.T) {
		objs := fakeWorld(t, pki)
		for _, o := range objs {
			if cm, ok := o.(*corev1.ConfigMap); ok && cm.Name == "sds-injector" {
				cm.Data["config.yaml"] = "flavor: istio-proxy\n"
			}
		}
		r := runFakeCheck(t, objs)
		res := resultOf(t, r, checkConfiguration)
		if res.Status != StatusWarn || len(res.Fix) != 1 || !strings.Contains(res.Fix[0], "apiVersion: sds-injector.io/v1alpha1") || !r.OK {
			t.Fatalf("want a deprecation warning naming the apiVersion to add: %+v", res)
		}
	})
	t.Run("configuration of an unknown version", func(t *testing.T) {
		objs := fakeWorld(t, pki)
		for _, o := range objs {
			if cm, ok := o.(*corev1.ConfigMap); ok && cm.Name == "sds-injector" {
				cm.Data["config.yaml"] = "apiVersion: sds-injector.io/v9\nkind: InjectorConfig\n"
			}
		}
		r := runFakeCheck(t, objs)
		res := resultOf(t, r, checkConfiguration)
		if res.Status != StatusFail || !strings.Contains(res.Message, "supported: sds-injector.io/v1alpha1") {
			t.Fatalf("want a failure naming the supported version: %+v", res)
		}
	})
	t.Run("profile missing from the webhook's condition", func(t *testing.T) {
		// Added to the ConfigMap by hand, not through the chart: the shipped
		// condition does not know it, so its gateways are never sent.
		objs := fakeWorld(t, pki)
		for _, o := range objs {
			if cm, ok := o.(*corev1.ConfigMap); ok && cm.Name == "sds-injector" {
				cm.Data["config.yaml"] += "gatewayProfiles:\n- name: team-edge\n  selector: {matchLabels: {team/edge: envoy}}\n  containers: [proxy]\n"
			}
		}
		r := runFakeCheck(t, objs)
		res := resultOf(t, r, checkProfileConditions)
		if res.Status != StatusFail || r.OK || len(res.Details) != 1 || !strings.Contains(res.Details[0], "profile(s) team-edge:") ||
			len(res.Fix) != 1 || !strings.Contains(res.Fix[0], "config.gatewayProfiles") {
			t.Fatalf("want a failure naming team-edge and the fix: %+v", res)
		}
	})
	t.Run("profile given through the chart", func(t *testing.T) {
		// The same profile in the condition too, as the chart renders it.
		objs := fakeWorld(t, pki)
		for _, o := range objs {
			switch o := o.(type) {
			case *corev1.ConfigMap:
				if o.Name == "sds-injector" {
					o.Data["config.yaml"] += "gatewayProfiles:\n- name: team-edge\n  selector: {matchLabels: {team/edge: envoy}}\n  containers: [proxy]\n"
				}
			case *admissionregistrationv1.MutatingWebhookConfiguration:
				for i, c := range o.Webhooks[0].MatchConditions {
					if c.Name == gatewayConditionName {
						o.Webhooks[0].MatchConditions[i].Expression += " ||\n((has(object.metadata.labels) && 'team/edge' in object.metadata.labels && object.metadata.labels['team/edge'] == 'envoy'))"
					}
				}
			}
		}
		r := runFakeCheck(t, objs)
		if res := resultOf(t, r, checkProfileConditions); res.Status != StatusPass || !strings.Contains(res.Message, "8 gateway profile(s)") {
			t.Fatalf("%+v", res)
		}
	})
	t.Run("no webhook narrows by profile", func(t *testing.T) {
		objs := fakeWorld(t, pki)
		for _, o := range objs {
			if mwc, ok := o.(*admissionregistrationv1.MutatingWebhookConfiguration); ok {
				mwc.Webhooks[0].MatchConditions = mwc.Webhooks[0].MatchConditions[:1] // the mirror-pod condition only
			}
		}
		r := runFakeCheck(t, objs)
		if res := resultOf(t, r, checkProfileConditions); res.Status != StatusPass || !strings.Contains(res.Message, "no installed webhook narrows") {
			t.Fatalf("%+v", res)
		}
	})
	t.Run("json output", func(t *testing.T) {
		var b bytes.Buffer
		if err := Write(&b, r, "json"); err != nil {
			t.Fatal(err)
		}
		var back Report
		if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back.Checks) != 8 || !back.OK || back.Summary["pass"] != 8 {
			t.Errorf("%v %+v", err, back)
		}
	})
}

func resultOf(t *testing.T, r *Report, name string) Result {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %s in %+v", name, r.Checks)
	return Result{}
}
