package nodeload

import (
	"strings"
	"testing"
	"time"

	"github.com/sds-injector/sds-injector/test/load/measure"
)

func latencies(d time.Duration, k int) []time.Duration {
	out := make([]time.Duration, k)
	for i := range out {
		out[i] = d
	}
	return out
}

// TestSummaryPairsRounds: each round's run with the webhook is divided by
// the same round's run without it (not by another round's), the warm-up
// (round 0) and other rates are left out, and min / median / max and the
// verdict follow.
func TestSummaryPairsRounds(t *testing.T) {
	var samples []sample
	wh := measure.Histogram{Buckets: map[float64]float64{0.005: 90, 0.025: 100}, Count: 100}
	for round, base := range map[int]time.Duration{0: time.Second, 1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 40 * time.Millisecond} {
		// Ratios 1.1, 1.5 and 2.0 in rounds 1, 2 and 3.
		factor := map[int]float64{0: 9, 1: 1.1, 2: 1.5, 3: 2.0}[round]
		samples = append(samples,
			sample{Round: round, Rate: 50, With: false, Run: measure.Run{Latencies: latencies(base, 100), Elapsed: 2 * time.Second}},
			sample{Round: round, Rate: 50, With: true, Webhook: wh, Run: measure.Run{Latencies: latencies(time.Duration(float64(base)*factor), 100), Elapsed: 2 * time.Second}},
			sample{Round: round, Rate: 50, Skip: true, Webhook: wh, Run: measure.Run{Latencies: latencies(time.Duration(float64(base)*1.25), 100), Elapsed: 2 * time.Second}},
			sample{Round: round, Rate: 200, With: true, Run: measure.Run{Latencies: latencies(time.Hour, 1), Elapsed: time.Second}})
	}
	s := summarize(samples, 50)
	if s.rounds != 3 {
		t.Fatalf("%d rounds paired, want 3", s.rounds)
	}
	if s.p50Ratio.min < 1.09 || s.p50Ratio.min > 1.11 || s.p50Ratio.med != 1.5 || s.p50Ratio.max != 2.0 {
		t.Errorf("p50 ratio %+v, want 1.1 / 1.5 / 2.0", s.p50Ratio)
	}
	if s.p50Without.med != 0.02 || s.rateWith.med != 50 || s.created != 900 || s.calls != 300 {
		t.Errorf("p50 without median %v s, rate with %v/s, created %v, calls %v; want 0.02, 50, 900, 300", s.p50Without.med, s.rateWith.med, s.created, s.calls)
	}
	if s.skipRounds != 3 || s.p50SkipRatio.min != 1.25 || s.p50SkipRatio.max != 1.25 || s.p50Skip.med != 0.025 {
		t.Errorf("skip runs: %d rounds, p50 ratio %+v, p50 %+v; want 3, 1.25, 0.025 s", s.skipRounds, s.p50SkipRatio, s.p50Skip)
	}
	if s.under5.med != 0.9 {
		t.Errorf("fraction under 5 ms %v, want 0.9", s.under5.med)
	}
	out := report(samples, []int{50}, 20*time.Second)
	for _, want := range []string{"- 50/s: p50 ×1.50 (not met), p99 ×1.50 (not met)", "| 50/s | 3 | 10.0 / **20.0** / 40.0 |", "90.0 / **90.0** / 90.0", "- 50/s (3 rounds): p50 ×1.25 / **1.25** / 1.25"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "| 0 | 50/s") {
		t.Errorf("the warm-up is reported as a run:\n%s", out)
	}
}

func TestParseRates(t *testing.T) {
	if r, err := parseRates("50, 200"); err != nil || len(r) != 2 || r[0] != 50 || r[1] != 200 {
		t.Errorf("parseRates(50, 200) = %v, %v", r, err)
	}
	for _, bad := range []string{"", "0", "50,x"} {
		if _, err := parseRates(bad); err == nil {
			t.Errorf("parseRates(%q) accepted", bad)
		}
	}
}
