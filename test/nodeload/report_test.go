package nodeload

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/sds-injector/sds-injector/test/load/measure"
)

// spread is the min / median / max of a set of figures.
type spread struct{ min, med, max float64 }

func spreadOf(v []float64) spread {
	var s []float64
	for _, x := range v {
		if !math.IsNaN(x) {
			s = append(s, x)
		}
	}
	if len(s) == 0 {
		return spread{math.NaN(), math.NaN(), math.NaN()}
	}
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{s[0], med, s[len(s)-1]}
}

// ms formats seconds as milliseconds.
func ms(sec float64) string {
	if math.IsNaN(sec) {
		return "–"
	}
	return fmt.Sprintf("%.1f", sec*1e3)
}

func (s spread) ms() string    { return ms(s.min) + " / **" + ms(s.med) + "** / " + ms(s.max) }
func (s spread) ratio() string { return fmt.Sprintf("%.2f / **%.2f** / %.2f", s.min, s.med, s.max) }
func (s spread) pct() string {
	return fmt.Sprintf("%.1f / **%.1f** / %.1f", 100*s.min, 100*s.med, 100*s.max)
}

// summary is one rate's figures over the rounds.
type summary struct {
	rounds                         int
	p50With, p50Without, p50Ratio  spread
	p99With, p99Without, p99Ratio  spread
	pooledP50Ratio, pooledP99Ratio float64
	webhookP50, webhookP99         spread
	under5, under25                spread
	oursP50, oursP99               spread
	rateWith, rateWithout          spread
	calls, created, errors         float64
	// skip*: the runs where the webhook is called and skips, over the
	// same round's runs without it.
	skipRounds                 int
	p50Skip, p99Skip           spread
	p50SkipRatio, p99SkipRatio spread
}

func secs(d time.Duration) float64 { return d.Seconds() }

// summarize pairs each round's run with the webhook with the same round's
// run without it, at rate.
func summarize(samples []sample, rate int) summary {
	var sum summary
	with, without, skip := map[int]sample{}, map[int]sample{}, map[int]sample{}
	for _, s := range samples {
		if s.Rate != rate || s.Round == 0 {
			continue
		}
		switch {
		case s.With:
			with[s.Round] = s
		case s.Skip:
			skip[s.Round] = s
		default:
			without[s.Round] = s
		}
	}
	var p50s, p99s, p50sr, p99sr []float64
	for round, k := range skip {
		o, ok := without[round]
		if !ok {
			continue
		}
		sum.skipRounds++
		p50s, p99s = append(p50s, secs(k.p(0.5))), append(p99s, secs(k.p(0.99)))
		p50sr = append(p50sr, float64(k.p(0.5))/float64(o.p(0.5)))
		p99sr = append(p99sr, float64(k.p(0.99))/float64(o.p(0.99)))
		sum.created += float64(len(k.Run.Latencies))
		sum.errors += float64(len(k.Run.Errors) + k.Wrong)
	}
	sum.p50Skip, sum.p99Skip, sum.p50SkipRatio, sum.p99SkipRatio = spreadOf(p50s), spreadOf(p99s), spreadOf(p50sr), spreadOf(p99sr)
	var p50w, p50o, p50r, p99w, p99o, p99r, wp50, wp99, u5, u25, op50, op99, rw, ro []float64
	var allWith, allWithout []time.Duration
	for round, w := range with {
		o, ok := without[round]
		if !ok {
			continue
		}
		sum.rounds++
		p50w, p50o = append(p50w, secs(w.p(0.5))), append(p50o, secs(o.p(0.5)))
		p99w, p99o = append(p99w, secs(w.p(0.99))), append(p99o, secs(o.p(0.99)))
		p50r = append(p50r, float64(w.p(0.5))/float64(o.p(0.5)))
		p99r = append(p99r, float64(w.p(0.99))/float64(o.p(0.99)))
		wp50, wp99 = append(wp50, w.Webhook.Quantile(0.5)), append(wp99, w.Webhook.Quantile(0.99))
		u5, u25 = append(u5, w.Webhook.FractionBelow(0.005)), append(u25, w.Webhook.FractionBelow(0.025))
		op50, op99 = append(op50, w.Ours.Quantile(0.5)), append(op99, w.Ours.Quantile(0.99))
		rw, ro = append(rw, w.Run.Rate()), append(ro, o.Run.Rate())
		allWith, allWithout = append(allWith, w.Run.Latencies...), append(allWithout, o.Run.Latencies...)
		sum.calls += w.Webhook.Count
		sum.created += float64(len(w.Run.Latencies) + len(o.Run.Latencies))
		sum.errors += float64(len(w.Run.Errors) + w.Wrong + len(o.Run.Errors) + o.Wrong)
	}
	sum.p50With, sum.p50Without, sum.p50Ratio = spreadOf(p50w), spreadOf(p50o), spreadOf(p50r)
	sum.p99With, sum.p99Without, sum.p99Ratio = spreadOf(p99w), spreadOf(p99o), spreadOf(p99r)
	sum.webhookP50, sum.webhookP99 = spreadOf(wp50), spreadOf(wp99)
	sum.under5, sum.under25 = spreadOf(u5), spreadOf(u25)
	sum.oursP50, sum.oursP99 = spreadOf(op50), spreadOf(op99)
	sum.rateWith, sum.rateWithout = spreadOf(rw), spreadOf(ro)
	sum.pooledP50Ratio = float64(measure.Percentile(allWith, 0.5)) / float64(measure.Percentile(allWithout, 0.5))
	sum.pooledP99Ratio = float64(measure.Percentile(allWith, 0.99)) / float64(measure.Percentile(allWithout, 0.99))
	return sum
}

