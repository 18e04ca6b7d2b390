package istiod

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sds-injector/sds-injector/test/controlplane"
)

// A real Istio install for tests: Istio's own istio-discovery chart (it
// ships inside the istio.io/istio module) rendered by the real helm, its
// ConfigMaps, Services and sidecar-injector MutatingWebhookConfigurations
// applied to the local apiserver, and one real istiod per revision serving
// injection. Differences from a cluster install, all forced by running
// istiod as a local process: the webhooks call istiod by URL on loopback
// (the chart's own istiodRemote.injectionURL value), and each istiod
// Service gets an EndpointSlice with one ready endpoint at 192.0.2.1
// (TEST-NET-1; the apiserver refuses loopback endpoints), standing for the
// istiod pod a cluster would list. Nothing connects to it: only `check`
// reads it, through the API, as it reads a cluster's. The chart's RBAC,
// Deployment and validating webhook are not applied (istiod runs with the
// control plane's admin kubeconfig).

// RevisionSpec is one revision to install.
type RevisionSpec struct {
	// Revision is the chart's `revision` value ("" for the default
	// install).
	Revision string
	// Tags are revision tags pointing at it (chart value revisionTags).
	Tags []string
	// Values are extra `--set` values (e.g. global.tag=1.28.10).
	Values []string
}

// Install is a running Istio install.
type Install struct {
	Namespace string
	// Istiods by revision ("default" for the install without one).
	Istiods map[string]*Istiod
	// objects created, deleted by Uninstall (webhook configurations first).
	objects []client.Object
	cp      *controlplane.ControlPlane
}

// InstallIstio renders and applies each revision and starts its istiod.
// helm is the helm binary; opts are the istiod options (Revision is set per
// revision). On error everything started is stopped.
func InstallIstio(ctx context.Context, cp *controlplane.ControlPlane, helm string, opts Options, revs ...RevisionSpec) (_ *Install, retErr error) {
	if opts.Namespace == "" {
		opts.Namespace = "istio-system"
	}
	modDir, err := ModuleDir(ctx, opts.ModuleVersion)
	if err != nil {
		return nil, err
	}
	chart := filepath.Join(modDir, "manifests", "charts", "istio-control", "istio-discovery")
	in := &Install{Namespace: opts.Namespace, Istiods: map[string]*Istiod{}, cp: cp}
	defer func() {
		if retErr != nil {
			_ = in.Uninstall(context.Background())
		}
	}()
	if err := cp.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: opts.Namespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	for _, rev := range revs {
		// The URL is a placeholder until istiod's port is known.
		docs, err := renderChart(ctx, helm, chart, opts.Namespace, rev, "https://localhost:1/inject")
		if err != nil {
			return nil, err
		}
		var webhooks []*admissionregistrationv1.MutatingWebhookConfiguration
		var services []*corev1.Service
		for _, doc := range docs {
			var meta metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				return nil, err
			}
			switch meta.Kind {
			case "ConfigMap":
				var cm corev1.ConfigMap
				if err := yaml.UnmarshalStrict(doc, &cm); err != nil {
					return nil, fmt.Errorf("rendered ConfigMap: %w", err)
				}
				if err := in.create(ctx, &cm); err != nil {
					return nil, err
				}
			case "MutatingWebhookConfiguration":
				var w admissionregistrationv1.MutatingWebhookConfiguration
				if err := yaml.UnmarshalStrict(doc, &w); err != nil {
					return nil, fmt.Errorf("rendered MutatingWebhookConfiguration: %w", err)
				}
				webhooks = append(webhooks, &w)
			case "Service":
				var svc corev1.Service
				if err := yaml.UnmarshalStrict(doc, &svc); err != nil {
					return nil, fmt.Errorf("rendered Service: %w", err)
				}
				services = append(services, &svc)
			}
		}
		o := opts
		o.Revision = rev.Revision
		i, err := Start(ctx, cp, o)
		if err != nil {
			return nil, fmt.Errorf("istiod revision %q: %w", revisionOr(rev.Revision), err)
		}
		in.Istiods[revisionOr(rev.Revision)] = i
		for _, svc := range services {
			if err := in.serviceFor(ctx, svc, i); err != nil {
				return nil, err
			}
		}
		url := "https://" + i.WebhookAddr + "/inject"
		for _, w := range webhooks {
			for j := range w.Webhooks {
				w.Webhooks[j].ClientConfig.URL = &url
			}
			if err := in.create(ctx, w); err != nil {
				return nil, err
			}
		}
		// istiod patches the caBundle of its revision's webhooks itself;
		// until it has, the apiserver cannot call them.
		for _, w := range webhooks {
			if err := waitCABundle(ctx, cp, w.Name); err != nil {
				return nil, fmt.Errorf("%w\nistiod log (tail):\n%s", err, i.LogTail(40))
			}
		}
	}
	return in, nil
}

