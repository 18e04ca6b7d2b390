package kubelet

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

// These tests check the emulator itself, without an apiserver (a fake
// clientset stands in), so they also run under -short.

func TestExpand(t *testing.T) {
	vals := map[string]string{"A": "a", "NS": "gloo-system", "EMPTY": ""}
	for in, want := range map[string]string{
		"plain":                      "plain",
		"$(NS).svc.cluster.local":    "gloo-system.svc.cluster.local",
		"$(A)$(A)":                   "aa",
		"$$(A)":                      "$(A)",
		"$(UNKNOWN)":                 "$(UNKNOWN)",
		"x$(EMPTY)y":                 "xy",
		"$(A":                        "$(A",
		"$A":                         "$A",
		"cost $":                     "cost $",
		"--domain=$(NS).svc.$(NONE)": "--domain=gloo-system.svc.$(NONE)",
	} {
		if got := Expand(in, vals); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func testPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "gw-0", Namespace: "gw", UID: "uid-1",
			Labels: map[string]string{"app": "gw", "b": "x\"y"}, Annotations: map[string]string{"zone": "z1"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "gateway",
			SecurityContext:    &corev1.PodSecurityContext{FSGroup: ptr.To[int64](10101), RunAsUser: ptr.To[int64](10101)},
			Containers: []corev1.Container{
				{
					Name:  "agent",
					Image: "example/agent:1",
					Env: []corev1.EnvVar{
						{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
						{Name: "DOMAIN", Value: "$(POD_NAMESPACE).svc"},
						{Name: "LATER", Value: "$(AFTER)"},
						{Name: "AFTER", Value: "after"},
						{Name: "IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
						{Name: "ZONE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['zone']"}}},
						{Name: "CPU", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu", Divisor: resource.MustParse("1")}}},
						{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
						{Name: "REQ_MEM", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.memory"}}},
						{Name: "CERTS", Value: "/etc/certs/sub"},
						{Name: "ELSEWHERE", Value: "/opt/x"},
					},
					Args: []string{"run", "--domain", "$(DOMAIN)", "$$(DOMAIN)"},
					Resources: corev1.ResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
						Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("512Mi")},
					},
					SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](1337), RunAsGroup: ptr.To[int64](1337)},
					VolumeMounts: []corev1.VolumeMount{
						{Name: "certs", MountPath: "/etc/certs"},
						{Name: "token", MountPath: "/var/run/secrets/tokens", ReadOnly: true},
						{Name: "root", MountPath: "/var/run/secrets/istio", ReadOnly: true},
						{Name: "info", MountPath: "/etc/podinfo"},
					},
				},
				{
					Name:         "gateway",
					Image:        "example/gateway:1",
					VolumeMounts: []corev1.VolumeMount{{Name: "certs", MountPath: "/certs", ReadOnly: true}},
				},
			},
			Volumes: []corev1.Volume{
				{Name: "certs", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
					ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "istio-ca", ExpirationSeconds: ptr.To[int64](43200), Path: "istio-token"},
				}}}}},
				{Name: "root", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "istio-ca-root-cert"}}}},
				{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
					{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
				}}}},
			},
		},
	}
}

// fakeClient serves the root ConfigMap and answers TokenRequests,
// recording them.
func fakeClient(t *testing.T, withRoot bool) (*fake.Clientset, *[]*authenticationv1.TokenRequest) {
	var objs []runtime.Object
	if withRoot {
		objs = append(objs, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-root-cert", Namespace: "gw"},
			Data: map[string]string{"root-cert.pem": "ROOT"}})
	}
	cs := fake.NewClientset(objs...)
	var reqs []*authenticationv1.TokenRequest
	cs.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ca, ok := a.(k8stesting.CreateAction)
		if !ok || a.GetSubresource() != "token" {
			return false, nil, nil
		}
		tr := ca.GetObject().(*authenticationv1.TokenRequest).DeepCopy()
		reqs = append(reqs, tr)
		tr.Status.Token = "token-for-" + strings.Join(tr.Spec.Audiences, ",")
		return true, tr, nil
	})
	return cs, &reqs
}

