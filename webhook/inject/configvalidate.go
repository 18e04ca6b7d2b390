package inject

import (
	"net"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Field validators of Resolve.

func validateImage(p *field.Path, image string, optional bool) field.ErrorList {
	if image == "" {
		if optional {
			return nil
		}
		return field.ErrorList{field.Required(p, "")}
	}
	if strings.TrimSpace(image) != image || strings.ContainsAny(image, " \t\n") {
		return field.ErrorList{field.Invalid(p, image, "must not contain whitespace")}
	}
	return nil
}

func validateHostPort(p *field.Path, addr string, required bool) field.ErrorList {
	if addr == "" {
		if required {
			return field.ErrorList{field.Required(p, "want host:port, e.g. "+DefaultCAAddress)}
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return field.ErrorList{field.Invalid(p, addr, "want host:port: "+err.Error())}
	}
	if host == "" {
		return field.ErrorList{field.Invalid(p, addr, "host is empty")}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return field.ErrorList{field.Invalid(p, addr, "port must be a number between 1 and 65535")}
	}
	return nil
}

func validateResources(p *field.Path, r corev1.ResourceRequirements) field.ErrorList {
	var errs field.ErrorList
	for _, group := range []struct {
		name string
		list corev1.ResourceList
	}{{"requests", r.Requests}, {"limits", r.Limits}} {
		for name, q := range group.list {
			if name != corev1.ResourceCPU && name != corev1.ResourceMemory && name != corev1.ResourceEphemeralStorage {
				errs = append(errs, field.NotSupported(p.Child(group.name).Key(string(name)), name, []string{"cpu", "memory", "ephemeral-storage"}))
			}
			if q.Sign() < 0 {
				errs = append(errs, field.Invalid(p.Child(group.name).Key(string(name)), q.String(), "must not be negative"))
			}
		}
	}
	for name, req := range r.Requests {
		if lim, ok := r.Limits[name]; ok && req.Cmp(lim) > 0 {
			errs = append(errs, field.Invalid(p.Child("requests").Key(string(name)), req.String(),
				"must be less than or equal to the limit "+lim.String()))
		}
	}
	return errs
}
