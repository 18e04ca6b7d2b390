package flavors

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sds-injector/sds-injector/test/istiod"
	"github.com/sds-injector/sds-injector/test/node"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// expectedUnsupported marks a case that cannot work with the Istio release
// under test (test/istio-releases/run.sh; never in make test, which runs
// the engine's default release); the skip message after it says why.
const expectedUnsupported = "EXPECTED-UNSUPPORTED"

// Machine-readable results for test/istio-releases/run.sh: with
// SDS_INJECTOR_FLAVOR_RESULTS set, every flavor case appends one
// tab-separated line: release, flavor, gateway, placement, result (pass,
// fail, unsupported, skip), agent start → first verified certificate in ms
// ("-" if none), notes.
const resultsEnv = "SDS_INJECTOR_FLAVOR_RESULTS"

// caseReport is the results line of one case, written when it ends.
type caseReport struct {
	notes       []string
	unsupported bool
	firstCert   time.Duration
}

func (r *caseReport) note(s string) { r.notes = append(r.notes, s) }

// reportCase registers the results line of t's case; call it before
// anything that can end the case so that it runs last.
func reportCase(t *testing.T, flavor inject.Flavor, gw gateway, placement string) *caseReport {
	r := &caseReport{}
	file := os.Getenv(resultsEnv)
	if file == "" {
		return r
	}
	t.Cleanup(func() {
		result := "pass"
		switch {
		case t.Failed():
			result = "fail"
		case t.Skipped() && r.unsupported:
			result = "unsupported"
		case t.Skipped():
			result = "skip"
		}
		ms := "-"
		if r.firstCert > 0 {
			ms = fmt.Sprintf("%.0f", float64(r.firstCert)/float64(time.Millisecond))
		}
		release := istiod.ReleaseUnderTest()
		if release == "" {
			release = ist.Release
		}
		clean := strings.NewReplacer("\t", " ", "\n", " ")
		line := strings.Join([]string{release, string(flavor), gw.name, placement, result, ms,
			clean.Replace(strings.Join(r.notes, "; "))}, "\t") + "\n"
		f, err := os.OpenFile(file, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Errorf("results file: %v", err)
			return
		}
		defer f.Close()
		if _, err := f.WriteString(line); err != nil {
			t.Errorf("results file: %v", err)
		}
	})
	return r
}

// hasError reports whether a gateway-checker error or stream-end event
// mentions s.
func hasError(evs []node.CheckerEvent, s string) bool {
	for _, e := range evs {
		if (e.Event == "error" || e.Event == "stream-end") && strings.Contains(e.Error, s) {
			return true
		}
	}
	return false
}
