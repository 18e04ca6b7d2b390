package check

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A ClusterSPIFFEID selects a pod when both selectors match; an absent
// selector matches everything (spire-controller-manager lists without one).
func TestClusterSPIFFEIDSelects(t *testing.T) {
	gwNS := map[string]string{"sds-injection": "enabled"}
	gwPod := map[string]string{"app.kubernetes.io/component": "proxy"}
	for name, tc := range map[string]struct {
		ns, pod *metav1.LabelSelector
		want    bool
	}{
		"no selectors":       {nil, nil, true},
		"empty selectors":    {&metav1.LabelSelector{}, &metav1.LabelSelector{}, true},
		"both match":         {&metav1.LabelSelector{MatchLabels: gwNS}, &metav1.LabelSelector{MatchLabels: gwPod}, true},
		"namespace mismatch": {&metav1.LabelSelector{MatchLabels: map[string]string{"sds-injection": "off"}}, nil, false},
		"pod mismatch":       {nil, &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/component": "controller"}}, false},
		"expression DoesNotExist": {nil, &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "app.kubernetes.io/component", Operator: metav1.LabelSelectorOpDoesNotExist}}}, false},
		"expression In": {&metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "sds-injection", Operator: metav1.LabelSelectorOpIn, Values: []string{"enabled", "yes"}}}}, nil, true},
	} {
		t.Run(name, func(t *testing.T) {
			ns, err := asSelector(tc.ns)
			if err != nil {
				t.Fatal(err)
			}
			pod, err := asSelector(tc.pod)
			if err != nil {
				t.Fatal(err)
			}
			c := clusterSPIFFEID{name: name, namespaceSelector: ns, podSelector: pod}
			if got := c.selects(gwNS, gwPod); got != tc.want {
				t.Errorf("selects = %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := asSelector(&metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}}); err == nil {
		t.Error("an invalid selector must be an error (the check reports it and treats it as selecting nothing)")
	}
}
