package metrics

import (
	"math"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestWriteParses(t *testing.T) {
	var b strings.Builder
	err := Write(&b, []Family{
		Single("a_total", "A counter\nwith a \\ newline.", Counter, 3),
		{Name: "b", Help: "labelled", Type: Gauge, Samples: []Sample{
			{Labels: map[string]string{"z": `q"uote`, "a": "x\\y\nz"}, Value: 1.5},
			{Labels: map[string]string{"a": "2"}, Value: math.Inf(1)},
		}},
		{Name: "empty_total", Help: "no samples yet", Type: Counter},
	})
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if fams["a_total"].Metric[0].Counter.GetValue() != 3 || fams["a_total"].GetHelp() != "A counter\nwith a \\ newline." {
		t.Errorf("a_total: %v", fams["a_total"])
	}
	m := fams["b"].Metric
	if len(m) != 2 || m[0].Gauge.GetValue() != 1.5 || !math.IsInf(m[1].Gauge.GetValue(), 1) {
		t.Errorf("b: %v", m)
	}
	labels := map[string]string{}
	for _, l := range m[0].Label {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["z"] != `q"uote` || labels["a"] != "x\\y\nz" {
		t.Errorf("labels %v", labels)
	}
}
