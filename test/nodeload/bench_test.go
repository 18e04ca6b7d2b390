package nodeload

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/sds-injector/sds-injector/test/chartinstall"
	"github.com/sds-injector/sds-injector/test/load/measure"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

var (
	ratesFlag    = flag.String("nodeload.rates", "50,200", "pod creations per second, comma-separated; each is measured with and without the webhook in every round")
	durationFlag = flag.Duration("nodeload.duration", 20*time.Second, "length of each measured run")
	outFlag      = flag.String("nodeload.out", "", "also write the Markdown report to this file")
)

const (
	admissionMetric = "apiserver_admission_webhook_admission_duration_seconds"
	requestMetric   = "apiserver_request_duration_seconds"
	oursMetric      = "sds_injector_admission_duration_seconds"
	// namespaceWebhook is the chart's namespace-mode webhook (its name in
	// the MutatingWebhookConfiguration), the one nsWith selects.
	namespaceWebhook = "namespace.sds-injector.io"
	// metricsPort is the chart's metrics.port (plain HTTP).
	metricsPort = "8080"
)

// sample is one measured run: pods created at Rate for the run's duration
// in nsWith (With) or nsWithout.
type sample struct {
	Round int
	Rate  int
	With  bool
	// Skip (with With false): the pod is in nsWith but opts out with the
	// annotation sds-injector.io/inject=false, which no selector sees: the
	// apiserver calls the webhook and it answers "skip" without a patch —
	// what any webhook call costs the apiserver.
	Skip bool
	Run  measure.Run
	// Wrong counts created pods whose injection was not what the
	// namespace asks for (not injected in nsWith, injected in nsWithout).
	Wrong int
	// Webhook is the apiserver's admission latency histogram of the
	// namespace-mode webhook over the run; Calls counts the apiserver's
	// calls to any webhook.
	Webhook measure.Histogram
	Calls   float64
	// Post is the apiserver's own request latency of pod creations.
	Post measure.Histogram
	// Ours is the injector pods' sds_injector_admission_duration_seconds
	// over the run (both pods).
	Ours measure.Histogram
}

func (s sample) p(q float64) time.Duration { return measure.Percentile(s.Run.Latencies, q) }

// BenchmarkPodCreation creates the Gloo gateway pod through the apiserver
// at each rate of -nodeload.rates for -nodeload.duration, with the webhook
// (nsWith) and without (nsWithout), the two alternating in order from one
// round to the next; one b.Loop iteration is one round. It prints a
// Markdown report and reports the median ratios (with / without) of the
// client-side creation latency's p50 and p99 per rate.
func BenchmarkPodCreation(b *testing.B) {
	if testing.Short() {
		b.Skip("-short: starts a real node (root; kubelet, containerd, control plane built on first use) and loads it for minutes; run make bench-node")
	}
	if n == nil {
		b.Fatal("no node: TestMain did not start one")
	}
	rates, err := parseRates(*ratesFlag)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	cfg := rest.CopyConfig(n.CP.Config)
	cfg.QPS, cfg.Burst = 5000, 5000
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	m := &meter{cs: cs}
	header := machine()
	// Warm-up (not recorded): connections, the webhook's caches, the
	// apiserver's and etcd's first allocations.
	for _, a := range arms {
		if _, err := m.measure(ctx, 0, rates[0], 3*time.Second, a); err != nil {
			b.Fatal(err)
		}
	}
	var samples []sample
	for round := 1; b.Loop(); round++ {
		for _, rate := range rates {
			// The arms rotate from round to round, so that none always
			// runs first or after another.
			for i := range arms {
				a := arms[(i+round)%len(arms)]
				s, err := m.measure(ctx, round, rate, *durationFlag, a)
				if err != nil {
					b.Fatal(err)
				}
				samples = append(samples, s)
				fmt.Fprintf(os.Stderr, "nodeload: round %d, %d/s, %s: %d created (%.1f/s), %d errors, p50 %s, p99 %s, webhook calls %.0f\n",
					round, rate, a, len(s.Run.Latencies), s.Run.Rate(), len(s.Run.Errors)+s.Wrong, s.p(0.5), s.p(0.99), s.Calls)
			}
		}
	}
	out := header + report(samples, rates, *durationFlag)
	fmt.Print(out)
	if *outFlag != "" {
		if err := os.WriteFile(*outFlag, []byte(out), 0o644); err != nil {
			b.Error(err)
		}
	}
	for _, rate := range rates {
		sum := summarize(samples, rate)
		b.ReportMetric(sum.p50Ratio.med, fmt.Sprintf("p50-ratio@%d/s", rate))
		b.ReportMetric(sum.p99Ratio.med, fmt.Sprintf("p99-ratio@%d/s", rate))
	}
	for _, s := range samples {
		if len(s.Run.Errors)+s.Wrong > 0 {
			b.Errorf("round %d, %d/s, %s: %d failed creations, %d pods injected wrongly; first: %v", s.Round, s.Rate, armOf(s), len(s.Run.Errors), s.Wrong, firstErr(s.Run.Errors))
		}
		if !s.With && !s.Skip && s.Calls != 0 {
			b.Errorf("round %d, %d/s, without: the apiserver called a webhook %.0f times", s.Round, s.Rate, s.Calls)
		}
		if (s.With || s.Skip) && s.Calls != float64(len(s.Run.Latencies)) {
			b.Errorf("round %d, %d/s, %s: %.0f webhook calls for %d pods, want one per pod", s.Round, s.Rate, armOf(s), s.Calls, len(s.Run.Latencies))
		}
	}
}

func parseRates(s string) ([]int, error) {
	var rates []int
	for _, f := range strings.Split(s, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || r <= 0 {
			return nil, fmt.Errorf("-nodeload.rates %q: %q is not a positive rate", s, f)
		}
		rates = append(rates, r)
	}
	return rates, nil
}

