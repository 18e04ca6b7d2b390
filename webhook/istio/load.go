package istio

import (
	"context"
	"fmt"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Load builds a Snapshot with one list of each kind of object, for the
// one-shot commands (`inject --kubeconfig`, `check`). The webhook uses
// Discovery, which watches instead.
func Load(ctx context.Context, c client.Reader, in Input) (*Snapshot, error) {
	if in.Namespace == "" {
		in.Namespace = DefaultIstioNamespace
	}
	base, err := in.Config.Resolve()
	if err != nil {
		return nil, err
	}
	var cms corev1.ConfigMapList
	if err := c.List(ctx, &cms, client.InNamespace(in.Namespace)); err != nil {
		return nil, fmt.Errorf("listing ConfigMaps in %s: %w", in.Namespace, err)
	}
	for i := range cms.Items {
		in.ConfigMaps = append(in.ConfigMaps, &cms.Items[i])
	}
	// Istio's sidecar injector and revision tag configurations.
	req, err := labels.NewRequirement(LabelRev, selection.Exists, nil)
	if err != nil {
		return nil, err
	}
	var mwcs admissionregistrationv1.MutatingWebhookConfigurationList
	switch err := c.List(ctx, &mwcs, client.MatchingLabelsSelector{Selector: labels.NewSelector().Add(*req)}); {
	case apierrors.IsForbidden(err):
		in.WebhooksUnknown = true
	case err != nil:
		return nil, fmt.Errorf("listing Istio's webhook configurations (mutatingwebhookconfigurations): %w", err)
	}
	for i := range mwcs.Items {
		in.Webhooks = append(in.Webhooks, &mwcs.Items[i])
	}
	return Build(in, base), nil
}

// Describe summarises a revision for humans (check, logs).
func (r *Revision) Describe() string {
	if r.Err != nil {
		return fmt.Sprintf("%s: unusable: %v", r.Name, r.Err)
	}
	s := r.Settings
	return fmt.Sprintf("%s: Istio %s, image %s, CA %s, trust domain %s, cluster ID %s, mesh ID %s",
		r.Name, r.Version, r.Image, s.CAAddress(), s.TrustDomain(), s.ClusterID(), s.MeshID())
}
