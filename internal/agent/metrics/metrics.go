// Package metrics writes a handful of metrics in the Prometheus text
// exposition format. The agent has a few gauges and counters whose values it
// reads at scrape time, so a metrics library (and its runtime collectors)
// would cost more memory than it saves code.
package metrics

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Type is a Prometheus metric type.
type Type string

// Metric types used here.
const (
	Gauge   Type = "gauge"
	Counter Type = "counter"
)

// Sample is one labelled value.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// Family is a metric with its samples.
type Family struct {
	Name    string
	Help    string
	Type    Type
	Samples []Sample
}

// Single is a family with one unlabelled sample.
func Single(name, help string, t Type, v float64) Family {
	return Family{Name: name, Help: help, Type: t, Samples: []Sample{{Value: v}}}
}

// Write writes the families in the text exposition format (version 0.0.4).
func Write(w io.Writer, families []Family) error {
	var b strings.Builder
	for _, f := range families {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", f.Name, escapeHelp(f.Help), f.Name, f.Type)
		for _, s := range f.Samples {
			b.WriteString(f.Name)
			if len(s.Labels) > 0 {
				keys := make([]string, 0, len(s.Labels))
				for k := range s.Labels {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				b.WriteByte('{')
				for i, k := range keys {
					if i > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, "%s=\"%s\"", k, escapeLabel(s.Labels[k]))
				}
				b.WriteByte('}')
			}
			b.WriteByte(' ')
			b.WriteString(formatValue(s.Value))
			b.WriteByte('\n')
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ContentType is the exposition format's content type.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeLabel(s string) string { return labelEscaper.Replace(s) }
