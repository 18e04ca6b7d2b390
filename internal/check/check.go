// Package check is `sds-injector check` as a library: every check is a
// value (Check) with its ID, category, description, hint and severity and a
// run function over a shared Env (API client, configuration, discovered
// Istio). Run executes them category by category and returns a Report;
// Write renders it (text or JSON) apart from running. The CLI
// (cmd/sds-injector) only parses flags and calls these.
//
// It lives under internal/ because it is the CLI's code, not part of the
// engine's or the webhook's API, and the suites under test/ can still
// import it.
package check

import (
	"context"
	"fmt"
	"slices"
)

// Status of a check.
type Status string

const (
	StatusPass Status = "pass"
	StatusWarn Status = "warn"
	StatusFail Status = "fail"
	StatusSkip Status = "skip"
)

// Severity says what a failure does.
type Severity string

const (
	// Fatal: a failure skips every check that Needs this one.
	Fatal Severity = "fatal"
	// Error: a failure fails the run; the checks that need this one
	// still run (they see what this one found).
	Error Severity = "error"
)

// Category groups checks; categories run in the order of Categories.
type Category string

const (
	CategoryConfiguration Category = "configuration"
	CategoryWebhook       Category = "webhook"
	CategoryIstio         Category = "istio"
	CategoryGateways      Category = "gateways"
)

// Categories is the order in which categories run and are reported.
var Categories = []Category{CategoryConfiguration, CategoryWebhook, CategoryIstio, CategoryGateways}

// Check is one check, as data.
type Check struct {
	ID       string
	Category Category
	// Description says what the check verifies (one line, for the help
	// text and docs/check.md).
	Description string
	// Hint says what to do when the check warns or fails, beyond the
	// specific fixes the check reports.
	Hint     string
	Severity Severity
	// Needs lists checks (IDs, earlier in the run order) whose fatal
	// failure skips this one.
	Needs []string
	// Applies reports whether the check applies to this installation
	// (e.g. only with istio: auto); nil: always. A check that does not
	// apply is not reported.
	Applies func(*Env) bool
	// Run performs the check; the runner fills in the name and hint.
	Run func(context.Context, *Env) Result
}

// Result is one check's outcome.
type Result struct {
	Name     string   `json:"name"`
	Category Category `json:"category"`
	Status   Status   `json:"status"`
	Message  string   `json:"message"`
	Details  []string `json:"details,omitempty"`
	// Fix says what to do about a warning or failure.
	Fix []string `json:"fix,omitempty"`
	// Hint is the check's general advice, given with a warning or failure.
	Hint string `json:"hint,omitempty"`
	// Pods lists the gateway pods the gateway-pods check is about.
	Pods []PodFinding `json:"pods,omitempty"`
}

// PodFinding is a running gateway pod that lacks the agent (or whose
// agent is stale or unregistered).
type PodFinding struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Owner is the workload to restart, e.g. "deployment/gateway-proxy".
	Owner   string `json:"owner,omitempty"`
	Profile string `json:"profile,omitempty"`
	// Problem is "not-injected" (it would be injected if created now) or
	// the engine's reason why it cannot be injected.
	Problem string `json:"problem"`
	Message string `json:"message,omitempty"`
	Command string `json:"command,omitempty"`
}

// Report is the outcome of a run.
type Report struct {
	Cluster   string         `json:"cluster"`
	Namespace string         `json:"namespace"`
	OK        bool           `json:"ok"`
	Summary   map[string]int `json:"summary"`
	Checks    []Result       `json:"checks"`
}

// Validate reports inconsistencies in a list of checks: duplicate or empty
// IDs, unknown categories or severities, Needs that name no earlier check.
func Validate(checks []Check) error {
	seen := map[string]bool{}
	for _, cat := range Categories {
		for _, c := range checks {
			if c.Category != cat {
				continue
			}
			switch {
			case c.ID == "" || c.Run == nil || c.Description == "":
				return fmt.Errorf("check %q: ID, Description and Run are required", c.ID)
			case seen[c.ID]:
				return fmt.Errorf("check %q: duplicate ID", c.ID)
			case c.Severity != Fatal && c.Severity != Error:
				return fmt.Errorf("check %q: severity %q: use %q or %q", c.ID, c.Severity, Fatal, Error)
			}
			for _, n := range c.Needs {
				if !seen[n] {
					return fmt.Errorf("check %q needs %q, which does not run before it", c.ID, n)
				}
			}
			seen[c.ID] = true
		}
	}
	for _, c := range checks {
		if !slices.Contains(Categories, c.Category) {
			return fmt.Errorf("check %q: unknown category %q", c.ID, c.Category)
		}
	}
	return nil
}

// Ordered returns the checks in run order: by category, then as listed.
func Ordered(checks []Check) []Check {
	var out []Check
	for _, cat := range Categories {
		for _, c := range checks {
			if c.Category == cat {
				out = append(out, c)
			}
		}
	}
	return out
}

// RunChecks runs the checks in order against env.
func RunChecks(ctx context.Context, checks []Check, env *Env) *Report {
	r := &Report{Namespace: env.opts.Namespace, Summary: map[string]int{}}
	fatal := map[string]bool{} // IDs of fatal checks that failed or were skipped
	for _, c := range Ordered(checks) {
		if c.Applies != nil && !c.Applies(env) {
			continue
		}
		var res Result
		if i := slices.IndexFunc(c.Needs, func(n string) bool { return fatal[n] }); i >= 0 {
			res = Result{Status: StatusSkip, Message: fmt.Sprintf("needs %s, which did not pass", c.Needs[i])}
		} else {
			res = c.Run(ctx, env)
		}
		res.Name, res.Category = c.ID, c.Category
		if res.Status == StatusWarn || res.Status == StatusFail {
			res.Hint = c.Hint
		}
		if c.Severity == Fatal && (res.Status == StatusFail || res.Status == StatusSkip) {
			fatal[c.ID] = true
		}
		r.Checks = append(r.Checks, res)
	}
	r.OK = true
	for _, c := range r.Checks {
		r.Summary[string(c.Status)]++
		if c.Status == StatusFail {
			r.OK = false
		}
	}
	return r
}
