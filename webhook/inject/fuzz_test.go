package inject

import (
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// fuzzSettings are the configurations a fuzz input can select with its
// first byte, covering every flavor, profile and placement.
func fuzzSettings() []*Settings {
	var out []*Settings
	for _, src := range []SPIREConfig{{CSIDriver: DefaultSPIRECSIDriver}, {HostPath: "/run/spire/agent-sockets"}} {
		c := DefaultConfig()
		c.Flavor, c.IdentityProvider.SPIRE = FlavorSPIRE, &src
		out = append(out, c.MustResolve())
	}
	for _, f := range Flavors {
		for _, v := range matrixVersions {
			for _, native := range []bool{false, true} {
				c := DefaultConfig()
				c.Flavor, c.IstioVersion, c.NativeSidecar = f, v, native
				out = append(out, c.MustResolve())
			}
		}
	}
	return out
}

func addSeeds(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(testdataDir, "*.in.yaml"))
	ex, _ := filepath.Glob(filepath.Join(examplesDir, "*.yaml"))
	for i, path := range append(files, ex...) {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), data)
	}
}

// FuzzInject checks the engine's invariants (see checkInvariants) on
// arbitrary pods: no panic, idempotence, exact reversal, a patch that
// reproduces the result, and no duplicate names.
func FuzzInject(f *testing.F) {
	addSeeds(f)
	settings := fuzzSettings()
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		var pod corev1.Pod
		if err := yaml.Unmarshal(data, &pod); err != nil {
			return
		}
		checkInvariants(t, &pod, settings[int(which)%len(settings)])
	})
}

// FuzzUninject feeds arbitrary (often inconsistent) status annotations and
// pods to Uninject: it must never panic, and its patch must reproduce its
// result.
func FuzzUninject(f *testing.F) {
	addSeeds(f)
	f.Add(uint8(0), []byte(`{"metadata":{"annotations":{"sds-injector.io/status":"{\"version\":1,\"gatewayContainer\":\"x\",\"containers\":[\"a\"],\"volumes\":[\"v\"],\"gatewayMounts\":[{\"name\":\"v\",\"mountPath\":\"/p\"}]}"}},"spec":{"containers":[{"name":"a"},{"name":"x","volumeMounts":[{"name":"v","mountPath":"/p"}]}],"volumes":[{"name":"v"}]}}`))
	f.Fuzz(func(t *testing.T, _ uint8, data []byte) {
		var pod corev1.Pod
		if err := yaml.Unmarshal(data, &pod); err != nil {
			return
		}
		before := mustJSON(t, &pod)
		res := Uninject(&pod)
		if string(mustJSON(t, &pod)) != string(before) {
			t.Fatal("Uninject modified its input")
		}
		if res.Decision.Outcome != OutcomeInjected {
			return
		}
		if got, want := normalise(t, applyPatch(t, before, res.Patch)), mustJSON(t, res.Pod); string(got) != string(want) {
			t.Fatalf("uninject patch disagrees with its result\npatched: %s\nresult:  %s", got, want)
		}
	})
}
