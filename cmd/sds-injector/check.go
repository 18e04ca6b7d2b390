package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/google/cel-go/cel"
	"github.com/spf13/cobra"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/istio"
)

// Statuses of a check.
type checkStatus string

const (
	statusPass checkStatus = "pass"
	statusWarn checkStatus = "warn"
	statusFail checkStatus = "fail"
	statusSkip checkStatus = "skip"
)

// Names of the checks, in the order they are reported.
const (
	checkConfiguration = "configuration"
	checkWebhooks      = "webhook-configurations"
	checkServingCert   = "serving-certificate"
	checkEndpoints     = "webhook-endpoints"
	checkIstiod        = "istiod-address"
	checkRootCert      = "istio-root-cert"
	checkGatewayPods   = "gateway-pods"
)

// checkResult is one check's outcome.
type checkResult struct {
	Name    string      `json:"name"`
	Status  checkStatus `json:"status"`
	Message string      `json:"message"`
	Details []string    `json:"details,omitempty"`
	// Fix says what to do about a warning or failure.
	Fix []string `json:"fix,omitempty"`
	// Pods lists the gateway pods the gateway-pods check is about.
	Pods []podFinding `json:"pods,omitempty"`
}

// podFinding is a running gateway pod that lacks the agent.
type podFinding struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Owner is the workload to restart, e.g. "deployment/gateway-proxy".
	Owner   string `json:"owner,omitempty"`
	Profile string `json:"profile,omitempty"`
	// Problem is "not-injected" (it would be injected if created now) or
	// the engine's reason why it cannot be injected.
	Problem string `json:"problem"`
	Message string `json:"message,omitempty"`
	Command string `json:"command,omitempty"`
}

type checkReport struct {
	Cluster   string         `json:"cluster"`
	Namespace string         `json:"namespace"`
	OK        bool           `json:"ok"`
	Summary   map[string]int `json:"summary"`
	Checks    []checkResult  `json:"checks"`
}

type checkOptions struct {
	kubeconfig, context string
	namespace           string
	configMap           string
	certSecret          string
	webhookConfigs      []string
	output              string
	minValidity         time.Duration
	dial                string
	timeout             time.Duration
	ef                  engineFlags
	istio               istioFlags
}

func newCheckCommand() *cobra.Command {
	o := checkOptions{}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check a live installation: webhook, certificates, endpoints, istiod, gateways",
		Long: `Runs preflight and health checks against the cluster of the current kubeconfig context:

  configuration           the injector's configuration (ConfigMap --config-map in --namespace, or --config) is valid
  webhook-configurations  the MutatingWebhookConfigurations exist and carry a caBundle
  serving-certificate     the serving certificate verifies against each caBundle for the name the API
                          server uses (<service>.<namespace>.svc) and is not within --min-validity of expiry
  webhook-endpoints       the webhook Service has ready endpoints (EndpointSlices) on the called port
  istiod-address          istiod's CA address resolves (a <svc>.<ns>.svc name through the API, as cluster
                          DNS would; any other name through DNS from where check runs)
  istio-root-cert         every opted-in namespace has istiod's root ConfigMap (istio-ca-root-cert)
  gateway-pods            running gateway pods that the webhook would inject now but that lack the agent
                          (created while the webhook was down, or before they were opted in)
  istio-revisions         with istio: auto, the Istio revisions and tags found in --istio-namespace and
                          what each injects (image, CA address, trust domain)
  stale-agents            with istio: auto, injected pods whose agent no longer matches their installed
                          revision (after an Istio upgrade), with the command that re-injects them
  spire-registration      with identityProvider.spire, gateway pods injected with the spire flavor that no
                          ClusterSPIFFEID (spire-controller-manager) selects; a warning when the CRD is absent
                          or unreadable

The serving certificate is read from the Secret the pods serve it from (the cert-manager Certificate
named by cert-manager.io/inject-ca-from, else --cert-secret), because a Service's address is usually not
reachable from outside the cluster. --dial verifies the certificate a running pod really presents, e.g.
through "kubectl -n sds-injector port-forward svc/sds-injector 9443:443" and --dial 127.0.0.1:9443.
Webhooks configured with a URL are always dialled.

Exit status: 0 when every check passes (warnings allowed), 2 when a check fails, 1 when check itself
could not run.`,
		Example: `  sds-injector check
  sds-injector check -o json
  sds-injector check --namespace sds-injector --dial 127.0.0.1:9443`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.output != "text" && o.output != "json" {
				return fmt.Errorf("--output %q: use text or json", o.output)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			c, host, err := o.client()
			if err != nil {
				return err
			}
			r := (&checker{opts: &o, c: c, cmd: cmd, now: time.Now()}).run(ctx)
			r.Cluster = host
			if err := writeReport(cmd.OutOrStdout(), r, o.output); err != nil {
				return err
			}
			if !r.OK {
				return &partialError{fmt.Sprintf("%d check(s) failed", r.Summary[string(statusFail)])}
			}
			return nil
		},
	}
	o.ef.register(cmd)
	o.istio.register(cmd, false, false)
	fs := cmd.Flags()
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&o.context, "context", "", "kubeconfig context (default the current context)")
	fs.StringVarP(&o.namespace, "namespace", "n", "sds-injector", "namespace of the injector")
	fs.StringVar(&o.configMap, "config-map", "sds-injector", "ConfigMap (key config.yaml) holding the injector's configuration; --config reads a file instead")
	fs.StringVar(&o.certSecret, "cert-secret", "sds-injector-tls", "Secret holding the serving certificate when the webhook configuration does not name a cert-manager Certificate")
	fs.StringSliceVar(&o.webhookConfigs, "webhook-configurations", DefaultWebhookConfigurations, "MutatingWebhookConfigurations of the injector (missing ones are reported as not installed)")
	fs.StringVarP(&o.output, "output", "o", "text", "output format: text or json")
	fs.DurationVar(&o.minValidity, "min-validity", 7*24*time.Hour, "fail when the serving certificate expires sooner than this (renewal normally happens 30 days before expiry)")
	fs.StringVar(&o.dial, "dial", "", "host:port at which to fetch the certificate a webhook pod presents (e.g. a kubectl port-forward)")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "overall time limit")
	return cmd
}

