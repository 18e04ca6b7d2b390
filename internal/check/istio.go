package check

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/istio"
)

// Checks added when the configuration says istio: auto.
const (
	checkIstioRevisions = "istio-revisions"
	checkStaleAgents    = "stale-agents"
)

// checkIstio reports the discovered Istio revisions (istio: auto).
func (k *Env) checkIstio(ctx context.Context) Result {
	res := Result{Name: checkIstioRevisions, Status: StatusPass}
	ns := k.opts.IstioNamespace
	snap, err := k.istioSnapshot(ctx)
	if err != nil {
		res = failed(res, err.Error())
		res.Fix = append(res.Fix, fmt.Sprintf("the injector needs get/list/watch on ConfigMaps in %s and list/watch on mutatingwebhookconfigurations (the chart grants them)", ns))
		return res
	}
	if len(snap.Revisions) == 0 {
		return skipped(res, fmt.Sprintf("istio: auto, but no Istio control plane found in %s (no %s ConfigMap): injection uses the configuration and built-in defaults", ns, istio.InjectorConfigMap))
	}
	for _, name := range snap.Names() {
		r := snap.Revisions[name]
		d := r.Describe()
		if name == snap.Default {
			d += " (default for pods that name no revision)"
		}
		res.Details = append(res.Details, d)
		for _, n := range r.Notes {
			res.Details = append(res.Details, "  "+name+": "+n)
		}
		if r.Err != nil {
			res.Status = StatusWarn
			res.Fix = append(res.Fix, fmt.Sprintf("fix ConfigMap %s/%s, or set the failing fields in the injector's configuration", ns, r.InjectorConfigMap))
		}
	}
	for _, t := range snap.TagNames() {
		res.Details = append(res.Details, fmt.Sprintf("tag %s -> revision %s", t, snap.Tags[t]))
	}
	res.Message = fmt.Sprintf("%d Istio revision(s) in %s: %s", len(snap.Revisions), ns, strings.Join(snap.Names(), ", "))
	if snap.Default == "" {
		res.Message += "; no default revision: gateways must name one (namespace label or pod annotation " + inject.AnnotationIstioRevision + ")"
	}
	if snap.InjectorsUnknown {
		res.Status = worse(res.Status, StatusWarn)
		res.Details = append(res.Details, "Istio's MutatingWebhookConfigurations cannot be read: revision tags are unknown and Istio's own injection is guessed from its labels")
		res.Fix = append(res.Fix, "grant the injector list/watch on mutatingwebhookconfigurations (the chart's ClusterRole does)")
	} else {
		res.Details = append(res.Details, fmt.Sprintf("%d webhook(s) of Istio's sidecar injector watched, so that gateways Istio injects are left to it", len(snap.Injectors)))
	}
	return res
}

func (k *Env) checkStaleAgents(ctx context.Context) Result {
	snap := k.snap
	res := Result{Name: checkStaleAgents, Status: StatusPass}
	if err := k.loadNamespaces(ctx); err != nil {
		return failed(res, err.Error())
	}
	injected := 0
	opts := []client.ListOption{client.Limit(500)}
	for {
		var pods corev1.PodList
		if err := k.c.List(ctx, &pods, opts...); err != nil {
			return failed(res, "listing pods: "+err.Error())
		}
		for i := range pods.Items {
			pod := &pods.Items[i]
			if _, ok := pod.Annotations[inject.AnnotationStatus]; !ok || pod.DeletionTimestamp != nil ||
				(pod.Status.Phase != corev1.PodRunning && pod.Status.Phase != corev1.PodPending) {
				continue
			}
			injected++
			var nsLabels map[string]string
			if ns := k.ns[pod.Namespace]; ns != nil {
				nsLabels = ns.Labels
			}
			sa, stale := snap.Stale(&pod.ObjectMeta, nsLabels)
			if !stale {
				continue
			}
			f := PodFinding{Namespace: pod.Namespace, Name: pod.Name, Problem: "stale-agent", Message: sa.Reason}
			f.Owner, f.Command = k.restartCommand(ctx, pod)
			res.Pods = append(res.Pods, f)
			owner := ""
			if f.Owner != "" {
				owner = ", " + f.Owner
			}
			res.Details = append(res.Details, fmt.Sprintf("%s/%s%s: %s", pod.Namespace, pod.Name, owner, sa.Reason))
			res.Fix = appendUnique(res.Fix, f.Command)
		}
		if pods.Continue == "" {
			break
		}
		opts = []client.ListOption{client.Limit(500), client.Continue(pods.Continue)}
	}
	if len(res.Pods) > 0 {
		res.Status = StatusWarn
		res.Message = fmt.Sprintf("%d injected gateway pod(s) run an agent that no longer matches the installed Istio (e.g. after an upgrade): restart them to re-inject", len(res.Pods))
		return res
	}
	res.Message = fmt.Sprintf("%d injected pod(s); every agent matches the installed Istio", injected)
	return res
}
