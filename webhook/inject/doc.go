// Package inject is the injection engine of sds-injector.
//
// It is a pure function of a pod and a resolved configuration: Inject turns an
// edge-gateway pod into one that carries an Istio certificate agent, the shared
// volume through which the gateway's Envoy reads its certificate, and the
// istiod token projection; Uninject reverses it. Nothing here performs I/O,
// talks to an API server or keeps global state, so the admission webhook and
// the offline CLI share exactly the same behaviour.
//
// Every mutation is additive and described once, as a plan; the mutated pod and
// the JSON Patch that the webhook returns are both derived from that plan, so
// the patch never touches (or removes) a field the engine did not add.
package inject