func (o *checkOptions) client() (client.Client, string, error) {
	cfg, err := restConfig(o.kubeconfig, o.context)
	if err != nil {
		return nil, "", err
	}
	cfg.QPS, cfg.Burst = 50, 100
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, "", err
	}
	if err := cmapi.AddToScheme(scheme); err != nil {
		return nil, "", err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, "", err
	}
	return c, cfg.Host, nil
}

// checker runs the checks; each check reads what it needs from the API.
type checker struct {
	opts *checkOptions
	c    client.Client
	cmd  *cobra.Command
	now  time.Time

	cfg      inject.Config
	set      inject.Presence
	settings *inject.Settings
	mwcs     []*admissionregistrationv1.MutatingWebhookConfiguration
	ns       map[string]*corev1.Namespace
	cel      map[string]celProgram
	rsOwner  map[types.NamespacedName]string

	// snap is the installed Istio (istio: auto), loaded once by istioSnapshot.
	snap    *istio.Snapshot
	snapErr error
	snapOK  bool
}

func (k *checker) run(ctx context.Context) *checkReport {
	r := &checkReport{Namespace: k.opts.namespace, Summary: map[string]int{}}
	add := func(res checkResult) { r.Checks = append(r.Checks, res) }

	add(k.checkConfiguration(ctx))
	add(k.checkWebhookConfigurations(ctx))
	add(k.checkServingCertificates(ctx))
	add(k.checkWebhookEndpoints(ctx))
	add(k.checkIstiodAddress(ctx))
	pods, podNamespaces := k.checkGatewayPods(ctx)
	add(k.checkRootCerts(ctx, podNamespaces))
	add(pods)
	for _, res := range k.checkIstio(ctx) {
		add(res)
	}
	if k.settings != nil && k.settings.SPIREEnabled() {
		add(k.checkSPIRERegistration(ctx))
	}

	r.OK = true
	for _, c := range r.Checks {
		r.Summary[string(c.Status)]++
		if c.Status == statusFail {
			r.OK = false
		}
	}
	return r
}

// --- configuration ---------------------------------------------------------

