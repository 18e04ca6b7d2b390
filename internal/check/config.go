package check

import (
	"context"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
)

// --- configuration ---------------------------------------------------------

func (k *Env) checkConfiguration(ctx context.Context) Result {
	res := Result{Name: checkConfiguration}
	var data []byte
	source := ""
	switch {
	case k.opts.ConfigFile != "":
		b, err := os.ReadFile(k.opts.ConfigFile)
		if err != nil {
			return failed(res, err.Error())
		}
		data, source = b, "file "+k.opts.ConfigFile
	default:
		var cm corev1.ConfigMap
		err := k.c.Get(ctx, types.NamespacedName{Namespace: k.opts.Namespace, Name: k.opts.ConfigMap}, &cm)
		switch {
		case apierrors.IsNotFound(err):
			source = "built-in defaults"
			res.Status = StatusWarn
			res.Fix = append(res.Fix, fmt.Sprintf("ConfigMap %s/%s not found: the checks assume the built-in defaults; pass --config-map or --config if the injector is configured elsewhere", k.opts.Namespace, k.opts.ConfigMap))
		case err != nil:
			return failed(res, fmt.Sprintf("reading ConfigMap %s/%s: %v", k.opts.Namespace, k.opts.ConfigMap, err))
		default:
			v, ok := cm.Data["config.yaml"]
			if !ok {
				return failed(res, fmt.Sprintf("ConfigMap %s/%s has no key config.yaml", k.opts.Namespace, k.opts.ConfigMap))
			}
			data, source = []byte(v), fmt.Sprintf("ConfigMap %s/%s", k.opts.Namespace, k.opts.ConfigMap)
		}
	}
	// As serve builds it: file, flags, this release's agent image.
	l, err := k.opts.BuildConfig(data, source)
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
		res.Status = StatusWarn
		res.Fix = append(res.Fix, l.Warnings...)
	}
	if res.Status == "" {
		res.Status = StatusPass
	}
	flavor := string(s.Flavor())
	if !s.FlavorConfigured() {
		flavor = "per gateway profile"
	}
	res.Message = fmt.Sprintf("from %s: flavor %s, Istio %s, CA %s, cluster ID %s, trust domain %s",
		source, flavor, s.IstioVersion(), cfg.CAAddress, cfg.ClusterID, cfg.TrustDomain)
	return res
}
