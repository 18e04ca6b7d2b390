package istio

import (
	"strings"
	"testing"

	"github.com/go-logr/logr/funcr"
)

// The stale-agent line is logged when the set of stale pods changes, not
// after every scan (scans follow every discovered change; it was once
// logged 38 times in three minutes).
func TestStaleAgentsLoggedOnChange(t *testing.T) {
	var lines []string
	d := &Discovery{opts: Options{Logger: funcr.New(func(_, args string) { lines = append(lines, args) }, funcr.Options{})}}
	a := StaleAgent{Namespace: "gw", Name: "a"}
	b := StaleAgent{Namespace: "gw", Name: "b"}
	steps := []struct {
		name  string
		stale []StaleAgent
		logs  int // lines logged after this scan
		want  string
	}{
		{"nothing stale", nil, 0, ""},
		{"one pod goes stale", []StaleAgent{a}, 1, `"pods"=["gw/a"]`},
		{"same set again", []StaleAgent{a}, 1, ""},
		{"same set, many scans", []StaleAgent{a}, 1, ""},
		{"another pod", []StaleAgent{a, b}, 2, `"pods"=["gw/a" "gw/b"]`},
		{"all restarted", nil, 3, "matches the installed Istio again"},
		{"still none", nil, 3, ""},
	}
	for _, s := range steps {
		d.staleMu.Lock()
		d.stale = s.stale
		d.staleMu.Unlock()
		d.logStaleChange()
		if len(lines) != s.logs {
			t.Fatalf("%s: %d lines logged, want %d: %q", s.name, len(lines), s.logs, lines)
		}
		if s.want != "" && !strings.Contains(lines[len(lines)-1], s.want) {
			t.Errorf("%s: last line %q lacks %s", s.name, lines[len(lines)-1], s.want)
		}
	}
}
