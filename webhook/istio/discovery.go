package istio

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// Options configure a Discovery.
type Options struct {
	// Config is the user's configuration (defaults filled in); Explicit
	// records the fields the user set (file and flags).
	Config   inject.Config
	Explicit inject.Presence
	// Namespace is where Istio is installed (default istio-system).
	Namespace string
	// SyncTimeout bounds how long readiness waits for the first list of
	// the watched objects; after it the webhook serves with the
	// configuration alone (logged, and visible in the metrics) rather
	// than never becoming ready. Default 20s.
	SyncTimeout time.Duration
	// StaleScanInterval is how often injected pods are compared with the
	// installed revisions (sds_injector_stale_agents). 0 disables the
	// scan (and its need to list pods); default set by the caller.
	StaleScanInterval time.Duration
	// Registerer receives the metrics (nil: none).
	Registerer prometheus.Registerer
	Logger     logr.Logger
}

// Discovery watches the installed Istio and keeps a Snapshot current. It
// implements the webhook's per-pod settings choice from caches only.
type Discovery struct {
	opts     Options
	base     *inject.Settings
	client   kubernetes.Interface
	meta     metadata.Interface
	snap     atomic.Pointer[Snapshot]
	synced   atomic.Bool
	gaveUp   atomic.Bool
	started  time.Time
	metrics  *metrics
	rebuildM sync.Mutex

	cmInformer, nsInformer, tagInformer cache.SharedIndexInformer
	// webhooksForbidden is set when Istio's webhook configurations cannot
	// be listed (RBAC); injection then guesses from Istio's labels.
	webhooksForbidden atomic.Bool
	lastStale         map[string]bool
	nsLister          listerscorev1.NamespaceLister
	factories         []informers.SharedInformerFactory

	staleMu sync.Mutex
	stale   []StaleAgent
	kick    chan struct{}
}

// New prepares a Discovery; Start runs it.
func New(cfg *rest.Config, opts Options) (*Discovery, error) {
	if opts.Namespace == "" {
		opts.Namespace = DefaultIstioNamespace
	}
	if opts.SyncTimeout == 0 {
		opts.SyncTimeout = 20 * time.Second
	}
	base, err := opts.Config.Resolve()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	d := &Discovery{opts: opts, base: base, client: cs, kick: make(chan struct{}, 1)}
	if opts.StaleScanInterval > 0 {
		if d.meta, err = metadata.NewForConfig(cfg); err != nil {
			return nil, err
		}
	}
	if d.metrics, err = newMetrics(opts.Registerer); err != nil {
		return nil, err
	}

	istioNS := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(opts.Namespace))
	cluster := informers.NewSharedInformerFactoryWithOptions(cs, 0)
	// Istio's sidecar injector and revision tag configurations both carry
	// istio.io/rev.
	tags := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = LabelRev
	}))
	d.factories = []informers.SharedInformerFactory{istioNS, cluster, tags}

	d.cmInformer = istioNS.Core().V1().ConfigMaps().Informer()
	nsInf := cluster.Core().V1().Namespaces()
	d.nsInformer, d.nsLister = nsInf.Informer(), nsInf.Lister()
	d.tagInformer = tags.Admissionregistration().V1().MutatingWebhookConfigurations().Informer()
	// Keep only what discovery reads: the other ConfigMaps of the Istio
	// namespace (and the injection templates) need not stay in memory.
	for inf, fn := range map[cache.SharedIndexInformer]cache.TransformFunc{
		d.cmInformer: trimConfigMap, d.nsInformer: trimNamespace, d.tagInformer: trimWebhooks,
	} {
		if err := inf.SetTransform(fn); err != nil {
			return nil, err
		}
	}
	// Only changes to what discovery reads rebuild the snapshot: istiod
	// renews its leader-election ConfigMaps every few seconds and patches
	// its webhooks' caBundle, and neither must cause a rebuild (or a
	// stale-agent scan and its log line).
	h := cache.FilteringResourceEventHandler{
		FilterFunc: relevant,
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { d.changed() },
			UpdateFunc: func(old, cur any) {
				if !sameContent(old, cur) {
					d.changed()
				}
			},
			DeleteFunc: func(any) { d.changed() },
		},
	}
	for _, inf := range []cache.SharedIndexInformer{d.cmInformer, d.tagInformer} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return nil, err
		}
	}
	if err := d.tagInformer.SetWatchErrorHandler(func(r *cache.Reflector, err error) {
		if apierrors.IsForbidden(err) {
			if !d.webhooksForbidden.Swap(true) {
				d.opts.Logger.Error(err, "cannot list Istio's MutatingWebhookConfigurations (RBAC): revision tags are unknown and Istio's own injection is guessed from its labels (istio-injection, istio.io/rev, sidecar.istio.io/inject); grant list/watch on mutatingwebhookconfigurations")
				d.changed()
			}
			return
		}
		cache.DefaultWatchErrorHandler(context.Background(), r, err)
	}); err != nil {
		return nil, err
	}
	return d, nil
}

