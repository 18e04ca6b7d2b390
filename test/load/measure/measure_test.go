package measure

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"
)

const page = `# TYPE apiserver_admission_webhook_admission_duration_seconds histogram
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a",operation="CREATE",rejected="false",type="admit",le="0.005"} 60
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a",operation="CREATE",rejected="false",type="admit",le="0.025"} 90
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a",operation="CREATE",rejected="false",type="admit",le="0.1"} 100
apiserver_admission_webhook_admission_duration_seconds_bucket{name="a",operation="CREATE",rejected="false",type="admit",le="+Inf"} 100
apiserver_admission_webhook_admission_duration_seconds_sum{name="a",operation="CREATE",rejected="false",type="admit"} 0.5
apiserver_admission_webhook_admission_duration_seconds_count{name="a",operation="CREATE",rejected="false",type="admit"} 100
apiserver_admission_webhook_admission_duration_seconds_bucket{name="b",operation="CREATE",rejected="false",type="admit",le="0.005"} 7
apiserver_admission_webhook_admission_duration_seconds_bucket{name="b",operation="CREATE",rejected="false",type="admit",le="0.025"} 7
apiserver_admission_webhook_admission_duration_seconds_bucket{name="b",operation="CREATE",rejected="false",type="admit",le="0.1"} 7
apiserver_admission_webhook_admission_duration_seconds_bucket{name="b",operation="CREATE",rejected="false",type="admit",le="+Inf"} 9
apiserver_admission_webhook_admission_duration_seconds_sum{name="b",operation="CREATE",rejected="false",type="admit"} 3
apiserver_admission_webhook_admission_duration_seconds_count{name="b",operation="CREATE",rejected="false",type="admit"} 9
`

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// TestHistogramQuantile: the series are selected by label and summed, and
// quantiles are interpolated inside buckets as histogram_quantile does.
func TestHistogramQuantile(t *testing.T) {
	fams, err := ParseMetrics([]byte(page))
	if err != nil {
		t.Fatal(err)
	}
	const metric = "apiserver_admission_webhook_admission_duration_seconds"
	a := HistogramOf(fams, metric, map[string]string{"name": "a", "type": "admit"})
	if a.Count != 100 || a.Buckets[0.025] != 90 {
		t.Fatalf("histogram a: %+v", a)
	}
	// Rank 50 of 60 in [0, 5 ms]; rank 75 is half-way through [5, 25 ms];
	// rank 99 is 9/10 through [25, 100 ms].
	for q, want := range map[float64]float64{0.5: 0.005 * 50 / 60, 0.75: 0.015, 0.99: 0.025 + 0.075*0.9} {
		if got := a.Quantile(q); !near(got, want) {
			t.Errorf("a.Quantile(%v) = %v, want %v", q, got, want)
		}
	}
	if got := a.FractionBelow(0.005); got != 0.6 {
		t.Errorf("a.FractionBelow(5 ms) = %v", got)
	}
	all := HistogramOf(fams, metric, nil)
	if all.Count != 109 || all.Buckets[0.005] != 67 {
		t.Fatalf("both series: %+v", all)
	}
	// b's p99 is in +Inf: the largest finite bound.
	if got := HistogramOf(fams, metric, map[string]string{"name": "b"}).Quantile(0.99); got != 0.1 {
		t.Errorf("b.Quantile(0.99) = %v, want 0.1 (the largest finite bound)", got)
	}
	d := all.Minus(a)
	if d.Count != 9 || d.Buckets[0.005] != 7 || !near(d.Sum, 3) {
		t.Errorf("all - a = %+v, want b", d)
	}
	if s := a.Add(d); s.Count != all.Count || s.Buckets[0.1] != all.Buckets[0.1] {
		t.Errorf("a + b = %+v, want %+v", s, all)
	}
	if !math.IsNaN((Histogram{}).Quantile(0.5)) {
		t.Error("an empty histogram has a quantile")
	}
}

func TestPacedCountsAndErrors(t *testing.T) {
	fail := errors.New("odd")
	run := Paced(context.Background(), 200, 100*time.Millisecond, func(_ context.Context, i int) error {
		if i%2 == 1 {
			return fail
		}
		return nil
	})
	if run.Sent != 20 || len(run.Latencies) != 10 || len(run.Errors) != 10 {
		t.Errorf("sent %d, ok %d, errors %d; want 20, 10, 10", run.Sent, len(run.Latencies), len(run.Errors))
	}
	// 20 calls 5 ms apart span about 95 ms at least.
	if run.Elapsed < 90*time.Millisecond {
		t.Errorf("elapsed %s for 20 calls at 200/s", run.Elapsed)
	}
}
