package kubeinject

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

var settings = inject.DefaultConfig().MustResolve()

func injectFn(p *corev1.Pod) inject.Result { return inject.Inject(p, settings) }

func TestProcessReports(t *testing.T) {
	in := `apiVersion: v1
kind: Pod
metadata: {name: gw, namespace: edge, labels: {sds-injector.io/inject: "true"}}
spec: {containers: [{name: envoy, image: envoy}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: app, namespace: shop}
spec: {template: {spec: {containers: [{name: app, image: app}]}}}
`
	var out bytes.Buffer
	reports, err := Process(strings.NewReader(in), &out, injectFn)
	if err != nil {
		t.Fatal(err)
	}
	if len(reports) != 2 {
		t.Fatalf("reports: %v", reports)
	}
	if r := reports[0]; r.Document != 1 || r.Object != "Pod edge/gw" || r.Decision.Outcome != inject.OutcomeInjected {
		t.Errorf("first report %+v", r)
	}
	if r := reports[1]; r.Document != 2 || r.Decision.Reason != inject.ReasonNotAGateway {
		t.Errorf("second report %+v", r)
	}
	if got := reports[1].String(); got != "document 2 (StatefulSet shop/app): skipped [not-a-gateway]: pod matches no gateway profile" {
		t.Errorf("report text %q", got)
	}
}

func FuzzProcess(f *testing.F) {
	seeds, _ := filepath.Glob("../../docs/examples/*.yaml")
	more, _ := filepath.Glob("../../cmd/sds-injector/testdata/*.yaml")
	for _, p := range append(seeds, more...) {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("kind: List\nitems: [{kind: Pod, metadata: {labels: {gloo: gateway-proxy}}, spec: {containers: [{name: gateway-proxy}]}}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		reports, err := Process(bytes.NewReader(data), &out, injectFn)
		if err != nil {
			return // malformed input is an error, never a panic
		}
		injected := 0
		for _, r := range reports {
			if r.Decision.Outcome == inject.OutcomeInjected {
				injected++
			}
		}
		if injected == 0 {
			return
		}
		// Processing the output again must inject nothing new.
		var again bytes.Buffer
		reports2, err := Process(bytes.NewReader(out.Bytes()), &again, injectFn)
		if err != nil {
			t.Fatalf("output of a successful run does not parse: %v\n%s", err, out.Bytes())
		}
		for _, r := range reports2 {
			if r.Decision.Outcome == inject.OutcomeInjected {
				t.Fatalf("second pass injected again: %s", r)
			}
		}
	})
}