// relevant keeps the objects discovery reads: the injector and mesh
// ConfigMaps, and Istio's webhook configurations.
func relevant(obj any) bool {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	switch o := obj.(type) {
	case *corev1.ConfigMap:
		_, injector := revisionOf(o.Name, InjectorConfigMap)
		_, mesh := revisionOf(o.Name, MeshConfigMap)
		return injector || mesh
	case *admissionregistrationv1.MutatingWebhookConfiguration:
		return true
	}
	return false
}

// sameContent compares two trimmed versions of an object.
func sameContent(old, cur any) bool {
	switch o := old.(type) {
	case *corev1.ConfigMap:
		c, ok := cur.(*corev1.ConfigMap)
		return ok && reflect.DeepEqual(o.Data, c.Data)
	case *admissionregistrationv1.MutatingWebhookConfiguration:
		c, ok := cur.(*admissionregistrationv1.MutatingWebhookConfiguration)
		return ok && reflect.DeepEqual(o.Labels, c.Labels) && reflect.DeepEqual(o.Webhooks, c.Webhooks)
	}
	return false
}

// WebhooksReadable reports whether Istio's webhook configurations can be
// listed (false after an RBAC refusal).
func (d *Discovery) WebhooksReadable() bool { return !d.webhooksForbidden.Load() }

func trimConfigMap(obj any) (any, error) {
	cm, ok := obj.(*corev1.ConfigMap)
	if !ok {
		return obj, nil
	}
	cm.ManagedFields = nil
	cm.Annotations = nil
	keep := map[string]string{}
	if _, isInjector := revisionOf(cm.Name, InjectorConfigMap); isInjector {
		if v, ok := cm.Data[keyValues]; ok {
			keep[keyValues] = v
		}
		// The injection policy, without the (large) templates.
		if v, ok := cm.Data[keyConfig]; ok {
			if p, err := ParseInjectionPolicy(v); err == nil {
				if b, err := json.Marshal(p); err == nil {
					keep[keyPolicy] = string(b)
				}
			}
		}
	} else if _, isMesh := revisionOf(cm.Name, MeshConfigMap); isMesh {
		if v, ok := cm.Data[keyMesh]; ok {
			keep[keyMesh] = v
		}
	}
	cm.Data, cm.BinaryData = keep, nil
	return cm, nil
}

func trimNamespace(obj any) (any, error) {
	if ns, ok := obj.(*corev1.Namespace); ok {
		ns.ManagedFields, ns.Annotations, ns.Spec, ns.Status = nil, nil, corev1.NamespaceSpec{}, corev1.NamespaceStatus{}
	}
	return obj, nil
}

