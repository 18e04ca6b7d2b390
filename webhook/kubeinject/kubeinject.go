// Package kubeinject applies the injection engine to Kubernetes manifests
// offline, as `istioctl kube-inject` does: Pods and the pod templates of
// workload controllers are injected, everything else passes through.
//
// Each object is changed by applying the engine's JSON Patch to the object's
// own JSON, so fields this binary does not know survive untouched.
package kubeinject

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// Transform is the engine call applied to each pod: inject.Inject with
// settings bound, or inject.Uninject.
type Transform func(*corev1.Pod) inject.Result

// Report tells what happened to one pod or pod template.
type Report struct {
	// Document is the 1-based index of the YAML document in the input.
	Document int
	// Object names the object, e.g. "Deployment gloo-system/gateway-proxy"
	// or "List[2] Pod default/x".
	Object   string
	Decision inject.Decision
}

func (r Report) String() string {
	s := fmt.Sprintf("document %d (%s): %s", r.Document, r.Object, r.Decision.Outcome)
	if r.Decision.Reason != "" && string(r.Decision.Reason) != string(r.Decision.Outcome) {
		s += " [" + string(r.Decision.Reason) + "]"
	}
	if r.Decision.Message != "" {
		s += ": " + r.Decision.Message
	}
	return s
}

// templatePaths says where each workload kind keeps its pod template.
var templatePaths = map[string][]string{
	"Deployment":            {"spec", "template"},
	"DaemonSet":             {"spec", "template"},
	"StatefulSet":           {"spec", "template"},
	"ReplicaSet":            {"spec", "template"},
	"ReplicationController": {"spec", "template"},
	"Job":                   {"spec", "template"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template"},
	"PodTemplate":           {"template"},
}

// Process reads multi-document YAML or JSON from r, transforms every pod it
// finds and writes the documents to w as YAML, separated by "---".
// Documents that do not change are written exactly as they were read.
// Malformed input stops processing with an error naming the document.
func Process(r io.Reader, w io.Writer, fn Transform) ([]Report, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var reports []Report
	written := 0
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return reports, fmt.Errorf("document %d: %w", doc, err)
		}
		if isBlank(raw) {
			doc--
			continue
		}
		js, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return reports, fmt.Errorf("document %d: invalid YAML: %w", doc, err)
		}
		out, docReports, err := processObject(js, fn, "")
		if err != nil {
			return reports, fmt.Errorf("document %d: %w", doc, err)
		}
		for i := range docReports {
			docReports[i].Document = doc
		}
		reports = append(reports, docReports...)
		if written > 0 {
			if _, err := io.WriteString(w, "---\n"); err != nil {
				return reports, err
			}
		}
		written++
		if out == nil {
			raw = bytes.TrimLeft(raw, "\n")
			if _, err := w.Write(ensureNewline(stripSeparator(raw))); err != nil {
				return reports, err
			}
			continue
		}
		y, err := yaml.JSONToYAML(out)
		if err != nil {
			return reports, fmt.Errorf("document %d: %w", doc, err)
		}
		if _, err := w.Write(y); err != nil {
			return reports, err
		}
	}
	return reports, nil
}

// processObject returns the changed object's JSON, or nil when unchanged.
func processObject(js []byte, fn Transform, label string) ([]byte, []Report, error) {
	var head struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Items []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return nil, nil, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	name := head.Kind + " " + head.Metadata.Name
	if head.Metadata.Namespace != "" {
		name = head.Kind + " " + head.Metadata.Namespace + "/" + head.Metadata.Name
	}
	if label != "" {
		name = label + " " + name
	}

	switch {
	case head.Kind == "Pod":
		return transformAt(js, nil, fn, name, head.Metadata.Namespace, "")
	case templatePaths[head.Kind] != nil:
		return transformAt(js, templatePaths[head.Kind], fn, name, head.Metadata.Namespace, head.Metadata.Name)
	case strings.HasSuffix(head.Kind, "List") && head.Items != nil:
		var reports []Report
		changed := false
		for i, item := range head.Items {
			out, rs, err := processObject(item, fn, fmt.Sprintf("%s[%d]", head.Kind, i))
			if err != nil {
				return nil, nil, fmt.Errorf("%s item %d: %w", head.Kind, i, err)
			}
			reports = append(reports, rs...)
			if out != nil {
				head.Items[i] = out
				changed = true
			}
		}
		if !changed {
			return nil, reports, nil
		}
		var whole map[string]json.RawMessage
		if err := json.Unmarshal(js, &whole); err != nil {
			return nil, nil, err
		}
		items, err := json.Marshal(head.Items)
		if err != nil {
			return nil, nil, err
		}
		whole["items"] = items
		out, err := json.Marshal(whole)
		return out, reports, err
	}
	return nil, nil, nil
}

// transformAt runs fn on the pod (or pod template) found at path in the
// object, and applies the resulting patch there.
func transformAt(js []byte, path []string, fn Transform, name, namespace, owner string) ([]byte, []Report, error) {
	var obj map[string]any
	if err := json.Unmarshal(js, &obj); err != nil {
		return nil, nil, err
	}
	var node any = obj
	for _, p := range path {
		m, ok := node.(map[string]any)
		if !ok || m[p] == nil {
			return nil, nil, fmt.Errorf("%s has no %s", name, strings.Join(path, "."))
		}
		node = m[p]
	}
	podJSON, err := json.Marshal(node)
	if err != nil {
		return nil, nil, err
	}
	var pod corev1.Pod
	if err := json.Unmarshal(podJSON, &pod); err != nil {
		return nil, nil, fmt.Errorf("%s: pod spec does not decode: %w", name, err)
	}
	if pod.Namespace == "" {
		pod.Namespace = namespace
	}
	if pod.Name == "" && pod.GenerateName == "" && owner != "" {
		// Lets the engine name the workload as the controller's pods will be.
		pod.GenerateName = owner + "-"
	}
	res := fn(&pod)
	report := Report{Object: name, Decision: res.Decision}
	if len(res.Patch) == 0 {
		return nil, []Report{report}, nil
	}
	prefix := ""
	for _, p := range path {
		prefix += "/" + p
	}
	ops := make([]map[string]any, 0, len(res.Patch))
	for _, op := range res.Patch {
		o := map[string]any{"op": op.Operation, "path": prefix + op.Path}
		if op.Operation != "remove" {
			o["value"] = op.Value
		}
		ops = append(ops, o)
	}
	patchJSON, err := json.Marshal(ops)
	if err != nil {
		return nil, nil, err
	}
	patch, err := jsonpatch.DecodePatch(patchJSON)
	if err != nil {
		return nil, nil, err
	}
	out, err := patch.Apply(js)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: applying the engine's patch: %w", name, err)
	}
	return out, []Report{report}, nil
}

func isBlank(b []byte) bool {
	for _, line := range bytes.Split(b, []byte("\n")) {
		t := bytes.TrimSpace(line)
		if len(t) > 0 && t[0] != '#' && !bytes.Equal(t, []byte("---")) {
			return false
		}
	}
	return true
}

func stripSeparator(b []byte) []byte {
	if bytes.HasPrefix(b, []byte("---\n")) {
		return b[4:]
	}
	return b
}

func ensureNewline(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] != '\n' {
		return append(b, '\n')
	}
	return b
}