func (k *checker) checkConfiguration(ctx context.Context) checkResult {
	res := checkResult{Name: checkConfiguration}
	var data []byte
	source := ""
	switch {
	case k.opts.ef.configFile != "":
		b, err := os.ReadFile(k.opts.ef.configFile)
		if err != nil {
			return failed(res, err.Error())
		}
		data, source = b, "file "+k.opts.ef.configFile
	default:
		var cm corev1.ConfigMap
		err := k.c.Get(ctx, types.NamespacedName{Namespace: k.opts.namespace, Name: k.opts.configMap}, &cm)
		switch {
		case apierrors.IsNotFound(err):
			source = "built-in defaults"
			res.Status = statusWarn
			res.Fix = append(res.Fix, fmt.Sprintf("ConfigMap %s/%s not found: the checks assume the built-in defaults; pass --config-map or --config if the injector is configured elsewhere", k.opts.namespace, k.opts.configMap))
		case err != nil:
			return failed(res, fmt.Sprintf("reading ConfigMap %s/%s: %v", k.opts.namespace, k.opts.configMap, err))
		default:
			v, ok := cm.Data["config.yaml"]
			if !ok {
				return failed(res, fmt.Sprintf("ConfigMap %s/%s has no key config.yaml", k.opts.namespace, k.opts.configMap))
			}
			data, source = []byte(v), fmt.Sprintf("ConfigMap %s/%s", k.opts.namespace, k.opts.configMap)
		}
	}
	// As serve builds it: file, flags, this release's agent image.
	l, err := k.opts.ef.build(k.cmd, data, source)
	if err != nil {
		return failed(res, err.Error())
	}
	cfg := l.Config
	s, err := cfg.Resolve()
	if err != nil {
		return failed(res, fmt.Sprintf("%s: %v", source, err))
	}
	k.cfg, k.set, k.settings = cfg, l.Set, s
	if len(l.Warnings) > 0 {
		res.Status = statusWarn
		res.Fix = append(res.Fix, l.Warnings...)
	}
	if res.Status == "" {
		res.Status = statusPass
	}
	flavor := string(s.Flavor())
	if !s.FlavorConfigured() {
		flavor = "per gateway profile"
	}
	res.Message = fmt.Sprintf("from %s: flavor %s, Istio %s, CA %s, cluster ID %s, trust domain %s",
		source, flavor, s.IstioVersion(), cfg.CAAddress, cfg.ClusterID, cfg.TrustDomain)
	return res
}

// --- webhook configurations -------------------------------------------------