func trimWebhooks(obj any) (any, error) {
	if w, ok := obj.(*admissionregistrationv1.MutatingWebhookConfiguration); ok {
		w.ManagedFields, w.Annotations = nil, nil
		for i := range w.Webhooks {
			w.Webhooks[i].ClientConfig.CABundle = nil
		}
	}
	return obj, nil
}

// Start runs the informers until ctx ends. It returns at once if ctx ends
// before the caches sync; the webhook stays usable meanwhile (Resolve
// falls back to the configuration).
func (d *Discovery) Start(ctx context.Context) error {
	d.started = time.Now()
	for _, f := range d.factories {
		f.Start(ctx.Done())
	}
	syncCtx, cancel := context.WithTimeout(ctx, d.opts.SyncTimeout)
	ok := cache.WaitForCacheSync(syncCtx.Done(), d.cmInformer.HasSynced, d.nsInformer.HasSynced, d.webhooksSyncedOrForbidden)
	cancel()
	if !ok && ctx.Err() == nil {
		d.gaveUp.Store(true)
		d.opts.Logger.Error(errors.New("caches not synced"), "Istio discovery could not list its objects in time; injecting with the configuration alone until it can (check the RBAC for ConfigMaps in the Istio namespace, namespaces and mutatingwebhookconfigurations)",
			"istioNamespace", d.opts.Namespace, "after", d.opts.SyncTimeout)
		ok = cache.WaitForCacheSync(ctx.Done(), d.cmInformer.HasSynced, d.nsInformer.HasSynced, d.webhooksSyncedOrForbidden)
	}
	if !ok {
		for _, f := range d.factories {
			f.Shutdown()
		}
		return nil
	}
	// The first snapshot exists before Synced (and readiness) says so;
	// changes that arrived while it was built are caught by the second.
	d.rebuild()
	d.synced.Store(true)
	d.metrics.synced.Set(1)
	d.rebuild()
	if d.meta != nil && d.opts.StaleScanInterval > 0 {
		go d.scanLoop(ctx)
	}
	<-ctx.Done()
	for _, f := range d.factories {
		f.Shutdown()
	}
	return nil
}

func (d *Discovery) webhooksSyncedOrForbidden() bool {
	return d.tagInformer.HasSynced() || d.webhooksForbidden.Load()
}

// Synced reports whether the first lists completed.
func (d *Discovery) Synced() bool { return d.synced.Load() }

// ReadyCheck is a /readyz checker: ready once the caches synced, or once
// SyncTimeout passed (readiness must not depend on Istio or on discovery
// being able to read it).
func (d *Discovery) ReadyCheck(*http.Request) error {
	if d.synced.Load() || d.gaveUp.Load() {
		return nil
	}
	return fmt.Errorf("istio discovery: waiting for the first list of ConfigMaps in %s (at most %s)", d.opts.Namespace, d.opts.SyncTimeout)
}

// Snapshot is the current discovered state (nil before the first sync).
func (d *Discovery) Snapshot() *Snapshot { return d.snap.Load() }

func (d *Discovery) changed() {
	if d.synced.Load() {
		d.rebuild()
	}
}

