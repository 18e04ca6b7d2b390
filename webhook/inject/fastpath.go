package inject

import "github.com/sds-injector/sds-injector/webhook/internal/fastpath"

// The webhook's shortcuts stay out of this package's API: they are lent to
// webhook/server through the internal package fastpath.
func init() {
	fastpath.Register(fastpath.Engine[Settings, Decision]{
		Screen:       screenFields,
		Patch:        injectPatch,
		MayBeGateway: (*Settings).mayBeGateway,
	})
}
