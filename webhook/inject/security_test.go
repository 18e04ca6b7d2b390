package inject

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestOverridesCannotWidenPrivileges: whatever a pod author writes in the
// sds-injector.io/ annotations, the agent stays hardened, gets no host
// access and the token stays scoped to istiod. Every annotation the engine
// reads is listed here; a new one must be added to this test.
func TestOverridesCannotWidenPrivileges(t *testing.T) {
	hostile := []string{
		"true", "false", "", "0", "-1", "1Ei", "999999999", "privileged", "hostPath:/", "/etc/shadow",
		`{"privileged":true}`, "NET_ADMIN", "root", "1.4.0", "99.0.0", "1.22.0; rm -rf /", strings.Repeat("x", 10000),
		"istio-proxy", "sds-agent", "gateway-proxy", "envoy", "\x00", "../../",
	}
	annotations := []string{
		AnnotationFlavor, AnnotationIstioVersion, AnnotationNativeSidecar, AnnotationGatewayContainer,
		AnnotationAgentCPU, AnnotationAgentMemory, AnnotationAgentCPULimit, AnnotationAgentMemoryLimit, AnnotationInject,
	}
	s := DefaultConfig().MustResolve()
	base := readPod(t, examplesDir+"/gloo-gateway-proxy.yaml")
	n := 0
	for _, a := range annotations {
		for _, v := range hostile {
			for _, also := range []string{"", AnnotationFlavor + "=sds-agent", AnnotationFlavor + "=istio-agent-files"} {
				pod := base.DeepCopy()
				pod.Annotations[a] = v
				if also != "" {
					k, val, _ := strings.Cut(also, "=")
					if k != a {
						pod.Annotations[k] = val
					}
				}
				res := Inject(pod, s)
				n++
				if res.Decision.Outcome != OutcomeInjected {
					continue
				}
				if err := checkHardened(pod, res.Pod, s); err != nil {
					t.Fatalf("%s=%q: %v", a, v, err)
				}
			}
		}
	}
	t.Logf("%d hostile override combinations checked", n)
}

func checkHardened(before, after *corev1.Pod, s *Settings) error {
	for _, v := range after.Spec.Volumes {
		if v.HostPath != nil {
			return fmt.Errorf("volume %s is a hostPath", v.Name)
		}
		if v.Projected != nil {
			for _, src := range v.Projected.Sources {
				if t := src.ServiceAccountToken; t != nil && v.Name == VolumeIstioToken {
					if t.Audience != s.tokenAudience || t.Audience == "" || t.ExpirationSeconds == nil || *t.ExpirationSeconds > 48*3600 {
						return fmt.Errorf("istio-token is not scoped to istiod's audience with a bounded lifetime: %+v", t)
					}
				}
			}
		}
	}
	if after.Spec.HostNetwork != before.Spec.HostNetwork || after.Spec.HostPID || after.Spec.HostIPC {
		return fmt.Errorf("host namespaces changed")
	}
	for _, c := range append(append([]corev1.Container{}, after.Spec.InitContainers...), after.Spec.Containers...) {
		if c.Name != "istio-proxy" && c.Name != "sds-agent" {
			continue
		}
		sc := c.SecurityContext
		if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil ||
			len(sc.Capabilities.Add) != 0 || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
			return fmt.Errorf("agent %s is not hardened: %+v", c.Name, sc)
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				return fmt.Errorf("agent reads a Secret through env %s", e.Name)
			}
		}
	}
	return nil
}
