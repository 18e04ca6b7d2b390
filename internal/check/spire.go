package check

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// checkSPIRERegistration: gateways injected with the spire flavor get an
// identity only when SPIRE has a registration entry for them; with the
// spire-controller-manager that is a ClusterSPIFFEID selecting the pod.
const checkSPIRERegistration = "spire-registration"

// clusterSPIFFEIDList is spire-controller-manager's ClusterSPIFFEID list
// (spire.spiffe.io/v1alpha1), read unstructured: the CRD is optional.
var clusterSPIFFEIDList = schema.GroupVersionKind{Group: "spire.spiffe.io", Version: "v1alpha1", Kind: "ClusterSPIFFEIDList"}

// clusterSPIFFEID is the part of a ClusterSPIFFEID that decides which pods
// it registers (api/v1alpha1/clusterspiffeid_types.go): both selectors
// must match; an absent selector matches everything, as the controller
// lists namespaces and pods without a label selector then.
type clusterSPIFFEID struct {
	name              string
	template          string
	namespaceSelector labels.Selector
	podSelector       labels.Selector
}

type clusterSPIFFEIDSpec struct {
	SPIFFEIDTemplate  string                `json:"spiffeIDTemplate"`
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	PodSelector       *metav1.LabelSelector `json:"podSelector,omitempty"`
}

// unreadableClusterSPIFFEIDs says, in order, what a failed list means; all
// are warnings: without the list the check cannot tell, and entries may
// have been created another way.
var unreadableClusterSPIFFEIDs = []struct {
	is  func(error) bool
	why func(error) string
	fix string
}{
	{
		is:  func(err error) bool { return meta.IsNoMatchError(err) || apierrors.IsNotFound(err) },
		why: func(error) string { return "the ClusterSPIFFEID CRD (spire-controller-manager) is not installed" },
	},
	{
		is:  apierrors.IsForbidden,
		why: func(error) string { return "reading ClusterSPIFFEIDs is forbidden" },
		fix: "grant list on clusterspiffeids.spire.spiffe.io to the identity running check",
	},
	{
		is:  func(error) bool { return true },
		why: func(err error) string { return "listing ClusterSPIFFEIDs failed (" + err.Error() + ")" },
	},
}

func asSelector(s *metav1.LabelSelector) (labels.Selector, error) {
	if s == nil {
		return labels.Everything(), nil
	}
	return metav1.LabelSelectorAsSelector(s)
}

func (c *clusterSPIFFEID) selects(nsLabels, podLabels map[string]string) bool {
	return c.namespaceSelector.Matches(labels.Set(nsLabels)) && c.podSelector.Matches(labels.Set(podLabels))
}

// spirePods lists the running or pending pods injected with the spire flavor.
func (k *Env) spirePods(ctx context.Context) ([]*corev1.Pod, error) {
	var out []*corev1.Pod
	err := k.eachPod(ctx, func(pod *corev1.Pod) {
		raw, ok := pod.Annotations[inject.AnnotationStatus]
		if !ok {
			return
		}
		if st, err := inject.ParseStatus(raw); err == nil && st.IdentityProvider == inject.IdentityProviderSPIRE {
			out = append(out, pod.DeepCopy())
		}
	})
	return out, err
}

func (k *Env) checkSPIRERegistration(ctx context.Context) Result {
	res := Result{Name: checkSPIRERegistration, Status: StatusPass}
	pods, err := k.spirePods(ctx)
	if err != nil {
		return failed(res, err.Error())
	}
	if len(pods) == 0 {
		return skipped(res, "no gateway pod is injected with the spire flavor")
	}
	var list unstructured.UnstructuredList
	list.SetGroupVersionKind(clusterSPIFFEIDList)
	if err := k.c.List(ctx, &list); err != nil {
		res.Status = StatusWarn
		for _, u := range unreadableClusterSPIFFEIDs {
			if u.is(err) {
				res.Message = fmt.Sprintf("%d gateway pod(s) use the spire flavor, but %s: cannot tell whether SPIRE has registered them", len(pods), u.why(err))
				if u.fix != "" {
					res.Fix = append(res.Fix, u.fix)
				}
				break
			}
		}
		res.Fix = append(res.Fix, "make sure SPIRE has an entry for each gateway (ClusterSPIFFEID, or spire-server entry create): docs/spire.md#registration")
		return res
	}
	var ids []clusterSPIFFEID
	for i := range list.Items {
		item := &list.Items[i]
		var spec clusterSPIFFEIDSpec
		raw, _, _ := unstructured.NestedMap(item.Object, "spec")
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &spec); err != nil {
			res.Status = StatusWarn
			res.Details = append(res.Details, fmt.Sprintf("ClusterSPIFFEID %s: unreadable spec: %v", item.GetName(), err))
			continue
		}
		ns, err1 := asSelector(spec.NamespaceSelector)
		pod, err2 := asSelector(spec.PodSelector)
		if err1 != nil || err2 != nil {
			res.Status = StatusWarn
			res.Details = append(res.Details, fmt.Sprintf("ClusterSPIFFEID %s: invalid selector (%v %v): it selects nothing", item.GetName(), err1, err2))
			continue
		}
		ids = append(ids, clusterSPIFFEID{name: item.GetName(), template: spec.SPIFFEIDTemplate, namespaceSelector: ns, podSelector: pod})
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].name < ids[j].name })
	if err := k.loadNamespaces(ctx); err != nil {
		return failed(res, err.Error())
	}
	unselected := 0
	for _, pod := range pods {
		var nsLabels map[string]string
		if ns := k.ns[pod.Namespace]; ns != nil {
			nsLabels = ns.Labels
		}
		var by []string
		for i := range ids {
			if ids[i].selects(nsLabels, pod.Labels) {
				by = append(by, ids[i].name)
			}
		}
		if len(by) > 0 {
			res.Details = append(res.Details, fmt.Sprintf("%s/%s: selected by ClusterSPIFFEID %v", pod.Namespace, pod.Name, by))
			continue
		}
		unselected++
		f := PodFinding{Namespace: pod.Namespace, Name: pod.Name, Problem: "no-clusterspiffeid",
			Message: "no ClusterSPIFFEID selects this pod (namespaceSelector and podSelector), so SPIRE issues it no identity unless an entry was created another way"}
		f.Owner, _ = k.restartCommand(ctx, pod)
		res.Pods = append(res.Pods, f)
		owner := ""
		if f.Owner != "" {
			owner = " (" + f.Owner + ")"
		}
		res.Details = append(res.Details, fmt.Sprintf("%s/%s%s: selected by no ClusterSPIFFEID", pod.Namespace, pod.Name, owner))
	}
	if unselected > 0 {
		res.Status = StatusWarn
		res.Message = fmt.Sprintf("%d of %d spire-flavor gateway pod(s) are selected by none of the %d ClusterSPIFFEID(s)", unselected, len(pods), len(ids))
		res.Fix = append(res.Fix, "create a ClusterSPIFFEID whose namespaceSelector and podSelector select the gateway, spiffeIDTemplate spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}: docs/spire.md#registration")
		return res
	}
	if res.Status == StatusPass {
		res.Message = fmt.Sprintf("all %d spire-flavor gateway pod(s) are selected by a ClusterSPIFFEID", len(pods))
	} else {
		res.Message = fmt.Sprintf("all %d spire-flavor gateway pod(s) are selected by a ClusterSPIFFEID; some ClusterSPIFFEIDs could not be read", len(pods))
	}
	return res
}