func (k *checker) checkWebhookConfigurations(ctx context.Context) checkResult {
	res := checkResult{Name: checkWebhooks, Status: statusPass}
	var installed, missing []string
	for _, name := range k.opts.webhookConfigs {
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
			res.Status = statusFail
			res.Details = append(res.Details, fmt.Sprintf("%s: %s", name, strings.Join(problems, "; ")))
			if ref := mwc.Annotations[cmapi.WantInjectAnnotation]; ref != "" {
				res.Fix = append(res.Fix, fmt.Sprintf("%s: cert-manager's cainjector fills caBundle from Certificate %s: is cert-manager (with cainjector) running and the Certificate Ready? kubectl get certificate -n %s",
					name, ref, strings.Split(ref, "/")[0]))
			} else {
				res.Fix = append(res.Fix, fmt.Sprintf("%s: the injector fills caBundle itself in self-managed mode: are its pods running? kubectl -n %s logs deploy/sds-injector", name, k.opts.namespace))
			}
			continue
		}
		res.Details = append(res.Details, fmt.Sprintf("%s: %d webhook(s), caBundle with %d CA certificate(s)", name, len(mwc.Webhooks), cas))
	}
	switch {
	case len(installed) == 0:
		res.Status = statusFail
		res.Message = "no sds-injector webhook configuration is installed (" + strings.Join(missing, ", ") + ")"
		res.Fix = append(res.Fix, "install the chart (deploy/helm/sds-injector) or a file from deploy/manifests")
	case res.Status == statusFail:
		res.Message = "a webhook configuration cannot be trusted by the API server"
	default:
		res.Message = fmt.Sprintf("%d of %d installed: %s", len(installed), len(k.opts.webhookConfigs), strings.Join(installed, ", "))
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

// --- serving certificate ----------------------------------------------------

// servedCert is the certificate chain a webhook presents, and where it was
// read from.
type servedCert struct {
	chain  []*x509.Certificate
	source string
	err    error
	// extra problems found on the way (a cert-manager Certificate that is
	// not Ready, or lacks the name the API server uses).
	problems []string
}

func (k *checker) checkServingCertificates(ctx context.Context) checkResult {
	res := checkResult{Name: checkServingCert, Status: statusPass}
	if len(k.mwcs) == 0 {
		return skipped(res, "no webhook configuration installed")
	}
	cache := map[string]*servedCert{}
	checked := 0
	var soonest time.Time
	for _, mwc := range k.mwcs {
		for _, w := range mwc.Webhooks {
			if len(w.ClientConfig.CABundle) == 0 {
				continue
			}
			label := mwc.Name + "/" + w.Name
			serverName, target, err := webhookTarget(w.ClientConfig)
			if err != nil {
				res.Status = statusFail
				res.Details = append(res.Details, fmt.Sprintf("%s: %v", label, err))
				continue
			}
			key := target + "|" + serverName
			sc, ok := cache[key]
			if !ok {
				sc = k.fetchServedCert(ctx, mwc, w.ClientConfig, serverName)
				cache[key] = sc
			}
			checked++
			if sc.err != nil {
				res.Status = statusFail
				res.Details = append(res.Details, fmt.Sprintf("%s: %v", label, sc.err))
				continue
			}
			for _, p := range sc.problems {
				res.Status = worse(res.Status, statusWarn)
				res.Details = append(res.Details, fmt.Sprintf("%s: %s", label, p))
			}
			leaf := sc.chain[0]
			roots := x509.NewCertPool()
			bundle, _ := parseCerts(w.ClientConfig.CABundle)
			for _, c := range bundle {
				roots.AddCert(c)
			}
			inter := x509.NewCertPool()
			for _, c := range sc.chain[1:] {
				inter.AddCert(c)
			}
			chains, err := leaf.Verify(x509.VerifyOptions{
				DNSName: serverName, Roots: roots, Intermediates: inter,
				CurrentTime: k.now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				res.Status = statusFail
				res.Details = append(res.Details, fmt.Sprintf("%s: certificate from %s does not verify against the caBundle for %s: %v", label, sc.source, serverName, err))
				res.Fix = appendUnique(res.Fix, fixCertificate(mwc))
				continue
			}
			left := leaf.NotAfter.Sub(k.now)
			if soonest.IsZero() || leaf.NotAfter.Before(soonest) {
				soonest = leaf.NotAfter
			}
			if left < k.opts.minValidity {
				res.Status = statusFail
				res.Details = append(res.Details, fmt.Sprintf("%s: certificate from %s expires %s (in %s, less than --min-validity %s)",
					label, sc.source, leaf.NotAfter.UTC().Format(time.RFC3339), roundDuration(left), k.opts.minValidity))
				res.Fix = appendUnique(res.Fix, fixCertificate(mwc))
				continue
			}
			root := chains[0][len(chains[0])-1]
			if root.NotAfter.Sub(k.now) < k.opts.minValidity {
				res.Status = worse(res.Status, statusWarn)
				res.Details = append(res.Details, fmt.Sprintf("%s: the CA %q expires %s", label, root.Subject.CommonName, root.NotAfter.UTC().Format(time.RFC3339)))
			}
			res.Details = append(res.Details, fmt.Sprintf("%s: certificate from %s verifies for %s, expires %s (in %s)",
				label, sc.source, serverName, leaf.NotAfter.UTC().Format(time.RFC3339), roundDuration(left)))
		}
	}
	switch {
	case checked == 0:
		return skipped(res, "no webhook has a caBundle to verify against")
	case res.Status == statusFail:
		res.Message = "the API server would not trust the webhook's certificate, or it expires soon"
	default:
		res.Message = fmt.Sprintf("%d webhook(s) verified; the serving certificate expires %s", checked, soonest.UTC().Format(time.RFC3339))
	}
	return res
}

func fixCertificate(mwc *admissionregistrationv1.MutatingWebhookConfiguration) string {
	if ref := mwc.Annotations[cmapi.WantInjectAnnotation]; ref != "" {
		ns, name, _ := strings.Cut(ref, "/")
		return fmt.Sprintf("cert-manager mode: kubectl -n %s describe certificate %s (is it Ready, is cainjector running?); cmctl renew -n %s %s forces a renewal", ns, name, ns, name)
	}
	return "self-managed mode: the injector renews and repairs its certificate and caBundles; check its logs (kubectl -n <namespace> logs deploy/sds-injector) and that it runs"
}

// webhookTarget returns the TLS server name the API server verifies and a
// key naming where the webhook is served.
func webhookTarget(cc admissionregistrationv1.WebhookClientConfig) (serverName, target string, err error) {
	switch {
	case cc.URL != nil:
		u, err := url.Parse(*cc.URL)
		if err != nil || u.Host == "" {
			return "", "", fmt.Errorf("clientConfig.url %q is not a valid URL", *cc.URL)
		}
		return u.Hostname(), "url:" + u.Host, nil
	case cc.Service != nil:
		return cc.Service.Name + "." + cc.Service.Namespace + ".svc", "service:" + cc.Service.Namespace + "/" + cc.Service.Name, nil
	}
	return "", "", errors.New("clientConfig names neither a service nor a URL")
}

// fetchServedCert finds the certificate a webhook presents: by dialling a
// URL webhook (or --dial), otherwise from the Secret the pods serve.
func (k *checker) fetchServedCert(ctx context.Context, mwc *admissionregistrationv1.MutatingWebhookConfiguration, cc admissionregistrationv1.WebhookClientConfig, serverName string) *servedCert {
	if cc.URL != nil {
		u, _ := url.Parse(*cc.URL)
		addr := u.Host
		if u.Port() == "" {
			addr = net.JoinHostPort(u.Hostname(), "443")
		}
		return dialCert(ctx, addr, serverName)
	}
	if k.opts.dial != "" {
		return dialCert(ctx, k.opts.dial, serverName)
	}
	sc := &servedCert{}
	secretNS, secretName := cc.Service.Namespace, k.opts.certSecret
	if ref := mwc.Annotations[cmapi.WantInjectAnnotation]; ref != "" {
		ns, name, ok := strings.Cut(ref, "/")
		if !ok {
			sc.err = fmt.Errorf("annotation %s=%q: want <namespace>/<certificate>", cmapi.WantInjectAnnotation, ref)
			return sc
		}
		var crt cmapi.Certificate
		if err := k.c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &crt); err != nil {
			if meta.IsNoMatchError(err) {
				sc.err = fmt.Errorf("the webhook configuration names cert-manager Certificate %s, but cert-manager's API is not installed", ref)
			} else {
				sc.err = fmt.Errorf("reading cert-manager Certificate %s: %v", ref, err)
			}
			return sc
		}
		if !certificateReady(&crt) {
			sc.problems = append(sc.problems, fmt.Sprintf("cert-manager Certificate %s is not Ready%s", ref, conditionMessage(&crt)))
		}
		if !slices.Contains(crt.Spec.DNSNames, serverName) {
			sc.problems = append(sc.problems, fmt.Sprintf("cert-manager Certificate %s does not list %s in dnsNames", ref, serverName))
		}
		secretNS, secretName = ns, crt.Spec.SecretName
	}
	sc.source = fmt.Sprintf("Secret %s/%s", secretNS, secretName)
	var secret corev1.Secret
	if err := k.c.Get(ctx, types.NamespacedName{Namespace: secretNS, Name: secretName}, &secret); err != nil {
		sc.err = fmt.Errorf("reading the serving certificate's %s: %v", sc.source, err)
		return sc
	}
	chain, err := parseCerts(secret.Data[corev1.TLSCertKey])
	if err != nil || len(chain) == 0 {
		sc.err = fmt.Errorf("%s holds no valid %s", sc.source, corev1.TLSCertKey)
		return sc
	}
	sc.chain = chain
	return sc
}

func dialCert(ctx context.Context, addr, serverName string) *servedCert {
	sc := &servedCert{source: "the server at " + addr}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{
		ServerName: serverName,
		// The chain is verified against the caBundle afterwards, exactly
		// as the API server would.
		InsecureSkipVerify: true, //nolint:gosec // verified by the caller
		MinVersion:         tls.VersionTLS12,
	}}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		sc.err = fmt.Errorf("dialling %s: %v", addr, err)
		return sc
	}
	defer conn.Close()
	sc.chain = conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(sc.chain) == 0 {
		sc.err = fmt.Errorf("%s presented no certificate", addr)
	}
	return sc
}