func renderChart(ctx context.Context, helm, chart, ns string, rev RevisionSpec, url string) ([][]byte, error) {
	args := []string{"template", "istiod", chart, "--namespace", ns, "--set", "istiodRemote.injectionURL=" + url}
	if rev.Revision != "" {
		args = append(args, "--set", "revision="+rev.Revision)
	}
	if len(rev.Tags) > 0 {
		args = append(args, "--set", "revisionTags={"+strings.Join(rev.Tags, ",")+"}")
	}
	for _, v := range rev.Values {
		args = append(args, "--set", v)
	}
	cmd := exec.CommandContext(ctx, helm, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	var docs [][]byte
	for _, d := range bytes.Split(out, []byte("\n---")) {
		if len(bytes.TrimSpace(d)) > 0 {
			docs = append(docs, d)
		}
	}
	return docs, nil
}

// serviceFor applies a rendered istiod Service with an EndpointSlice
// standing for its pod (the chart's target ports).
func (in *Install) serviceFor(ctx context.Context, svc *corev1.Service, i *Istiod) error {
	svc.Spec.ClusterIP, svc.Spec.ClusterIPs = "", nil
	if err := in.create(ctx, svc); err != nil {
		return err
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc.Name + "-local", Namespace: svc.Namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: "sds-injector-tests"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}
	for _, p := range svc.Spec.Ports {
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptr.To(p.Name), Port: ptr.To(p.TargetPort.IntVal), Protocol: ptr.To(corev1.ProtocolTCP)})
	}
	return in.create(ctx, slice)
}

func (in *Install) create(ctx context.Context, obj client.Object) error {
	if obj.GetNamespace() == "" {
		if _, namespaced := obj.(*corev1.ConfigMap); namespaced {
			obj.SetNamespace(in.Namespace)
		}
	}
	if err := in.cp.Client.Create(ctx, obj); err != nil {
		return fmt.Errorf("creating %T %s: %w", obj, obj.GetName(), err)
	}
	in.objects = append(in.objects, obj)
	return nil
}

func waitCABundle(ctx context.Context, cp *controlplane.ControlPlane, name string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		var w admissionregistrationv1.MutatingWebhookConfiguration
		if err := cp.Client.Get(ctx, client.ObjectKey{Name: name}, &w); err != nil {
			return false, nil
		}
		for _, wh := range w.Webhooks {
			if len(wh.ClientConfig.CABundle) == 0 {
				return false, nil
			}
		}
		return true, nil
	})
}

// Webhooks are the installed sidecar-injector configurations.
func (in *Install) Webhooks() []string {
	var out []string
	for _, o := range in.objects {
		if _, ok := o.(*admissionregistrationv1.MutatingWebhookConfiguration); ok {
			out = append(out, o.GetName())
		}
	}
	return out
}

// RemoveWebhook deletes one installed webhook configuration (e.g. a tag).
func (in *Install) RemoveWebhook(ctx context.Context, name string) error {
	return client.IgnoreNotFound(in.cp.Client.Delete(ctx, &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name}}))
}

// Uninstall removes Istio: webhook configurations first (so no pod
// creation calls a stopped istiod), then the istiods, then the objects.
func (in *Install) Uninstall(ctx context.Context) error {
	var errs []error
	for _, o := range in.objects {
		if _, ok := o.(*admissionregistrationv1.MutatingWebhookConfiguration); ok {
			errs = append(errs, client.IgnoreNotFound(in.cp.Client.Delete(ctx, o)))
		}
	}
	for _, i := range in.Istiods {
		errs = append(errs, i.Stop())
	}
	for _, o := range in.objects {
		if _, ok := o.(*admissionregistrationv1.MutatingWebhookConfiguration); !ok {
			errs = append(errs, client.IgnoreNotFound(in.cp.Client.Delete(ctx, o)))
		}
	}
	in.objects = nil
	return errors.Join(errs...)
}