// rebuild recomputes the snapshot from the informer caches.
func (d *Discovery) rebuild() {
	d.rebuildM.Lock()
	defer d.rebuildM.Unlock()
	in := Input{Config: d.opts.Config, Explicit: d.opts.Explicit, Namespace: d.opts.Namespace,
		WebhooksUnknown: !d.tagInformer.HasSynced()}
	for _, o := range d.cmInformer.GetStore().List() {
		if cm, ok := o.(*corev1.ConfigMap); ok {
			in.ConfigMaps = append(in.ConfigMaps, cm)
		}
	}
	for _, o := range d.tagInformer.GetStore().List() {
		if w, ok := o.(*admissionregistrationv1.MutatingWebhookConfiguration); ok {
			in.Webhooks = append(in.Webhooks, w)
		}
	}
	next := Build(in, d.base)
	prev := d.snap.Swap(next)
	d.report(prev, next)
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// report logs what changed and updates the revision metrics.
func (d *Discovery) report(prev, next *Snapshot) {
	log := d.opts.Logger
	if prev == nil {
		if len(next.Revisions) == 0 {
			log.Info("no Istio installation found: injecting with the configuration and built-in defaults", "istioNamespace", d.opts.Namespace)
		}
		prev = &Snapshot{Revisions: map[string]*Revision{}, Tags: map[string]string{}}
	}
	for _, name := range next.Names() {
		r, old := next.Revisions[name], prev.Revisions[name]
		if old != nil && sameRevision(old, r) {
			continue
		}
		if r.Err != nil {
			log.Error(r.Err, "Istio revision cannot be used", "revision", name)
			continue
		}
		log.Info("Istio revision discovered", "revision", name, "version", r.Version, "image", r.Image,
			"caAddress", r.Settings.CAAddress(), "trustDomain", r.Settings.TrustDomain(), "clusterID", r.Settings.ClusterID(),
			"meshID", r.Settings.MeshID(), "notes", r.Notes, "changed", old != nil)
	}
	for _, name := range prev.Names() {
		if next.Revisions[name] == nil {
			log.Info("Istio revision removed", "revision", name)
		}
	}
	if !reflect.DeepEqual(prev.Tags, next.Tags) || prev.Default != next.Default {
		log.Info("Istio revision tags", "tags", next.Tags, "default", next.Default)
	}
	d.metrics.revisions.Reset()
	for _, name := range next.Names() {
		r := next.Revisions[name]
		d.metrics.revisions.WithLabelValues(name, r.Version, r.Image, fmt.Sprint(name == next.Default)).Set(1)
	}
}

func sameRevision(a, b *Revision) bool {
	if (a.Err == nil) != (b.Err == nil) || a.Settings == nil || b.Settings == nil {
		return a.Err != nil && b.Err != nil && a.Err.Error() == b.Err.Error()
	}
	return a.Image == b.Image && a.Version == b.Version &&
		a.Settings.CAAddress() == b.Settings.CAAddress() && a.Settings.DiscoveryAddress() == b.Settings.DiscoveryAddress() &&
		a.Settings.TrustDomain() == b.Settings.TrustDomain() && a.Settings.ClusterID() == b.Settings.ClusterID() &&
		a.Settings.MeshID() == b.Settings.MeshID() && a.Settings.TokenAudience() == b.Settings.TokenAudience() &&
		reflect.DeepEqual(a.Notes, b.Notes)
}

// NamespaceLabels reads a namespace's labels from the informer cache (nil
// when the namespace is not, or not yet, known).
func (d *Discovery) NamespaceLabels(name string) map[string]string {
	ns, err := d.nsLister.Get(name)
	if err != nil {
		if !apierrors.IsNotFound(err) {
			d.opts.Logger.V(1).Info("namespace lookup", "namespace", name, "error", err.Error())
		}
		return nil
	}
	return ns.Labels
}

// Select chooses the settings for a pod, from caches only.
func (d *Discovery) Select(pod *corev1.Pod) Selection {
	s := d.snap.Load()
	if s == nil {
		return Selection{Settings: d.base}
	}
	return s.Resolve(pod, d.NamespaceLabels(pod.Namespace))
}

// Resolve implements the webhook's settings choice (server.Resolver): the
// pod's revision settings, a problem when the revision it asks for cannot
// be used, Istio's own injector acting on the pod (nil when none does),
// and the labels of the pod's namespace (one cache read for all of them).
func (d *Discovery) Resolve(pod *corev1.Pod) (*inject.Settings, string, *inject.IstioInjection, map[string]string) {
	nsLabels := d.NamespaceLabels(pod.Namespace)
	s := d.snap.Load()
	if s == nil {
		return d.base, "", nil, nsLabels
	}
	sel := s.Resolve(pod, nsLabels)
	return sel.Settings, sel.Problem, s.IstioInjection(pod, nsLabels), nsLabels
}