func certificateReady(crt *cmapi.Certificate) bool {
	for _, c := range crt.Status.Conditions {
		if c.Type == cmapi.CertificateConditionReady {
			return c.Status == cmmeta.ConditionTrue
		}
	}
	return false
}

func conditionMessage(crt *cmapi.Certificate) string {
	for _, c := range crt.Status.Conditions {
		if c.Type == cmapi.CertificateConditionReady && c.Message != "" {
			return ": " + c.Message
		}
	}
	return ""
}

// --- webhook endpoints ------------------------------------------------------

func (k *checker) checkWebhookEndpoints(ctx context.Context) checkResult {
	res := checkResult{Name: checkEndpoints, Status: statusPass}
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
			res.Status = statusFail
			res.Details = append(res.Details, fmt.Sprintf("%s: %v", label, err))
		case ready == 0:
			res.Status = statusFail
			res.Details = append(res.Details, fmt.Sprintf("%s: no ready endpoints (%d not ready)", label, total))
			res.Fix = appendUnique(res.Fix, fmt.Sprintf("kubectl -n %s get pods,endpointslices -l app.kubernetes.io/name=sds-injector: are the injector pods running and ready?", r.ns))
		default:
			res.Details = append(res.Details, fmt.Sprintf("%s: %d ready endpoint(s)", label, ready))
		}
	}
	if res.Status == statusFail {
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

// --- istiod -----------------------------------------------------------------

func (k *checker) checkIstiodAddress(ctx context.Context) checkResult {
	res := checkResult{Name: checkIstiod, Status: statusPass}
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
func (k *checker) revisionsInUse(ctx context.Context, snap *istio.Snapshot) ([]string, error) {
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
func (k *checker) eachPod(ctx context.Context, fn func(*corev1.Pod)) error {
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
func (k *checker) decide(pod *corev1.Pod) (inject.Decision, string) {
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
func (k *checker) checkCAAddress(ctx context.Context, addr, clusterDomain string) (checkStatus, string, []string) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return statusFail, fmt.Sprintf("caAddress %q: %v", addr, err), nil
	}
	port, _ := strconv.Atoi(portStr)
	if net.ParseIP(host) != nil {
		return statusPass, fmt.Sprintf("caAddress %s is an IP address", addr), nil
	}
	if svc, ns, ok := clusterServiceName(host, clusterDomain); ok {
		// Cluster DNS answers <svc>.<ns>.svc from the Service; from outside
		// the cluster the API is the only honest way to ask.
		ready, _, err := readyEndpoints(ctx, k.c, ns, svc, int32(port))
		switch {
		case err != nil:
			return statusFail, fmt.Sprintf("caAddress %s does not resolve in the cluster: Service %s/%s: %v", addr, ns, svc, err),
				[]string{"is istiod installed? For a revisioned istiod without discovery set caAddress (chart value config.caAddress) to e.g. istiod-1-30.istio-system.svc:15012"}
		case ready == 0:
			return statusFail, fmt.Sprintf("caAddress %s: Service %s/%s has no ready endpoints on port %d", addr, ns, svc, port),
				[]string{fmt.Sprintf("kubectl -n %s get pods,endpointslices -l app=istiod", ns)}
		}
		return statusPass, fmt.Sprintf("caAddress %s: Service %s/%s has %d ready endpoint(s) on port %d (checked through the API, as cluster DNS resolves it)", addr, ns, svc, ready, port), nil
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupHost(lctx, host)
	if err != nil {
		return statusFail, fmt.Sprintf("caAddress %s does not resolve from here: %v", addr, err),
			[]string{"the name is resolved with this machine's DNS; if it is a cluster-internal name, use the <service>.<namespace>.svc form"}
	}
	return statusPass, fmt.Sprintf("caAddress %s resolves to %s (DNS from where check runs)", addr, strings.Join(ips, ", ")), nil
}

func orPod(owner, pod string) string {
	if owner != "" {
		return owner
	}
	return "pod/" + pod
}

// istioSnapshot loads the installed Istio once (istio: auto only; nil
// otherwise).
func (k *checker) istioSnapshot(ctx context.Context) (*istio.Snapshot, error) {
	if k.snapOK || k.settings == nil || !k.cfg.Istio.Auto() {
		return k.snap, k.snapErr
	}
	k.snapOK = true
	k.snap, k.snapErr = istio.Load(ctx, k.c, istio.Input{Config: k.cfg, Explicit: k.set, Namespace: k.opts.istio.namespace})
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

// --- gateway pods -----------------------------------------------------------

// checkGatewayPods lists running gateway pods that lack the agent but would
// be injected if created now. It also returns the namespaces with injected
// (or to-be-injected) gateways, for the root certificate check.
func (k *checker) checkGatewayPods(ctx context.Context) (checkResult, map[string]bool) {
	res := checkResult{Name: checkGatewayPods, Status: statusPass}
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
			f := podFinding{Namespace: pod.Namespace, Name: pod.Name, Profile: d.Profile, Message: d.Message}
			switch {
			case d.Outcome == inject.OutcomeInjected:
				gateways++
				podNamespaces[pod.Namespace] = true
				f.Problem = "not-injected"
				f.Owner, f.Command = k.restartCommand(ctx, pod)
				res.Status = statusFail
				res.Fix = appendUnique(res.Fix, f.Command)
			case d.Reason == inject.ReasonIstioSidecar && d.Warn:
				// Istio got there first: the gateway runs Istio's capturing
				// sidecar instead of our agent.
				f.Problem = string(d.Reason)
				f.Owner, f.Command = k.restartCommand(ctx, pod)
				istioFirst++
				res.Status = worse(res.Status, statusWarn)
				if rev == "" {
					rev = "<revision>"
				}
				res.Fix = appendUnique(res.Fix, fmt.Sprintf("%s/%s: set label %s: \"false\" on its pod template and label namespace %s with %s=%s, then %s",
					pod.Namespace, orPod(f.Owner, pod.Name), inject.LabelIstioSidecarInject, pod.Namespace, inject.LabelIstioRevision, rev, f.Command))
			case d.Warn || d.Outcome == inject.OutcomeError:
				f.Problem = string(d.Reason)
				f.Owner, _ = k.restartCommand(ctx, pod)
				res.Status = worse(res.Status, statusWarn)
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
	case res.Status == statusWarn:
		res.Message = fmt.Sprintf("%d gateway pod(s) asked for injection but cannot be injected", len(res.Pods))
	default:
		res.Message = fmt.Sprintf("%d injected gateway pod(s); none is missing the agent", injected)
	}
	return res, podNamespaces
}

func (k *checker) loadNamespaces(ctx context.Context) error {
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
func (k *checker) inScope(pod *corev1.Pod) bool {
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
func (k *checker) conditionsMatch(conds []admissionregistrationv1.MatchCondition, pod *corev1.Pod) bool {
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
func (k *checker) restartCommand(ctx context.Context, pod *corev1.Pod) (owner, command string) {
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

func (k *checker) checkRootCerts(ctx context.Context, podNamespaces map[string]bool) checkResult {
	res := checkResult{Name: checkRootCert, Status: statusPass}
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
		res.Status = statusFail
		res.Message = fmt.Sprintf("%d of %d opted-in namespace(s) lack %s: injected gateways there cannot start (the volume cannot be mounted)", len(missing), len(names), cmName)
		res.Fix = append(res.Fix, "istiod publishes "+cmName+" into the namespaces it manages: is istiod running, and do its discoverySelectors (or revision) include "+strings.Join(missing, ", ")+"?")
		return res
	}
	res.Message = fmt.Sprintf("%s present in all %d opted-in namespace(s)", cmName, len(names))
	return res
}

// --- helpers and output -----------------------------------------------------

func failed(res checkResult, msg string) checkResult {
	res.Status, res.Message = statusFail, msg
	return res
}

func skipped(res checkResult, msg string) checkResult {
	res.Status, res.Message = statusSkip, msg
	return res
}

func worse(a, b checkStatus) checkStatus {
	rank := map[checkStatus]int{statusSkip: 0, statusPass: 1, statusWarn: 2, statusFail: 3}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

func appendUnique(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

func roundDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "the past"
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= time.Hour:
		return d.Round(time.Hour).String()
	default:
		return d.Round(time.Second).String()
	}
}

func writeReport(w io.Writer, r *checkReport, format string) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "sds-injector check: cluster %s, injector namespace %s\n\n", r.Cluster, r.Namespace)
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "%-4s  %-22s  %s\n", strings.ToUpper(string(c.Status)), c.Name, c.Message)
		for _, d := range c.Details {
			fmt.Fprintf(&b, "      - %s\n", d)
		}
		for _, f := range c.Fix {
			fmt.Fprintf(&b, "      fix: %s\n", f)
		}
	}
	fmt.Fprintf(&b, "\n%d passed, %d warning(s), %d failed, %d skipped\n",
		r.Summary[string(statusPass)], r.Summary[string(statusWarn)], r.Summary[string(statusFail)], r.Summary[string(statusSkip)])
	_, err := io.WriteString(w, b.String())
	return err
}
