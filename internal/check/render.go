package check

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Write renders a report: format "json" (the Report as JSON) or "text".
func Write(w io.Writer, r *Report, format string) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "sds-injector check: cluster %s, injector namespace %s\n\n", r.Cluster, r.Namespace)
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "%-4s  %-22s  %s\n", strings.ToUpper(string(c.Status)), c.Name, c.Message)
		for _, d := range c.Details {
			fmt.Fprintf(&b, "      - %s\n", d)
		}
		for _, f := range c.Fix {
			fmt.Fprintf(&b, "      fix: %s\n", f)
		}
		if c.Hint != "" {
			fmt.Fprintf(&b, "      hint: %s\n", c.Hint)
		}
	}
	fmt.Fprintf(&b, "\n%d passed, %d warning(s), %d failed, %d skipped\n",
		r.Summary[string(StatusPass)], r.Summary[string(StatusWarn)], r.Summary[string(StatusFail)], r.Summary[string(StatusSkip)])
	_, err := io.WriteString(w, b.String())
	return err
}

// Describe lists the checks (ID and description) for the help text.
func Describe() string {
	var b strings.Builder
	for _, c := range Ordered(All()) {
		fmt.Fprintf(&b, "  %-22s  %s\n", c.ID, c.Description)
	}
	return b.String()
}
