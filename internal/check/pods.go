package check

import (
	"context"
	"fmt"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// --- gateway pods -----------------------------------------------------------

// checkGatewayPods lists running gateway pods that lack the agent but would
// be injected if created now. It also returns the namespaces with injected
// (or to-be-injected) gateways, for the root certificate check.
func (k *Env) checkGatewayPods(ctx context.Context) Result {
	res, ns := k.gatewayPods(ctx)
	k.podNamespaces = ns
	return res
}

func (k *Env) gatewayPods(ctx context.Context) (Result, map[string]bool) {
	res := Result{Name: checkGatewayPods, Status: StatusPass}
	podNamespaces := map[string]bool{}
	if k.settings == nil {
		return skipped(res, "no valid configuration"), podNamespaces
	}
	if len(k.mwcs) == 0 {
		return skipped(res, "no webhook configuration installed"), podNamespaces
	}
	if err := k.loadNamespaces(ctx); err != nil {
		return failed(res, err.Error()), podNamespaces
	}
	injected, gateways, istioFirst := 0, 0, 0
	k.istioSnapshot(ctx) //nolint:errcheck // reported by the istio-revisions check; decide falls back to the configuration
	opts := []client.ListOption{client.Limit(500)}
	for {
		var pods corev1.PodList
		if err := k.c.List(ctx, &pods, opts...); err != nil {
			return failed(res, "listing pods: "+err.Error()), podNamespaces
		}
		for i := range pods.Items {
			pod := &pods.Items[i]
			if pod.DeletionTimestamp != nil || (pod.Status.Phase != corev1.PodRunning && pod.Status.Phase != corev1.PodPending) {
				continue
			}
			if _, ok := pod.Annotations[inject.AnnotationStatus]; ok {
				injected++
				podNamespaces[pod.Namespace] = true
				continue
			}
			if !k.inScope(pod) {
				continue
			}
			d, rev := k.decide(pod)
			f := PodFinding{Namespace: pod.Namespace, Name: pod.Name, Profile: d.Profile, Message: d.Message}
			switch {
			case d.Outcome == inject.OutcomeInjected:
				gateways++
				podNamespaces[pod.Namespace] = true
				f.Problem = "not-injected"
				f.Owner, f.Command = k.restartCommand(ctx, pod)
				res.Status = StatusFail
				res.Fix = appendUnique(res.Fix, f.Command)
			case d.Reason == inject.ReasonIstioSidecar && d.Warn:
				// Istio got there first: the gateway runs Istio's capturing
				// sidecar instead of our agent.
				f.Problem = string(d.Reason)
				f.Owner, f.Command = k.restartCommand(ctx, pod)
				istioFirst++
				res.Status = worse(res.Status, StatusWarn)
				if rev == "" {
					rev = "<revision>"
				}
				res.Fix = appendUnique(res.Fix, fmt.Sprintf("%s/%s: set label %s: \"false\" on its pod template and label namespace %s with %s=%s, then %s",
					pod.Namespace, orPod(f.Owner, pod.Name), inject.LabelIstioSidecarInject, pod.Namespace, inject.LabelIstioRevision, rev, f.Command))
			case d.Warn || d.Outcome == inject.OutcomeError:
				f.Problem = string(d.Reason)
				f.Owner, _ = k.restartCommand(ctx, pod)
				res.Status = worse(res.Status, StatusWarn)
			default:
				continue
			}
			res.Pods = append(res.Pods, f)
			owner := ""
			if f.Owner != "" {
				owner = ", " + f.Owner
			}
			profile := ""
			if f.Profile != "" {
				profile = ", profile " + f.Profile
			}
			if f.Problem == "not-injected" {
				res.Details = append(res.Details, fmt.Sprintf("%s/%s%s%s: gateway without the agent; it would be injected if created now", pod.Namespace, pod.Name, owner, profile))
			} else {
				res.Details = append(res.Details, fmt.Sprintf("%s/%s%s%s: cannot be injected [%s]: %s", pod.Namespace, pod.Name, owner, profile, f.Problem, f.Message))
			}
		}
		if pods.Continue == "" {
			break
		}
		opts = []client.ListOption{client.Limit(500), client.Continue(pods.Continue)}
	}
	switch {
	case gateways > 0:
		res.Message = fmt.Sprintf("%d running gateway pod(s) lack the agent (created while the webhook was down or before opting in); restart them", gateways)
	case istioFirst > 0:
		res.Message = fmt.Sprintf("%d gateway pod(s) were injected by Istio's own sidecar injector (capturing all traffic) instead of sds-injector; see fix", istioFirst)
	case res.Status == StatusWarn:
		res.Message = fmt.Sprintf("%d gateway pod(s) asked for injection but cannot be injected", len(res.Pods))
	default:
		res.Message = fmt.Sprintf("%d injected gateway pod(s); none is missing the agent", injected)
	}
	return res, podNamespaces
}

func (k *Env) loadNamespaces(ctx context.Context) error {
	if k.ns != nil {
		return nil
	}
	var list corev1.NamespaceList
	if err := k.c.List(ctx, &list); err != nil {
		return fmt.Errorf("listing namespaces: %w", err)
	}
	k.ns = map[string]*corev1.Namespace{}
	for i := range list.Items {
		k.ns[list.Items[i].Name] = &list.Items[i]
	}
	return nil
}

// restartCommand names the pod's workload and the command that recreates
// its pods through the API server (and so through the webhook).
func (k *Env) restartCommand(ctx context.Context, pod *corev1.Pod) (owner, command string) {
	ref := metav1.GetControllerOf(pod)
	ns := pod.Namespace
	if ref == nil {
		return "", fmt.Sprintf("kubectl -n %s delete pod %s   # a bare pod: re-create it from its manifest afterwards", ns, pod.Name)
	}
	switch ref.Kind {
	case "ReplicaSet":
		if k.rsOwner == nil {
			k.rsOwner = map[types.NamespacedName]string{}
		}
		key := types.NamespacedName{Namespace: ns, Name: ref.Name}
		dep, ok := k.rsOwner[key]
		if !ok {
			var rs appsv1.ReplicaSet
			if err := k.c.Get(ctx, key, &rs); err == nil {
				if o := metav1.GetControllerOf(&rs); o != nil && o.Kind == "Deployment" {
					dep = o.Name
				}
			}
			k.rsOwner[key] = dep
		}
		if dep != "" {
			return "deployment/" + dep, fmt.Sprintf("kubectl -n %s rollout restart deployment/%s", ns, dep)
		}
		return "replicaset/" + ref.Name, fmt.Sprintf("kubectl -n %s delete pod %s", ns, pod.Name)
	case "DaemonSet", "StatefulSet":
		kind := strings.ToLower(ref.Kind)
		return kind + "/" + ref.Name, fmt.Sprintf("kubectl -n %s rollout restart %s/%s", ns, kind, ref.Name)
	default:
		return strings.ToLower(ref.Kind) + "/" + ref.Name, fmt.Sprintf("kubectl -n %s delete pod %s   # its %s re-creates it", ns, pod.Name, ref.Kind)
	}
}

// --- istio root certificate -------------------------------------------------

func (k *Env) checkRootCerts(ctx context.Context) Result {
	podNamespaces := k.podNamespaces
	res := Result{Name: checkRootCert, Status: StatusPass}
	if k.settings == nil {
		return skipped(res, "no valid configuration")
	}
	if len(k.mwcs) == 0 {
		return skipped(res, "no webhook configuration installed")
	}
	if err := k.loadNamespaces(ctx); err != nil {
		return failed(res, err.Error())
	}
	// Opted-in namespaces: labelled for namespace mode and selected by an
	// installed webhook, plus every namespace with an injected (or
	// to-be-injected) gateway.
	want := map[string]bool{}
	for name := range podNamespaces {
		want[name] = true
	}
	for name, ns := range k.ns {
		if ns.Labels[inject.NamespaceLabel] != "enabled" || ns.DeletionTimestamp != nil {
			continue
		}
		for _, mwc := range k.mwcs {
			for _, w := range mwc.Webhooks {
				if selectorMatches(w.NamespaceSelector, ns.Labels) {
					want[name] = true
				}
			}
		}
	}
	if len(want) == 0 {
		res.Message = "no opted-in namespace yet"
		return res
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	cmName := k.cfg.RootCertConfigMap
	var missing []string
	for _, n := range names {
		var cm corev1.ConfigMap
		err := k.c.Get(ctx, types.NamespacedName{Namespace: n, Name: cmName}, &cm)
		switch {
		case apierrors.IsNotFound(err):
			missing = append(missing, n)
			res.Details = append(res.Details, fmt.Sprintf("%s: ConfigMap %s missing", n, cmName))
		case err != nil:
			missing = append(missing, n)
			res.Details = append(res.Details, fmt.Sprintf("%s: reading ConfigMap %s: %v", n, cmName, err))
		default:
			res.Details = append(res.Details, fmt.Sprintf("%s: ConfigMap %s present", n, cmName))
		}
	}
	if len(missing) > 0 {
		res.Status = StatusFail
		res.Message = fmt.Sprintf("%d of %d opted-in namespace(s) lack %s: injected gateways there cannot start (the volume cannot be mounted)", len(missing), len(names), cmName)
		res.Fix = append(res.Fix, "istiod publishes "+cmName+" into the namespaces it manages: is istiod running, and do its discoverySelectors (or revision) include "+strings.Join(missing, ", ")+"?")
		return res
	}
	res.Message = fmt.Sprintf("%s present in all %d opted-in namespace(s)", cmName, len(names))
	return res
}