func TestSetUpPodAndEnv(t *testing.T) {
	cs, reqs := fakeClient(t, true)
	k := &Kubelet{Client: cs, APIServerHost: "127.0.0.1", APIServerPort: "6443", Dir: t.TempDir()}
	ctx := context.Background()
	p, err := k.SetUpPod(ctx, testPod(), PodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Cleanup()

	// The token was requested as the volume asks, for the pod's SA, bound
	// to the pod.
	if len(*reqs) != 1 {
		t.Fatalf("%d token requests", len(*reqs))
	}
	tr := (*reqs)[0]
	if got := tr.Spec.Audiences; len(got) != 1 || got[0] != "istio-ca" || *tr.Spec.ExpirationSeconds != 43200 ||
		tr.Spec.BoundObjectRef == nil || tr.Spec.BoundObjectRef.Name != "gw-0" || tr.Spec.BoundObjectRef.UID != "uid-1" {
		t.Errorf("token request %+v", tr.Spec)
	}
	// With an fsGroup the kubelet writes tokens 0600, then makes them
	// group-readable (when it may chown, i.e. as root).
	wantMode := os.FileMode(0o600)
	if os.Geteuid() == 0 {
		wantMode = 0o640
	}
	if p.Tokens[0].FileMode != 0o600 {
		t.Errorf("token written with mode %v", p.Tokens[0].FileMode)
	}
	fi, err := os.Stat(p.HostPath("agent", "/var/run/secrets/tokens/istio-token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != wantMode {
		t.Errorf("token file mode %v, want %v", fi.Mode().Perm(), wantMode)
	}
	if b, _ := os.ReadFile(p.HostPath("agent", "/var/run/secrets/istio/root-cert.pem")); string(b) != "ROOT" {
		t.Errorf("root-cert.pem = %q", b)
	}
	if b, _ := os.ReadFile(p.HostPath("agent", "/etc/podinfo/labels")); string(b) != "app=\"gw\"\nb=\"x\\\"y\"" {
		t.Errorf("labels = %q", b)
	}

	// One volume, two views: a file the agent writes is where the
	// gateway mounts the volume, and nowhere else.
	if err := os.WriteFile(p.HostPath("agent", "/etc/certs/key.pem"), []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p.HostPath("gateway", "/certs/key.pem")); err != nil || string(b) != "k" {
		t.Errorf("gateway view: %q, %v", b, err)
	}
	if _, err := os.Stat(p.HostPath("gateway", "/etc/certs/key.pem")); !os.IsNotExist(err) {
		t.Errorf("a path the gateway does not mount exists: %v", err)
	}
	if _, err := os.Stat(p.HostPath("gateway", "/var/run/secrets/tokens/istio-token")); !os.IsNotExist(err) {
		t.Errorf("the gateway sees the agent's token: %v", err)
	}

	// The image root is read-only: a non-root user cannot create files
	// outside volumes.
	if fi, err := os.Stat(p.Root("agent")); err != nil || fi.Mode().Perm() != 0o555 {
		t.Errorf("container root mode %v, %v", fi.Mode().Perm(), err)
	}

	c, _ := p.Container("agent")
	env, err := p.Env(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range env {
		got[e.Name] = e.Value
	}
	for name, want := range map[string]string{
		"KUBERNETES_SERVICE_HOST": "127.0.0.1",
		"KUBERNETES_SERVICE_PORT": "6443",
		"POD_NAMESPACE":           "gw",
		"DOMAIN":                  "gw.svc",
		"LATER":                   "$(AFTER)", // only earlier variables expand
		"IP":                      "127.0.0.1",
		"ZONE":                    "z1",
		"CPU":                     "2", // 1500m rounded up
		"MEM_MI":                  "512",
		"REQ_MEM":                 "67108864",
	} {
		if got[name] != want {
			t.Errorf("env %s = %q, want %q", name, got[name], want)
		}
	}

	// Paths inside a mount become relative to the root; others stay.
	cc, err := p.context(ctx, "agent", nil)
	if err != nil {
		t.Fatal(err)
	}
	var rewritten []string
	for _, rw := range cc.rewrites {
		rewritten = append(rewritten, rw.What+"="+rw.To)
	}
	if strings.Join(rewritten, ",") != "env CERTS=./etc/certs/sub" {
		t.Errorf("rewrites %v", rewritten)
	}
	// Under another working directory the relative path climbs to the root.
	if to, why := p.relativePath(c, "/home/nonroot", "/etc/certs/sub"); to != "../../etc/certs/sub" || why == "" {
		t.Errorf("relative to /home/nonroot: %q (%s)", to, why)
	}
	if p.UIDEmulated && (cc.cred == nil || cc.cred.Uid != 1337 || cc.cred.Gid != 1337 || len(cc.cred.Groups) != 1 || cc.cred.Groups[0] != 10101) {
		t.Errorf("credential %+v, want uid/gid 1337 with supplementary group 10101", cc.cred)
	}
	if cc.dir != p.Root("agent") {
		t.Errorf("working directory %s, want the root %s", cc.dir, p.Root("agent"))
	}
}

func TestEntrypointAndArgs(t *testing.T) {
	cs, _ := fakeClient(t, true)
	k := &Kubelet{Client: cs, Dir: t.TempDir(), Images: func(string) (*Image, error) {
		return &Image{Entrypoint: []string{"/usr/local/bin/agent"}, Cmd: []string{"default-cmd"},
			Env:   []string{"PATH=/usr/local/bin:/bin", "FROM_IMAGE=1"},
			Files: []File{{Path: "/usr/local/bin/agent", Data: []byte("#!/bin/sh\n"), Executable: true}}}, nil
	}}
	p, err := k.SetUpPod(context.Background(), testPod(), PodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Cleanup()
	cc, err := p.context(context.Background(), "agent", nil)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(p.Root("agent"), "usr", "local", "bin", "agent")
	for _, tc := range []struct {
		command, args, want []string
	}{
		{nil, []string{"run", "$(DOMAIN)", "$$(DOMAIN)"}, []string{bin, "run", "gw.svc", "$(DOMAIN)"}},
		{nil, nil, []string{bin, "default-cmd"}},
		{[]string{"agent", "probe"}, nil, []string{bin, "probe"}},
		{[]string{"/usr/local/bin/agent"}, []string{"$(FROM_IMAGE)"}, []string{bin, "$(FROM_IMAGE)"}}, // image ENV does not expand
	} {
		got, err := p.argv(cc, tc.command, tc.args)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("command %v args %v: argv %v, want %v", tc.command, tc.args, got, tc.want)
		}
	}
	if _, err := p.argv(cc, []string{"pilot-agent"}, nil); err == nil {
		t.Error("a binary that is not in the image was found")
	}
}

func TestMissingConfigMap(t *testing.T) {
	cs, _ := fakeClient(t, false)
	k := &Kubelet{Client: cs, Dir: t.TempDir()}
	_, err := k.SetUpPod(context.Background(), testPod(), PodOptions{})
	want := `MountVolume.SetUp failed for volume "root" : configmap "istio-ca-root-cert" not found`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %s", err, want)
	}
	p, err := k.SetUpPod(context.Background(), testPod(), PodOptions{IgnoreMountFailures: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Cleanup()
	if len(p.MountFailures) != 1 {
		t.Errorf("mount failures %v", p.MountFailures)
	}
	if _, err := os.Stat(p.HostPath("agent", "/var/run/secrets/istio/root-cert.pem")); !os.IsNotExist(err) {
		t.Errorf("root-cert.pem: %v", err)
	}
}