// arm is one way of creating the pods.
type arm string

const (
	armWith    arm = "with webhook"
	armWithout arm = "without"
	armSkip    arm = "webhook skips"
)

var arms = []arm{armWith, armWithout, armSkip}

func armOf(s sample) arm {
	switch {
	case s.With:
		return armWith
	case s.Skip:
		return armSkip
	}
	return armWithout
}

func firstErr(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return errs[0]
}

type meter struct {
	cs kubernetes.Interface
}

// snapshot is what the metrics say at one moment.
type snapshot struct {
	webhook, post measure.Histogram
	calls         float64
	ours          map[string]measure.Histogram // by injector pod
}

func (m *meter) scrape(ctx context.Context) (snapshot, error) {
	fams, err := n.CP.APIServerMetrics(ctx)
	if err != nil {
		return snapshot{}, err
	}
	s := snapshot{
		webhook: measure.HistogramOf(fams, admissionMetric, map[string]string{"name": namespaceWebhook, "type": "admit"}),
		calls:   measure.HistogramOf(fams, admissionMetric, nil).Count,
		post:    measure.HistogramOf(fams, requestMetric, map[string]string{"verb": "POST", "resource": "pods", "subresource": "", "dry_run": ""}),
		ours:    map[string]measure.Histogram{},
	}
	pods, err := chartinstall.ListPods(ctx, m.cs)
	if err != nil {
		return snapshot{}, err
	}
	for _, p := range pods {
		// Through the apiserver's pod proxy, as a Prometheus in the
		// cluster would reach the pod.
		body, err := m.cs.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, metricsPort, "metrics", nil).DoRaw(ctx)
		if err != nil {
			return snapshot{}, fmt.Errorf("metrics of injector pod %s: %w", p.Name, err)
		}
		fams, err := measure.ParseMetrics(body)
		if err != nil {
			return snapshot{}, fmt.Errorf("metrics of injector pod %s: %w", p.Name, err)
		}
		s.ours[p.Name] = measure.HistogramOf(fams, oursMetric, nil)
	}
	return s, nil
}

// measure creates gateway pods at rate for d in nsWith (with) or
// nsWithout, reads the metrics before and after, and deletes the pods.
func (m *meter) measure(ctx context.Context, round, rate int, d time.Duration, a arm) (sample, error) {
	with, skip := a == armWith, a == armSkip
	ns := nsWithout
	if with || skip {
		ns = nsWith
	}
	run := fmt.Sprintf("r%d-%d-%s", round, rate, map[arm]string{armWith: "with", armWithout: "without", armSkip: "skip"}[a])
	s := sample{Round: round, Rate: rate, With: with, Skip: skip}
	before, err := m.scrape(ctx)
	if err != nil {
		return s, err
	}
	var wrong atomic.Int64
	s.Run = measure.Paced(ctx, rate, d, func(ctx context.Context, i int) error {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		pod := gatewayPod(ns, run, fmt.Sprintf("gw-%s-%05d", run, i))
		if skip {
			if pod.Annotations == nil {
				pod.Annotations = map[string]string{}
			}
			pod.Annotations[inject.AnnotationInject] = "false"
		}
		got, err := m.cs.CoreV1().Pods(ns).Create(cctx, pod, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		if (got.Annotations[inject.AnnotationStatus] != "") != with {
			wrong.Add(1)
		}
		return nil
	})
	s.Wrong = int(wrong.Load())
	after, err := m.scrape(ctx)
	if err != nil {
		return s, err
	}
	s.Webhook = after.webhook.Minus(before.webhook)
	s.Post = after.post.Minus(before.post)
	s.Calls = after.calls - before.calls
	s.Ours = measure.Histogram{Buckets: map[float64]float64{}}
	for pod, h := range after.ours {
		b, ok := before.ours[pod]
		if !ok {
			return s, fmt.Errorf("injector pod %s appeared during the run (the injector pods changed: restarts or a rollout)", pod)
		}
		s.Ours = s.Ours.Add(h.Minus(b))
	}
	if len(after.ours) != len(before.ours) {
		return s, fmt.Errorf("%d injector pods before the run, %d after", len(before.ours), len(after.ours))
	}
	return s, m.deleteRun(ctx, ns, run)
}

// deleteRun deletes the run's pods (unbound, so at once) and waits until
// they are gone, so that the next run starts from the same store.
func (m *meter) deleteRun(ctx context.Context, ns, run string) error {
	sel := metav1.ListOptions{LabelSelector: runLabel + "=" + run}
	var lastDelete time.Time
	var lastErr error
	err := wait.PollUntilContextTimeout(ctx, time.Second, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		if time.Since(lastDelete) > 30*time.Second {
			// A collection this large may outlast one request's timeout;
			// issue it again until the pods are gone.
			lastDelete = time.Now()
			if err := m.cs.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
				lastErr = err
			}
		}
		l := sel
		l.Limit = 1
		pods, err := m.cs.CoreV1().Pods(ns).List(ctx, l)
		if err != nil {
			lastErr = err
			return false, nil
		}
		return len(pods.Items) == 0, nil
	})
	if err != nil {
		return errors.Join(fmt.Errorf("deleting the pods of run %s: %w", run, err), lastErr)
	}
	return nil
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	load, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(load))
	if len(f) > 3 {
		f = f[:3]
	}
	return fmt.Sprintf("# Gateway pod creation through kube-apiserver on the real node (%s)\n\nMachine: %d cores, %s; load average after the node started %s.\n\n",
		time.Now().UTC().Format("2006-01-02T15:04Z"), runtime.NumCPU(), model, strings.Join(f, " "))
}
