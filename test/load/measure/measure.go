// Package measure holds what the load measurements share (go run
// ./test/load and the real-node benchmark in test/nodeload): calls made at
// a fixed rate in an open loop, latency percentiles, the example pods, and
// Prometheus histograms read from a /metrics page, subtracted and
// estimated by bucket interpolation.
package measure

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// ExamplePod reads a pod of docs/examples (strictly: an unknown field is
// an error) from the repository at root.
func ExamplePod(root, name string) (*corev1.Pod, error) {
	data, err := os.ReadFile(filepath.Join(root, "docs", "examples", name))
	if err != nil {
		return nil, err
	}
	var pod corev1.Pod
	return &pod, yaml.UnmarshalStrict(data, &pod)
}

// Run is the outcome of Paced.
type Run struct {
	// Latencies are those of the calls that succeeded, in completion order.
	Latencies []time.Duration
	// Errors are the failed calls' errors.
	Errors []error
	// Sent is the number of calls started.
	Sent int
	// Elapsed runs from the first call's start to the last call's end.
	Elapsed time.Duration
}

// Rate is the achieved rate: successful calls per second of Elapsed.
func (r Run) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(len(r.Latencies)) / r.Elapsed.Seconds()
}

// Paced calls fn rate times a second for d, in an open loop: each call
// starts at its tick in a goroutine of its own, so a slow answer does not
// delay the calls after it (no coordinated omission). It waits for every
// call to return. fn's argument is the call's index.
func Paced(ctx context.Context, rate int, d time.Duration, fn func(ctx context.Context, i int) error) Run {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		run  Run
		last time.Time
	)
	n := int(d.Seconds() * float64(rate))
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	first := time.Now()
	for i := 0; i < n; i++ {
		if i > 0 {
			<-tick.C
		}
		run.Sent++
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			start := time.Now()
			err := fn(ctx, i)
			end := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if end.After(last) {
				last = end
			}
			if err != nil {
				run.Errors = append(run.Errors, err)
				return
			}
			run.Latencies = append(run.Latencies, end.Sub(start))
		}(i)
	}
	wg.Wait()
	run.Elapsed = last.Sub(first)
	return run
}

// Percentile is the q-quantile of d (nearest rank), rounded to 10 µs; 0
// for no samples.
func Percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(math.Min(float64(len(s)-1), q*float64(len(s))))].Round(10 * time.Microsecond)
}

// ParseMetrics parses a Prometheus text exposition (a /metrics page).
func ParseMetrics(body []byte) (map[string]*dto.MetricFamily, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(strings.NewReader(string(body)))
}

// Histogram is a cumulative Prometheus histogram: Buckets maps each
// upper bound (le, in the metric's unit) to the count of observations at
// or below it; +Inf is Count.
type Histogram struct {
	Buckets map[float64]float64
	Count   float64
	Sum     float64
}

// HistogramOf sums the series of the histogram family name whose labels
// include every label of match (a zero Histogram if there is none).
func HistogramOf(families map[string]*dto.MetricFamily, name string, match map[string]string) Histogram {
	h := Histogram{Buckets: map[float64]float64{}}
	for _, m := range families[name].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		ok := true
		for k, v := range match {
			if got[k] != v {
				ok = false
			}
		}
		if !ok || m.GetHistogram() == nil {
			continue
		}
		mh := m.GetHistogram()
		h.Count += float64(mh.GetSampleCount())
		h.Sum += mh.GetSampleSum()
		for _, b := range mh.GetBucket() {
			if !math.IsInf(b.GetUpperBound(), 1) {
				h.Buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
			}
		}
	}
	return h
}

// Add is h and o together (the same buckets: two pods' histograms).
func (h Histogram) Add(o Histogram) Histogram {
	out := Histogram{Buckets: map[float64]float64{}, Count: h.Count + o.Count, Sum: h.Sum + o.Sum}
	for le, v := range h.Buckets {
		out.Buckets[le] = v
	}
	for le, v := range o.Buckets {
		out.Buckets[le] += v
	}
	return out
}

// Minus is the observations of h not in o (o scraped earlier).
func (h Histogram) Minus(o Histogram) Histogram {
	out := Histogram{Buckets: map[float64]float64{}, Count: h.Count - o.Count, Sum: h.Sum - o.Sum}
	for le, v := range h.Buckets {
		out.Buckets[le] = v - o.Buckets[le]
	}
	return out
}

// FractionBelow is the fraction of observations in the buckets up to le
// (le must be a bucket bound); 0 for none.
func (h Histogram) FractionBelow(le float64) float64 {
	if h.Count == 0 {
		return 0
	}
	return h.Buckets[le] / h.Count
}

func (h Histogram) bounds() []float64 {
	les := make([]float64, 0, len(h.Buckets))
	for le := range h.Buckets {
		les = append(les, le)
	}
	sort.Float64s(les)
	return les
}

// QuantileUpper is the upper bound of the bucket holding quantile q, for a
// histogram in seconds.
func (h Histogram) QuantileUpper(q float64) string {
	for _, le := range h.bounds() {
		if h.Count > 0 && h.Buckets[le]/h.Count >= q {
			return (time.Duration(le * float64(time.Second))).String()
		}
	}
	return "+Inf"
}

// Quantile estimates the q-quantile as Prometheus's histogram_quantile
// does: linear interpolation inside the bucket that holds rank q×Count,
// from the bucket's lower bound (0 for the first bucket) to its upper
// bound. A quantile in the +Inf bucket is reported as the largest finite
// bound. NaN for an empty histogram.
func (h Histogram) Quantile(q float64) float64 {
	if h.Count <= 0 {
		return math.NaN()
	}
	rank := q * h.Count
	lower, below := 0.0, 0.0
	les := h.bounds()
	for _, le := range les {
		c := h.Buckets[le]
		if c >= rank {
			if c == below {
				return le
			}
			return lower + (le-lower)*(rank-below)/(c-below)
		}
		lower, below = le, c
	}
	if len(les) == 0 {
		return math.NaN()
	}
	return les[len(les)-1]
}
