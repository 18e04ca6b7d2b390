package check

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// --- webhook configurations -------------------------------------------------

func (k *Env) checkWebhookConfigurations(ctx context.Context) Result {
	res := Result{Name: checkWebhooks, Status: StatusPass}
	var installed, missing []string
	for _, name := range k.opts.WebhookConfigurations {
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		err := k.c.Get(ctx, types.NamespacedName{Name: name}, &mwc)
		if apierrors.IsNotFound(err) {
			missing = append(missing, name)
			res.Details = append(res.Details, name+": not installed")
			continue
		}
		if err != nil {
			return failed(res, fmt.Sprintf("reading MutatingWebhookConfiguration %s: %v", name, err))
		}
		k.mwcs = append(k.mwcs, &mwc)
		installed = append(installed, name)
		var problems []string
		cas := 0
		for _, w := range mwc.Webhooks {
			if len(w.ClientConfig.CABundle) == 0 {
				problems = append(problems, fmt.Sprintf("webhook %s has no caBundle", w.Name))
				continue
			}
			certs, err := parseCerts(w.ClientConfig.CABundle)
			if err != nil || len(certs) == 0 {
				problems = append(problems, fmt.Sprintf("webhook %s: caBundle holds no valid certificate", w.Name))
				continue
			}
			cas = len(certs)
		}
		if len(problems) > 0 {
			res.Status = StatusFail
			res.Details = append(res.Details, fmt.Sprintf("%s: %s", name, strings.Join(problems, "; ")))
			if ref := mwc.Annotations[cmapi.WantInjectAnnotation]; ref != "" {
				res.Fix = append(res.Fix, fmt.Sprintf("%s: cert-manager's cainjector fills caBundle from Certificate %s: is cert-manager (with cainjector) running and the Certificate Ready? kubectl get certificate -n %s",
					name, ref, strings.Split(ref, "/")[0]))
			} else {
				res.Fix = append(res.Fix, fmt.Sprintf("%s: the injector fills caBundle itself in self-managed mode: are its pods running? kubectl -n %s logs deploy/sds-injector", name, k.opts.Namespace))
			}
			continue
		}
		res.Details = append(res.Details, fmt.Sprintf("%s: %d webhook(s), caBundle with %d CA certificate(s)", name, len(mwc.Webhooks), cas))
	}
	switch {
	case len(installed) == 0:
		res.Status = StatusFail
		res.Message = "no sds-injector webhook configuration is installed (" + strings.Join(missing, ", ") + ")"
		res.Fix = append(res.Fix, "install the chart (deploy/helm/sds-injector) or a file from deploy/manifests")
	case res.Status == StatusFail:
		res.Message = "a webhook configuration cannot be trusted by the API server"
	default:
		res.Message = fmt.Sprintf("%d of %d installed: %s", len(installed), len(k.opts.WebhookConfigurations), strings.Join(installed, ", "))
	}
	return res
}

func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// --- webhook endpoints ------------------------------------------------------

func (k *Env) checkWebhookEndpoints(ctx context.Context) Result {
	res := Result{Name: checkEndpoints, Status: StatusPass}
	type svcRef struct {
		ns, name string
		port     int32
	}
	var refs []svcRef
	for _, mwc := range k.mwcs {
		for _, w := range mwc.Webhooks {
			if s := w.ClientConfig.Service; s != nil {
				port := int32(443)
				if s.Port != nil {
					port = *s.Port
				}
				r := svcRef{s.Namespace, s.Name, port}
				if !slices.Contains(refs, r) {
					refs = append(refs, r)
				}
			}
		}
	}
	if len(refs) == 0 {
		return skipped(res, "no webhook is served through a Service")
	}
	for _, r := range refs {
		ready, total, err := readyEndpoints(ctx, k.c, r.ns, r.name, r.port)
		label := fmt.Sprintf("Service %s/%s port %d", r.ns, r.name, r.port)
		switch {
		case err != nil:
			res.Status = StatusFail
			res.Details = append(res.Details, fmt.Sprintf("%s: %v", label, err))
		case ready == 0:
			res.Status = StatusFail
			res.Details = append(res.Details, fmt.Sprintf("%s: no ready endpoints (%d not ready)", label, total))
			res.Fix = appendUnique(res.Fix, fmt.Sprintf("kubectl -n %s get pods,endpointslices -l app.kubernetes.io/name=sds-injector: are the injector pods running and ready?", r.ns))
		default:
			res.Details = append(res.Details, fmt.Sprintf("%s: %d ready endpoint(s)", label, ready))
		}
	}
	if res.Status == StatusFail {
		res.Message = "the API server cannot reach a ready webhook pod"
	} else {
		res.Message = fmt.Sprintf("%d Service(s) with ready endpoints", len(refs))
	}
	return res
}

// readyEndpoints counts the endpoints of a Service's port as the API server
// picks them for webhooks: EndpointSlice ports with the Service port's
// name, endpoints whose ready condition is not false.
func readyEndpoints(ctx context.Context, c client.Client, ns, name string, port int32) (ready, total int, err error) {
	var svc corev1.Service
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &svc); err != nil {
		if apierrors.IsNotFound(err) {
			return 0, 0, errors.New("the Service does not exist")
		}
		return 0, 0, err
	}
	portName, found := "", false
	for _, p := range svc.Spec.Ports {
		if p.Port == port {
			portName, found = p.Name, true
		}
	}
	if !found {
		return 0, 0, fmt.Errorf("the Service has no port %d", port)
	}
	var slicesList discoveryv1.EndpointSliceList
	if err := c.List(ctx, &slicesList, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: name}); err != nil {
		return 0, 0, err
	}
	for _, s := range slicesList.Items {
		hasPort := false
		for _, p := range s.Ports {
			if p.Port != nil && ((p.Name == nil && portName == "") || (p.Name != nil && *p.Name == portName)) {
				hasPort = true
			}
		}
		if !hasPort {
			continue
		}
		for _, e := range s.Endpoints {
			total++
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				ready++
			}
		}
	}
	return ready, total, nil
}
