package check

import (
	"context"
)

// IDs of the checks.
const (
	checkConfiguration = "configuration"
	checkWebhooks      = "webhook-configurations"
	checkServingCert   = "serving-certificate"
	checkEndpoints     = "webhook-endpoints"
	checkIstiod        = "istiod-address"
	checkRootCert      = "istio-root-cert"
	checkGatewayPods   = "gateway-pods"

	checkProfileConditions = "gateway-profile-conditions"
)

// method adapts a method expression of Env to Check.Run.
func method(f func(*Env, context.Context) Result) func(context.Context, *Env) Result {
	return func(ctx context.Context, k *Env) Result { return f(k, ctx) }
}

func istioAuto(k *Env) bool { return k.settings != nil && k.cfg.Istio.Auto() }

// All returns sds-injector's checks, in run order.
func All() []Check {
	return []Check{
		{
			ID: checkConfiguration, Category: CategoryConfiguration, Severity: Fatal,
			Description: "the injector's configuration (ConfigMap --config-map in --namespace, or --config) is valid",
			Hint:        "validate the file offline with: sds-injector inject --config FILE -f some-pod.yaml (docs/configuration.md)",
			Run:         method((*Env).checkConfiguration),
		},
		{
			ID: checkWebhooks, Category: CategoryWebhook, Severity: Error,
			Description: "the MutatingWebhookConfigurations exist and carry a caBundle",
			Hint:        "kubectl get mutatingwebhookconfigurations -l app.kubernetes.io/name=sds-injector",
			Run:         method((*Env).checkWebhookConfigurations),
		},
		{
			ID: checkServingCert, Category: CategoryWebhook, Severity: Error,
			Description: "the serving certificate verifies against each caBundle for the name the API server uses (<service>.<namespace>.svc) and is not within --min-validity of expiry",
			Hint:        "the API server rejects (failurePolicy Fail) or bypasses (Ignore) the webhook until the certificate verifies",
			Run:         method((*Env).checkServingCertificates),
		},
		{
			ID: checkEndpoints, Category: CategoryWebhook, Severity: Error,
			Description: "the webhook Service has ready endpoints (EndpointSlices) on the called port",
			Hint:        "kubectl -n <namespace> get pods,endpointslices -l app.kubernetes.io/name=sds-injector",
			Run:         method((*Env).checkWebhookEndpoints),
		},
		{
			ID: checkIstiod, Category: CategoryIstio, Severity: Error, Needs: []string{checkConfiguration},
			Description: "istiod's CA address resolves (a <svc>.<ns>.svc name through the API, as cluster DNS would; any other name through DNS from where check runs)",
			Hint:        "injected agents cannot get certificates without istiod: set caAddress (docs/configuration.md)",
			Run:         method((*Env).checkIstiodAddress),
		},
		{
			ID: checkIstioRevisions, Category: CategoryIstio, Severity: Error, Needs: []string{checkConfiguration},
			Description: "with istio: auto, the Istio revisions and tags found in --istio-namespace and what each injects (image, CA address, trust domain)",
			Hint:        "docs/discovery.md",
			Applies:     istioAuto,
			Run:         method((*Env).checkIstio),
		},
		{
			ID: checkStaleAgents, Category: CategoryIstio, Severity: Error, Needs: []string{checkConfiguration},
			Description: "with istio: auto, injected pods whose agent no longer matches their installed revision (after an Istio upgrade), with the command that re-injects them",
			Hint:        "restart the listed workloads after an Istio upgrade",
			Applies: func(k *Env) bool {
				return istioAuto(k) && k.snapOK && k.snapErr == nil && k.snap != nil && len(k.snap.Revisions) > 0
			},
			Run: method((*Env).checkStaleAgents),
		},
		{
			ID: checkProfileConditions, Category: CategoryWebhook, Severity: Error, Needs: []string{checkConfiguration},
			Description: "every gateway profile of the configuration passes the looks-like-a-gateway match condition of each installed webhook that has one (namespace and cluster-wide mode): a profile added to the configuration alone is never sent to the webhook",
			Hint:        "give extra profiles as the chart's config.gatewayProfiles, which renders the condition too (docs/configuration.md)",
			Run:         method((*Env).checkProfileConditions),
		},
		{
			ID: checkGatewayPods, Category: CategoryGateways, Severity: Error, Needs: []string{checkConfiguration},
			Description: "running gateway pods that the webhook would inject now but that lack the agent (created while the webhook was down, or before they were opted in)",
			Hint:        "restart the listed workloads so that the webhook sees their pods created",
			Run:         method((*Env).checkGatewayPods),
		},
		{
			ID: checkRootCert, Category: CategoryGateways, Severity: Error, Needs: []string{checkConfiguration},
			Description: "every opted-in namespace has istiod's root ConfigMap (istio-ca-root-cert)",
			Hint:        "istiod publishes the root ConfigMap into the namespaces it manages",
			Run:         method((*Env).checkRootCerts),
		},
		{
			ID: checkSPIRERegistration, Category: CategoryGateways, Severity: Error, Needs: []string{checkConfiguration},
			Description: "with identityProvider.spire, gateway pods injected with the spire flavor that no ClusterSPIFFEID (spire-controller-manager) selects; a warning when the CRD is absent or unreadable",
			Hint:        "docs/spire.md",
			Applies:     func(k *Env) bool { return k.settings != nil && k.settings.SPIREEnabled() },
			Run:         method((*Env).checkSPIRERegistration),
		},
	}
}
