package main

import (
	"testing"

	"github.com/sds-injector/sds-injector/internal/agent/sds"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// The injector's wiring guide and its Gloo drop-in promise the names the
// agent serves; both sides must agree.
func TestServedNamesMatchInjector(t *testing.T) {
	for _, c := range []struct{ agent, injector string }{
		{sds.Default, inject.SecretCertificate},
		{sds.RootCA, inject.SecretRootCA},
		{sds.GlooCertificate, inject.SecretGlooCertificate},
		{sds.GlooValidationContext, inject.SecretGlooRootCA},
	} {
		if c.agent != c.injector {
			t.Errorf("the agent serves %q where the injector documents %q", c.agent, c.injector)
		}
	}
}