// report is the Markdown report: the summary per rate, the goal, then
// every run.
func report(samples []sample, rates []int, d time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Each run creates the Gloo Edge gateway-proxy pod of docs/examples at a fixed rate for %s (open loop) through kube-apiserver on the node: "+
		"**with** = namespace %s (sds-injection=enabled: the chart's namespace-mode webhook, two injector pods behind the Service), "+
		"**without** = namespace %s (sds-injection=disabled: no webhook configuration selects it), "+
		"**webhook skips** = namespace %[2]s again with the pod annotated sds-injector.io/inject=false (no selector sees annotations: the apiserver calls the webhook, which answers without a patch — what any webhook call costs). The pods never run (a scheduler name no scheduler has). "+
		"The arms rotate in order from round to round; pods are deleted after each run. Latencies in ms; min / **median** / max over the rounds; "+
		"ratios with / without of the same round. Apiserver and webhook percentiles are estimates by linear interpolation inside histogram buckets "+
		"(the apiserver's webhook histogram has bounds 5, 25, 100 ms…: its p50 and p99 inside the first bucket say little; the fractions say more).\n\n", d, nsWith, nsWithout)
	b.WriteString("| rate | rounds | create p50 without | create p50 with | p50 ratio | create p99 without | create p99 with | p99 ratio | pooled ratio p50 / p99 | apiserver → webhook p50 / p99 (est.) | webhook calls ≤ 5 ms / ≤ 25 ms (%) | sds-injector's own p50 / p99 (est.) | achieved rate with / without (median) | pods created, webhook calls, errors |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, rate := range rates {
		s := summarize(samples, rate)
		fmt.Fprintf(&b, "| %d/s | %d | %s | %s | %s | %s | %s | %s | %.2f / %.2f | %s / %s | %s / %s | %s / %s | %.1f / %.1f /s | %.0f, %.0f, %.0f |\n",
			rate, s.rounds, s.p50Without.ms(), s.p50With.ms(), s.p50Ratio.ratio(), s.p99Without.ms(), s.p99With.ms(), s.p99Ratio.ratio(),
			s.pooledP50Ratio, s.pooledP99Ratio, ms(s.webhookP50.med), ms(s.webhookP99.med), s.under5.pct(), s.under25.pct(),
			ms(s.oursP50.med), ms(s.oursP99.med), s.rateWith.med, s.rateWithout.med, s.created, s.calls, s.errors)
	}
	b.WriteString("\nGoal: creation latency with the webhook ≤ 1.2× without, at p50 and p99 (median ratio over the rounds):\n\n")
	for _, rate := range rates {
		s := summarize(samples, rate)
		fmt.Fprintf(&b, "- %d/s: p50 ×%.2f (%s), p99 ×%.2f (%s)\n", rate, s.p50Ratio.med, verdict(s.p50Ratio.med), s.p99Ratio.med, verdict(s.p99Ratio.med))
	}
	b.WriteString("\nThe apiserver's cost of calling a webhook at all (webhook skips / without, median ratio over the rounds; create p50 and p99 of the skip runs in ms, min / **median** / max):\n\n")
	for _, rate := range rates {
		s := summarize(samples, rate)
		fmt.Fprintf(&b, "- %d/s (%d rounds): p50 ×%s (%s ms), p99 ×%s (%s ms)\n", rate, s.skipRounds, s.p50SkipRatio.ratio(), s.p50Skip.ms(), s.p99SkipRatio.ratio(), s.p99Skip.ms())
	}
	b.WriteString("\nEvery run:\n\n")
	b.WriteString("| round | rate | webhook | created | achieved | errors | create p50 | create p99 | apiserver POST pods p50 / p99 (est.) | webhook calls | apiserver → webhook p50 / p99 (est.) | ≤ 5 ms | ≤ 25 ms | sds-injector's own: calls, p50 / p99 (est.) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range samples {
		if s.Round == 0 {
			continue
		}
		wh := "– | – | –"
		ours := "–"
		if s.With || s.Skip {
			wh = fmt.Sprintf("%s / %s | %.1f %% | %.1f %%", ms(s.Webhook.Quantile(0.5)), ms(s.Webhook.Quantile(0.99)), 100*s.Webhook.FractionBelow(0.005), 100*s.Webhook.FractionBelow(0.025))
			ours = fmt.Sprintf("%.0f, %s / %s", s.Ours.Count, ms(s.Ours.Quantile(0.5)), ms(s.Ours.Quantile(0.99)))
		}
		fmt.Fprintf(&b, "| %d | %d/s | %s | %d | %.1f/s | %d | %s | %s | %s / %s | %.0f | %s | %s |\n",
			s.Round, s.Rate, armOf(s), len(s.Run.Latencies), s.Run.Rate(), len(s.Run.Errors)+s.Wrong,
			ms(secs(s.p(0.5))), ms(secs(s.p(0.99))), ms(s.Post.Quantile(0.5)), ms(s.Post.Quantile(0.99)), s.Calls, wh, ours)
	}
	return b.String()
}

func verdict(r float64) string {
	if r <= 1.2 {
		return "met"
	}
	return "not met"
}
