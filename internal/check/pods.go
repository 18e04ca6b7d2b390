package check

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
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

// inScope reports whether the API server would send the pod's creation to
// one of the injector's webhooks: rules, namespace and object selectors and
// CEL match conditions, evaluated as the API server does.
func (k *Env) inScope(pod *corev1.Pod) bool {
	ns := k.ns[pod.Namespace]
	if ns == nil {
		return false
	}
	for _, mwc := range k.mwcs {
		for i := range mwc.Webhooks {
			w := &mwc.Webhooks[i]
			if !matchesPodCreate(w.Rules) || !selectorMatches(w.NamespaceSelector, ns.Labels) || !selectorMatches(w.ObjectSelector, pod.Labels) {
				continue
			}
			if k.conditionsMatch(w.MatchConditions, pod) {
				return true
			}
		}
	}
	return false
}

func matchesPodCreate(rules []admissionregistrationv1.RuleWithOperations) bool {
	for _, r := range rules {
		ops := slices.ContainsFunc(r.Operations, func(o admissionregistrationv1.OperationType) bool {
			return o == admissionregistrationv1.Create || o == admissionregistrationv1.OperationAll
		})
		if ops && (slices.Contains(r.APIGroups, "") || slices.Contains(r.APIGroups, "*")) &&
			(slices.Contains(r.Resources, "pods") || slices.Contains(r.Resources, "*")) {
			return true
		}
	}
	return false
}

// selectorMatches follows the webhook API: a nil selector matches
// everything; an invalid one matches nothing.
func selectorMatches(sel *metav1.LabelSelector, l map[string]string) bool {
	if sel == nil {
		return true
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return false
	}
	return s.Matches(labels.Set(l))
}

type celProgram struct {
	prg cel.Program
	err error
}

// celEnv declares the variables of admission match conditions.
var celEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("object", cel.DynType),
		cel.Variable("oldObject", cel.DynType),
		cel.Variable("request", cel.DynType),
	)
})

// conditionsMatch evaluates match conditions with CEL over the pod as JSON,
// as the API server does for CREATE. A condition that cannot be compiled or
// evaluated here (e.g. one using the authorizer) counts as matching, so a
// gateway is reported rather than silently ignored.
func (k *Env) conditionsMatch(conds []admissionregistrationv1.MatchCondition, pod *corev1.Pod) bool {
	if len(conds) == 0 {
		return true
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(pod)
	if err != nil {
		return true
	}
	vars := map[string]any{
		"object":    obj,
		"oldObject": nil,
		"request": map[string]any{
			"kind":        map[string]any{"group": "", "version": "v1", "kind": "Pod"},
			"resource":    map[string]any{"group": "", "version": "v1", "resource": "pods"},
			"subResource": "",
			"name":        pod.Name,
			"namespace":   pod.Namespace,
			"operation":   "CREATE",
			"dryRun":      false,
		},
	}
	if k.cel == nil {
		k.cel = map[string]celProgram{}
	}
	for _, c := range conds {
		p, ok := k.cel[c.Expression]
		if !ok {
			p = compileCEL(c.Expression)
			k.cel[c.Expression] = p
		}
		if p.err != nil {
			continue
		}
		out, _, err := p.prg.Eval(vars)
		if err != nil {
			continue
		}
		if b, ok := out.Value().(bool); ok && !b {
			return false
		}
	}
	return true
}

func compileCEL(expr string) celProgram {
	env, err := celEnv()
	if err != nil {
		return celProgram{err: err}
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return celProgram{err: iss.Err()}
	}
	prg, err := env.Program(ast)
	return celProgram{prg: prg, err: err}
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
