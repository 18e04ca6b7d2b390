package agentcontract_test

import (
	"testing"

	"github.com/sds-injector/sds-injector/internal/agentcontract"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

// The engine's configuration defaults (webhook/inject/config.go) are still
// written there as literals; until they reference this package, this test
// keeps them equal to the defaults the agent assumes.
func TestEngineDefaultsMatchContract(t *testing.T) {
	for _, c := range []struct{ name, engine, contract string }{
		{"CA address", inject.DefaultCAAddress, agentcontract.DefaultCAAddr},
		{"cluster ID", inject.DefaultClusterID, agentcontract.DefaultClusterID},
		{"trust domain", inject.DefaultTrustDomain, agentcontract.DefaultTrustDomain},
	} {
		if c.engine != c.contract {
			t.Errorf("%s: the engine defaults to %q, the agent to %q", c.name, c.engine, c.contract)
		}
	}
}
