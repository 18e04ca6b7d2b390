package check

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/istio"
)

// --- istiod -----------------------------------------------------------------

func (k *Env) checkIstiodAddress(ctx context.Context) Result {
	res := Result{Name: checkIstiod, Status: StatusPass}
	if k.settings == nil {
		return skipped(res, "no valid configuration")
	}
	snap, _ := k.istioSnapshot(ctx)
	if snap == nil || len(snap.Revisions) == 0 {
		st, msg, fix := k.checkCAAddress(ctx, k.cfg.CAAddress, k.settings.ClusterDomain())
		res.Status, res.Message, res.Fix = st, msg, fix
		return res
	}
	// With discovery each revision brings its own CA address: check those
	// of the revisions gateways use (and the default's), not the built-in one.
	inUse, err := k.revisionsInUse(ctx, snap)
	if err != nil {
		return failed(res, err.Error())
	}
	if len(inUse) == 0 {
		res.Message = "no gateway uses an Istio revision yet and there is no default revision: no CA address to check"
		return res
	}
	var msgs []string
	for _, name := range inUse {
		r := snap.Revisions[name]
		if r == nil || r.Settings == nil {
			continue
		}
		st, msg, fix := k.checkCAAddress(ctx, r.Settings.CAAddress(), r.Settings.ClusterDomain())
		res.Status = worse(res.Status, st)
		msgs = append(msgs, "revision "+name+": "+msg)
		res.Fix = append(res.Fix, fix...)
	}
	res.Message = strings.Join(msgs, "; ")
	return res
}

