package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
)

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

func (k *Env) checkServingCertificates(ctx context.Context) Result {
	res := Result{Name: checkServingCert, Status: StatusPass}
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
				res.Status = StatusFail
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
				res.Status = StatusFail
				res.Details = append(res.Details, fmt.Sprintf("%s: %v", label, sc.err))
				continue
			}
			for _, p := range sc.problems {
				res.Status = worse(res.Status, StatusWarn)
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
				res.Status = StatusFail
				res.Details = append(res.Details, fmt.Sprintf("%s: certificate from %s does not verify against the caBundle for %s: %v", label, sc.source, serverName, err))
				res.Fix = appendUnique(res.Fix, fixCertificate(mwc))
				continue
			}
			left := leaf.NotAfter.Sub(k.now)
			if soonest.IsZero() || leaf.NotAfter.Before(soonest) {
				soonest = leaf.NotAfter
			}
			if left < k.opts.MinValidity {
				res.Status = StatusFail
				res.Details = append(res.Details, fmt.Sprintf("%s: certificate from %s expires %s (in %s, less than --min-validity %s)",
					label, sc.source, leaf.NotAfter.UTC().Format(time.RFC3339), roundDuration(left), k.opts.MinValidity))
				res.Fix = appendUnique(res.Fix, fixCertificate(mwc))
				continue
			}
			root := chains[0][len(chains[0])-1]
			if root.NotAfter.Sub(k.now) < k.opts.MinValidity {
				res.Status = worse(res.Status, StatusWarn)
				res.Details = append(res.Details, fmt.Sprintf("%s: the CA %q expires %s", label, root.Subject.CommonName, root.NotAfter.UTC().Format(time.RFC3339)))
			}
			res.Details = append(res.Details, fmt.Sprintf("%s: certificate from %s verifies for %s, expires %s (in %s)",
				label, sc.source, serverName, leaf.NotAfter.UTC().Format(time.RFC3339), roundDuration(left)))
		}
	}
	switch {
	case checked == 0:
		return skipped(res, "no webhook has a caBundle to verify against")
	case res.Status == StatusFail:
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
func (k *Env) fetchServedCert(ctx context.Context, mwc *admissionregistrationv1.MutatingWebhookConfiguration, cc admissionregistrationv1.WebhookClientConfig, serverName string) *servedCert {
	if cc.URL != nil {
		u, _ := url.Parse(*cc.URL)
		addr := u.Host
		if u.Port() == "" {
			addr = net.JoinHostPort(u.Hostname(), "443")
		}
		return dialCert(ctx, addr, serverName)
	}
	if k.opts.Dial != "" {
		return dialCert(ctx, k.opts.Dial, serverName)
	}
	sc := &servedCert{}
	secretNS, secretName := cc.Service.Namespace, k.opts.CertSecret
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
