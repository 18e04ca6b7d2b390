package check

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

func TestAllChecksValid(t *testing.T) {
	if err := Validate(All()); err != nil {
		t.Fatal(err)
	}
	for _, c := range All() {
		if c.Hint == "" {
			t.Errorf("check %s has no hint", c.ID)
		}
	}
}

func TestValidateRejects(t *testing.T) {
	run := func(context.Context, *Env) Result { return Result{Status: StatusPass} }
	ok := Check{ID: "a", Category: CategoryConfiguration, Description: "d", Severity: Fatal, Run: run}
	cases := map[string][]Check{
		"duplicate ID":     {ok, ok},
		"need not before":  {{ID: "b", Category: CategoryConfiguration, Description: "d", Severity: Error, Needs: []string{"a"}, Run: run}, ok},
		"unknown category": {{ID: "b", Category: "x", Description: "d", Severity: Error, Run: run}},
		"unknown severity": {{ID: "b", Category: CategoryWebhook, Description: "d", Severity: "warning", Run: run}},
		"missing run":      {{ID: "b", Category: CategoryWebhook, Description: "d", Severity: Error}},
		"missing describe": {{ID: "b", Category: CategoryWebhook, Severity: Error, Run: run}},
		"need of a later ": {{ID: "b", Category: CategoryConfiguration, Description: "d", Severity: Error, Needs: []string{"c"}, Run: run}, {ID: "c", Category: CategoryWebhook, Description: "d", Severity: Error, Run: run}},
	}
	for name, checks := range cases {
		if err := Validate(checks); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := Validate([]Check{ok}); err != nil {
		t.Error(err)
	}
}

// Categories run in order; a fatal failure skips the checks that need it
// (not the others); a check that does not apply is not reported; hints go
// with warnings and failures only.
func TestRunnerOrderFatalAndApplies(t *testing.T) {
	var ran []string
	mk := func(id string, cat Category, sev Severity, status Status, needs ...string) Check {
		return Check{ID: id, Category: cat, Severity: sev, Needs: needs, Description: id, Hint: "hint " + id,
			Run: func(context.Context, *Env) Result { ran = append(ran, id); return Result{Status: status, Message: id} }}
	}
	checks := []Check{
		mk("pods", CategoryGateways, Error, StatusPass, "config"),
		mk("webhook", CategoryWebhook, Error, StatusWarn),
		mk("config", CategoryConfiguration, Fatal, StatusFail),
		mk("free", CategoryGateways, Error, StatusPass),
		{ID: "never", Category: CategoryIstio, Severity: Error, Description: "n", Applies: func(*Env) bool { return false },
			Run: func(context.Context, *Env) Result { t.Error("a check that does not apply ran"); return Result{} }},
	}
	if err := Validate(checks); err != nil {
		t.Fatal(err)
	}
	r := RunChecks(context.Background(), checks, NewEnv(nil, Options{Namespace: "ns"}))
	var got []string
	for _, c := range r.Checks {
		got = append(got, c.Name+"="+string(c.Status))
	}
	if strings.Join(got, " ") != "config=fail webhook=warn pods=skip free=pass" {
		t.Errorf("results %v", got)
	}
	if strings.Join(ran, " ") != "config webhook free" {
		t.Errorf("ran %v", ran)
	}
	if r.OK || r.Summary["fail"] != 1 || r.Summary["skip"] != 1 {
		t.Errorf("report %+v", r)
	}
	if r.Checks[0].Hint != "hint config" || r.Checks[1].Hint != "hint webhook" || r.Checks[3].Hint != "" {
		t.Errorf("hints %+v", r.Checks)
	}
	if !strings.Contains(r.Checks[2].Message, "needs config") {
		t.Errorf("skip message %q", r.Checks[2].Message)
	}
	var text, js bytes.Buffer
	if err := Write(&text, r, "text"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "hint: hint config") || !strings.Contains(text.String(), "1 passed, 1 warning(s), 1 failed, 1 skipped") {
		t.Errorf("text:\n%s", text.String())
	}
	if err := Write(&js, r, "json"); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Checks) != 4 || back.Checks[0].Category != CategoryConfiguration {
		t.Errorf("json %v %s", err, js.String())
	}
}

// docs/check.md lists every check, in run order, with its category and
// severity.
func TestDocsListEveryCheck(t *testing.T) {
	doc, err := os.ReadFile("../../docs/check.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z-]+)` \\| ([a-z]+) \\| ([a-z]+) \\|")
	var got, want []string
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		got = append(got, m[1]+" "+m[2]+" "+m[3])
	}
	for _, c := range Ordered(All()) {
		want = append(want, c.ID+" "+string(c.Category)+" "+string(c.Severity))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("docs/check.md's table of checks:\n%s\nwant (ID, category, severity, in run order):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