// revisionsInUse lists the revisions injected gateways carry, those that
// gateways in scope would get now, and the default revision.
func (k *Env) revisionsInUse(ctx context.Context, snap *istio.Snapshot) ([]string, error) {
	use := map[string]bool{}
	if snap.Default != "" {
		use[snap.Default] = true
	}
	if len(k.mwcs) > 0 {
		if err := k.loadNamespaces(ctx); err != nil {
			return nil, err
		}
	}
	err := k.eachPod(ctx, func(pod *corev1.Pod) {
		if v, ok := pod.Annotations[inject.AnnotationStatus]; ok {
			if st, err := inject.ParseStatus(v); err == nil && st.Revision != "" {
				use[st.Revision] = true
			}
			return
		}
		if !k.inScope(pod) {
			return
		}
		if d, sel := k.decide(pod); d.Outcome == inject.OutcomeInjected && sel != "" {
			use[sel] = true
		}
	})
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(use))
	for name := range use {
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

// eachPod calls fn for every running or pending pod, a page at a time.
func (k *Env) eachPod(ctx context.Context, fn func(*corev1.Pod)) error {
	opts := []client.ListOption{client.Limit(500)}
	for {
		var pods corev1.PodList
		if err := k.c.List(ctx, &pods, opts...); err != nil {
			return fmt.Errorf("listing pods: %w", err)
		}
		for i := range pods.Items {
			pod := &pods.Items[i]
			if pod.DeletionTimestamp != nil || (pod.Status.Phase != corev1.PodRunning && pod.Status.Phase != corev1.PodPending) {
				continue
			}
			fn(pod)
		}
		if pods.Continue == "" {
			return nil
		}
		opts = []client.ListOption{client.Limit(500), client.Continue(pods.Continue)}
	}
}

// decide is what the webhook would decide for the pod if it were created
// now, with the installed Istio when discovery is on; it also returns the
// revision chosen ("" without discovery), or for a pod left to Istio's
// injector the revision (or tag) that injector serves.
func (k *Env) decide(pod *corev1.Pod) (inject.Decision, string) {
	var nsLabels map[string]string
	if ns := k.ns[pod.Namespace]; ns != nil {
		nsLabels = ns.Labels
	}
	snap := k.snap
	if snap == nil {
		if d, ok := inject.Ambient(pod, k.settings, nsLabels); ok {
			return d, ""
		}
		return inject.Inject(pod, k.settings).Decision, ""
	}
	sel := snap.Resolve(pod, nsLabels)
	// In the webhook's order: Istio's injector, ambient, the revision.
	if in := snap.IstioInjection(pod, nsLabels); in != nil {
		// The revision Istio's injector uses, for the fix.
		return inject.LeftToIstio(pod, sel.Settings, *in), in.Revision
	}
	if d, ok := inject.Ambient(pod, sel.Settings, nsLabels); ok {
		return d, ""
	}
	if sel.Problem != "" {
		return inject.RevisionUnavailable(pod, sel.Settings, sel.Problem), ""
	}
	return inject.Inject(pod, sel.Settings).Decision, sel.Revision
}

// checkCAAddress checks that a CA address resolves (through the API for a
// cluster service name).
func (k *Env) checkCAAddress(ctx context.Context, addr, clusterDomain string) (Status, string, []string) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return StatusFail, fmt.Sprintf("caAddress %q: %v", addr, err), nil
	}
	port, _ := strconv.Atoi(portStr)
	if net.ParseIP(host) != nil {
		return StatusPass, fmt.Sprintf("caAddress %s is an IP address", addr), nil
	}
	if svc, ns, ok := clusterServiceName(host, clusterDomain); ok {
		// Cluster DNS answers <svc>.<ns>.svc from the Service; from outside
		// the cluster the API is the only honest way to ask.
		ready, _, err := readyEndpoints(ctx, k.c, ns, svc, int32(port))
		switch {
		case err != nil:
			return StatusFail, fmt.Sprintf("caAddress %s does not resolve in the cluster: Service %s/%s: %v", addr, ns, svc, err),
				[]string{"is istiod installed? For a revisioned istiod without discovery set caAddress (chart value config.caAddress) to e.g. istiod-1-30.istio-system.svc:15012"}
		case ready == 0:
			return StatusFail, fmt.Sprintf("caAddress %s: Service %s/%s has no ready endpoints on port %d", addr, ns, svc, port),
				[]string{fmt.Sprintf("kubectl -n %s get pods,endpointslices -l app=istiod", ns)}
		}
		return StatusPass, fmt.Sprintf("caAddress %s: Service %s/%s has %d ready endpoint(s) on port %d (checked through the API, as cluster DNS resolves it)", addr, ns, svc, ready, port), nil
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupHost(lctx, host)
	if err != nil {
		return StatusFail, fmt.Sprintf("caAddress %s does not resolve from here: %v", addr, err),
			[]string{"the name is resolved with this machine's DNS; if it is a cluster-internal name, use the <service>.<namespace>.svc form"}
	}
	return StatusPass, fmt.Sprintf("caAddress %s resolves to %s (DNS from where check runs)", addr, strings.Join(ips, ", ")), nil
}

func orPod(owner, pod string) string {
	if owner != "" {
		return owner
	}
	return "pod/" + pod
}

// istioSnapshot loads the installed Istio once (istio: auto only; nil
// otherwise).
func (k *Env) istioSnapshot(ctx context.Context) (*istio.Snapshot, error) {
	if k.snapOK || k.settings == nil || !k.cfg.Istio.Auto() {
		return k.snap, k.snapErr
	}
	k.snapOK = true
	k.snap, k.snapErr = istio.Load(ctx, k.c, istio.Input{Config: k.cfg, Explicit: k.set, Namespace: k.opts.IstioNamespace})
	return k.snap, k.snapErr
}

// clusterServiceName recognises <svc>.<ns>.svc and <svc>.<ns>.svc.<domain>.
func clusterServiceName(host, clusterDomain string) (svc, ns string, ok bool) {
	h := strings.TrimSuffix(host, ".")
	switch {
	case strings.HasSuffix(h, ".svc."+clusterDomain):
		h = strings.TrimSuffix(h, ".svc."+clusterDomain)
	case strings.HasSuffix(h, ".svc"):
		h = strings.TrimSuffix(h, ".svc")
	default:
		return "", "", false
	}
	svc, ns, ok = strings.Cut(h, ".")
	if !ok || svc == "" || ns == "" || strings.Contains(ns, ".") {
		return "", "", false
	}
	return svc, ns, true
}
