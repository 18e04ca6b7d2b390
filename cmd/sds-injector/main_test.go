package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// run executes the CLI in-process and returns stdout, stderr and the error.
func run(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCommand(strings.NewReader(stdin), &out, &errOut)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

func splitDocs(t *testing.T, s string) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufioReader(s))
	var docs [][]byte
	for {
		d, err := r.Read()
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(d)) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

func TestInjectMultiDocument(t *testing.T) {
	out, stderr, err := run(t, "", "inject", "-f", "testdata/multi.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	docs := splitDocs(t, out)
	if len(docs) != 5 {
		t.Fatalf("want 5 documents (the comment-only one dropped), got %d:\n%s", len(docs), out)
	}
	if !strings.HasPrefix(string(docs[0]), "# A Service passes through untouched") {
		t.Errorf("the Service must be written exactly as read:\n%s", docs[0])
	}

	var gw appsv1.Deployment
	mustUnmarshal(t, docs[1], &gw)
	if st := gw.Spec.Template.Annotations[inject.AnnotationStatus]; st == "" {
		t.Errorf("gateway Deployment template not injected")
	}
	if gw.Spec.Template.Spec.Containers[0].Name != "istio-proxy" {
		t.Errorf("agent container not first: %s", gw.Spec.Template.Spec.Containers[0].Name)
	}
	if !strings.Contains(string(docs[1]), "futureField: kept") {
		t.Errorf("a field unknown to this binary was lost:\n%s", docs[1])
	}
	if !strings.Contains(string(docs[1]), "value: gateway-proxy\n") {
		t.Errorf("ISTIO_META_WORKLOAD_NAME should be the Deployment's name")
	}

	var web appsv1.Deployment
	mustUnmarshal(t, docs[2], &web)
	if len(web.Spec.Template.Spec.Containers) != 1 {
		t.Errorf("non-gateway Deployment was changed")
	}

	var cj batchv1.CronJob
	mustUnmarshal(t, docs[3], &cj)
	if n := len(cj.Spec.JobTemplate.Spec.Template.Spec.Containers); n != 2 {
		t.Errorf("opted-in CronJob template: %d containers, want 2", n)
	}

	var list corev1.List
	mustUnmarshal(t, docs[4], &list)
	var ds appsv1.DaemonSet
	mustUnmarshal(t, list.Items[0].Raw, &ds)
	if ds.Spec.Template.Annotations[inject.AnnotationStatus] == "" {
		t.Errorf("DaemonSet inside a List not injected")
	}
	if !strings.Contains(string(list.Items[1].Raw), `"a":"b"`) {
		t.Errorf("ConfigMap inside a List changed: %s", list.Items[1].Raw)
	}

	if !strings.Contains(stderr, "document 3 (Deployment gloo-system/web): skipped [not-a-gateway]") {
		t.Errorf("skip not reported on stderr:\n%s", stderr)
	}
	if strings.Contains(stderr, "gateway-proxy") {
		t.Errorf("injected objects reported without -v:\n%s", stderr)
	}
}

func TestUninjectRoundTrip(t *testing.T) {
	in, err := os.ReadFile("testdata/multi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	injected, _, err := run(t, "", "inject", "-f", "testdata/multi.yaml", "--native-sidecar", "--flavor", "sds-agent")
	if err != nil {
		t.Fatal(err)
	}
	restored, stderr, err := run(t, injected, "uninject", "-f", "-")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	want, got := splitDocs(t, string(in)), splitDocs(t, restored)
	if len(want)-1 != len(got) { // the comment-only document is dropped
		t.Fatalf("document count %d -> %d", len(want), len(got))
	}
	for i := range got {
		a, b := toJSON(t, want[i]), toJSON(t, got[i])
		if a != b {
			t.Errorf("document %d not restored:\nwant %s\ngot  %s", i+1, a, b)
		}
	}
}

func TestInjectFromStdinAndOutputFile(t *testing.T) {
	data, err := os.ReadFile("../../docs/examples/envoy-gateway-proxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	outFile := filepath.Join(t.TempDir(), "out.yaml")
	stdout, _, err := run(t, string(data), "inject", "-f", "-", "-o", outFile, "--istio-version", "1.13.9")
	if err != nil {
		t.Fatal(err)
	}
	if stdout != "" {
		t.Errorf("with -o nothing goes to stdout")
	}
	written, err := os.ReadFile(outFile)
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	mustUnmarshal(t, written, &pod)
	st, err := inject.ParseStatus(pod.Annotations[inject.AnnotationStatus])
	if err != nil {
		t.Fatal(err)
	}
	if st.IstioProfile != "1.5-1.13" || st.GatewayContainer != "envoy" {
		t.Errorf("status %+v", st)
	}
}

func TestConfigFileAndFlags(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("flavor: sds-agent\ntrustDomain: corp.example\nclusterID: east\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, "", "inject", "-f", "../../docs/examples/gloo-gateway-proxy.yaml", "--config", cfg, "--cluster-id", "west")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"name: SDS_SOCKET_PATH", "value: corp.example", "value: west"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "value: east") {
		t.Errorf("a set flag must override the config file")
	}
}

func TestErrors(t *testing.T) {
	cases := map[string]struct {
		stdin   string
		args    []string
		want    string
		partial bool
	}{
		"bad yaml names the document": {
			stdin: "apiVersion: v1\nkind: Pod\n---\napiVersion: v1\nkind: [unclosed\n",
			args:  []string{"inject", "-f", "-"}, want: "document 2: invalid YAML",
		},
		"not an object": {
			stdin: "- just\n- a list\n", args: []string{"inject", "-f", "-"}, want: "document 1: not a Kubernetes object",
		},
		"template missing": {
			stdin: "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\nspec: {}\n",
			args:  []string{"inject", "-f", "-"}, want: "Deployment x has no spec.template",
		},
		"invalid config": {
			args: []string{"inject", "-f", "-", "--flavor", "envoy"}, want: `flavor: Unsupported value: "envoy"`,
		},
		"missing file": {
			args: []string{"inject", "-f", "does-not-exist.yaml"}, want: "does-not-exist.yaml",
		},
		"missing -f": {
			args: []string{"inject"}, want: `required flag(s) "filename" not set`,
		},
		"engine error is reported and fails": {
			args: []string{"inject", "-f", "testdata/bad-inject-label.yaml"}, want: "could not be processed", partial: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, stderr, err := run(t, tc.stdin, tc.args...)
			if err == nil {
				t.Fatal("want an error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if got := exitCode(err); (got == 2) != tc.partial {
				t.Errorf("exit code %d", got)
			}
			if tc.partial && !strings.Contains(stderr, `sds-injector.io/inject="yes" is invalid`) {
				t.Errorf("stderr lacks the reason:\n%s", stderr)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	out, _, err := run(t, "", "version")
	if err != nil || !strings.HasPrefix(out, "sds-injector "+version) {
		t.Errorf("version: %q %v", out, err)
	}
}

func mustUnmarshal(t *testing.T, data []byte, into any) {
	t.Helper()
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
}

func toJSON(t *testing.T, y []byte) string {
	t.Helper()
	var v any
	mustUnmarshal(t, y, &v)
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
func TestCheckNeedsACluster(t *testing.T) {
	_, _, err := run(t, "", "check", "--kubeconfig", filepath.Join(t.TempDir(), "missing"))
	if err == nil || exitCode(err) != 1 {
		t.Errorf("want a plain error (exit 1) without a cluster, got %v", err)
	}
	_, _, err = run(t, "", "check", "-o", "yaml")
	if err == nil || !strings.Contains(err.Error(), "--output") {
		t.Errorf("bad -o: %v", err)
	}
}
