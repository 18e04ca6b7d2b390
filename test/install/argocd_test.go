package install

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/itchyny/gojq"
	"sigs.k8s.io/yaml"
)

// TestArgoCDIgnoreDifferences runs the jq path expressions docs/install.md
// gives for Argo CD's ignoreDifferences with gojq (the jq implementation
// Argo CD evaluates jqPathExpressions with) against every shipped webhook
// configuration, with a caBundle set as the injector or cainjector sets it:
// they must select each webhook's caBundle and nothing else.
func TestArgoCDIgnoreDifferences(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs", "install.md"))
	if err != nil {
		t.Fatal(err)
	}
	var ignore struct {
		IgnoreDifferences []struct {
			Group             string   `json:"group"`
			Kind              string   `json:"kind"`
			JQPathExpressions []string `json:"jqPathExpressions"`
		} `json:"ignoreDifferences"`
	}
	for _, block := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(doc), -1) {
		if strings.Contains(block[1], "jqPathExpressions") {
			if err := yaml.UnmarshalStrict([]byte(block[1]), &ignore); err != nil {
				t.Fatalf("the Argo CD snippet does not parse: %v", err)
			}
		}
	}
	if len(ignore.IgnoreDifferences) != 1 {
		t.Fatalf("want one ignoreDifferences entry in docs/install.md, found %d", len(ignore.IgnoreDifferences))
	}
	entry := ignore.IgnoreDifferences[0]
	if entry.Group != "admissionregistration.k8s.io" || entry.Kind != "MutatingWebhookConfiguration" || len(entry.JQPathExpressions) == 0 {
		t.Fatalf("unexpected entry %+v", entry)
	}
	files, err := filepath.Glob(filepath.Join(repoRoot, "deploy", "webhook", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no shipped configurations: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var mwc map[string]any
		if err := yaml.Unmarshal(data, &mwc); err != nil {
			t.Fatal(err)
		}
		webhooks, _ := mwc["webhooks"].([]any)
		if len(webhooks) == 0 {
			t.Fatalf("%s: no webhooks", f)
		}
		for i, w := range webhooks {
			cc := w.(map[string]any)["clientConfig"].(map[string]any)
			cc["caBundle"] = "CA-" + string(rune('a'+i))
		}
		var got []any
		for _, expr := range entry.JQPathExpressions {
			q, err := gojq.Parse(expr)
			if err != nil {
				t.Fatalf("%q is not a jq expression: %v", expr, err)
			}
			// Argo CD removes what path(expr) selects.
			paths, err := gojq.Parse("[path(" + expr + ")]")
			if err != nil {
				t.Fatal(err)
			}
			it := paths.Run(mwc)
			for v, ok := it.Next(); ok; v, ok = it.Next() {
				if err, isErr := v.(error); isErr {
					t.Fatalf("%s: %q: %v", filepath.Base(f), expr, err)
				}
				for _, p := range v.([]any) {
					ps := p.([]any)
					if len(ps) != 4 || ps[0] != "webhooks" || ps[2] != "clientConfig" || ps[3] != "caBundle" {
						t.Errorf("%s: %q selects %v, which is not a webhook's caBundle", filepath.Base(f), expr, ps)
					}
				}
			}
			vals := q.Run(mwc)
			for v, ok := vals.Next(); ok; v, ok = vals.Next() {
				got = append(got, v)
			}
		}
		if len(got) != len(webhooks) {
			t.Errorf("%s: the expressions select %d value(s) %v, want the %d caBundles", filepath.Base(f), len(got), got, len(webhooks))
		}
		for i := range webhooks {
			want := "CA-" + string(rune('a'+i))
			if i < len(got) && got[i] != want {
				t.Errorf("%s: value %d is %v, want %s", filepath.Base(f), i, got[i], want)
			}
		}
	}
}
