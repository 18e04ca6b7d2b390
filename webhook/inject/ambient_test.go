package inject

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestAmbientEnrolled(t *testing.T) {
	ambient := map[string]string{LabelDataplaneMode: DataplaneModeAmbient}
	none := map[string]string{LabelDataplaneMode: DataplaneModeNone}
	for name, tc := range map[string]struct {
		pod, ns map[string]string
		want    bool
	}{
		"pod label":                      {ambient, nil, true},
		"namespace label":                {nil, ambient, true},
		"pod none beats namespace":       {none, ambient, false},
		"pod ambient in plain namespace": {ambient, map[string]string{"x": "y"}, true},
		"neither":                        {nil, nil, false},
		"other value":                    {map[string]string{LabelDataplaneMode: "sidecar"}, nil, false},
	} {
		if got := AmbientEnrolled(tc.pod, tc.ns); got != tc.want {
			t.Errorf("%s: AmbientEnrolled = %v, want %v", name, got, tc.want)
		}
	}
}

func TestAmbientNamespace(t *testing.T) {
	s := DefaultConfig().MustResolve()
	ambientNS := map[string]string{LabelDataplaneMode: DataplaneModeAmbient}
	gloo := readPod(t, examplesDir+"/gloo-gateway-proxy.yaml")
	outOfAmbient := gloo.DeepCopy()
	outOfAmbient.Labels[LabelDataplaneMode] = DataplaneModeNone
	hostNet := gloo.DeepCopy()
	hostNet.Spec.HostNetwork = true
	hostNet.Annotations[AnnotationFlavor] = string(FlavorSDSAgent) // binds no port
	app := readPod(t, examplesDir+"/plain-app.yaml")

	for name, tc := range map[string]struct {
		pod      *corev1.Pod
		ns       map[string]string
		ok       bool
		reason   Reason
		hostWarn bool
	}{
		"gateway in ambient namespace": {gloo, ambientNS, true, ReasonAmbient, false},
		"gateway opted out of ambient": {outOfAmbient, ambientNS, false, "", false},
		"gateway in plain namespace":   {gloo, nil, false, "", false},
		"hostNetwork gateway":          {hostNet, ambientNS, false, "", true},
		"application pod":              {app, ambientNS, false, "", false},
	} {
		t.Run(name, func(t *testing.T) {
			d, ok := Ambient(tc.pod, s, tc.ns)
			if ok != tc.ok || (ok && (d.Reason != tc.reason || !d.Warn || d.Outcome != OutcomeSkipped)) {
				t.Fatalf("Ambient = %+v, %v; want ok=%v reason %q with a warning", d, ok, tc.ok, tc.reason)
			}
			if ok {
				for _, w := range []string{"ztunnel", "namespace label " + LabelDataplaneMode, "no client certificate", LabelDataplaneMode + "=" + DataplaneModeNone} {
					if !strings.Contains(d.Message, w) {
						t.Errorf("message %q lacks %q", d.Message, w)
					}
				}
			}
			w := AmbientHostNetworkWarning(tc.pod, tc.ns)
			if (w != "") != tc.hostWarn {
				t.Errorf("AmbientHostNetworkWarning = %q, want a warning: %v", w, tc.hostWarn)
			}
			if !ok && !tc.hostWarn {
				return
			}
			// Neither helper stands in the way of what Inject decides for a
			// pod it does not answer for.
			if !ok && Inject(tc.pod, s).Decision.Outcome != OutcomeInjected {
				t.Errorf("hostNetwork gateway in an ambient namespace is not injected: %+v", Inject(tc.pod, s).Decision)
			}
		})
	}
	if d, ok := Ambient(nil, s, ambientNS); !ok || d.Outcome != OutcomeError {
		t.Errorf("nil pod: %+v %v", d, ok)
	}
}

func TestIsEnvoyImage(t *testing.T) {
	for image, want := range map[string]bool{
		"envoyproxy/envoy:v1.36.0":                        true,
		"docker.io/envoyproxy/envoy:distroless-v1.39.0":   true,
		"docker.io/envoyproxy/envoy-distroless@sha256:ab": true,
		"registry.example.com:5000/envoyproxy/envoy":      true,
		"quay.io/solo-io/gloo-envoy-wrapper:1.19.20":      true,
		"cr.kgateway.dev/kgateway-dev/envoy-wrapper:v2.1": true,
		"docker.io/emissaryingress/emissary:3.10.0":       true,
		"docker.io/bitnami/envoy:1.36.0":                  true,
		"docker.io/envoyproxy/gateway:v1.9.0":             false,
		"ghcr.io/projectcontour/contour:v1.33.0":          false,
		"example.com/notenvoyproxy/envoy:1":               false,
		"docker.io/istio/proxyv2:1.30.0":                  false,
		"nginx":                                           false,
	} {
		if got := isEnvoyImage(image); got != want {
			t.Errorf("isEnvoyImage(%q) = %v, want %v", image, got, want)
		}
	}
}
