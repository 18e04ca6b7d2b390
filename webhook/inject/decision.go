package inject

// Outcome is the kind of decision the engine reached.
type Outcome string

const (
	OutcomeInjected Outcome = "injected"
	OutcomeSkipped  Outcome = "skipped"
	OutcomeError    Outcome = "error"
)

// Reason is a machine-readable cause, stable enough for metrics labels and
// for users' alerts.
type Reason string

const (
	ReasonInjected Reason = "injected"

	ReasonAlreadyInjected   Reason = "already-injected"
	ReasonMirrorPod         Reason = "mirror-pod"
	ReasonExcludedNamespace Reason = "excluded-namespace"
	ReasonOptedOut          Reason = "opted-out"
	// ReasonIstioSidecar: Istio's own injector already added its sidecar
	// (status annotation, istio-init or istio-validation init container).
	ReasonIstioSidecar Reason = "istio-sidecar-present"
	// ReasonIstioWillInject: Istio's own injector selects the pod and will
	// add its sidecar after us (see LeftToIstio); injecting too would make
	// a hybrid of both.
	ReasonIstioWillInject    Reason = "istio-will-inject"
	ReasonAgentPresent       Reason = "agent-present"
	ReasonNotAGateway        Reason = "not-a-gateway"
	ReasonContainerNotFound  Reason = "gateway-container-not-found"
	ReasonInvalidOverride    Reason = "invalid-override"
	ReasonHostNetwork        Reason = "host-network"
	ReasonConflict           Reason = "conflict"
	ReasonInvalidInjectValue Reason = "invalid-inject-value"
	ReasonInvalidStatus      Reason = "invalid-status"
	ReasonInvalidInput       Reason = "invalid-input"
	ReasonNotInjected        Reason = "not-injected"
	ReasonUninjected         Reason = "uninjected"
	// ReasonUnknownRevision: the pod asks for an Istio revision (or tag)
	// that is not installed; see RevisionUnavailable.
	ReasonUnknownRevision Reason = "unknown-revision"
	// ReasonFlavorUnsupported: the pod or the configuration asks for a
	// flavor the gateway's profile says the gateway cannot consume.
	ReasonFlavorUnsupported Reason = "flavor-unsupported"
	// ReasonOptInRequired: the gateway's profile is opt-in only (Contour)
	// and the pod did not opt in explicitly.
	ReasonOptInRequired Reason = "opt-in-required"
	// ReasonAmbient: the pod is enrolled in Istio ambient (pod or namespace
	// label istio.io/dataplane-mode=ambient); ztunnel provides its identity.
	ReasonAmbient Reason = "ambient"
	// ReasonSPIREDisabled: the pod asks for the spire flavor and the
	// configuration has no identityProvider.spire.
	ReasonSPIREDisabled Reason = "spire-disabled"
)

// Decision explains what the engine did and why.
type Decision struct {
	Outcome Outcome `json:"outcome"`
	Reason  Reason  `json:"reason"`
	// Message is for humans: what happened and, for problems, what to fix.
	Message string `json:"message,omitempty"`
	// Profile is the gateway profile that recognised the pod, if any.
	Profile string `json:"profile,omitempty"`
	// Warn is set when the pod is a gateway that asked for (or qualifies
	// for) injection but could not get it. The webhook turns such skips into
	// admission warnings so `kubectl apply` shows them.
	Warn bool `json:"warn,omitempty"`
}

func skipped(reason Reason, msg string) Decision {
	return Decision{Outcome: OutcomeSkipped, Reason: reason, Message: msg}
}

func warned(reason Reason, profile, msg string) Decision {
	return Decision{Outcome: OutcomeSkipped, Reason: reason, Message: msg, Profile: profile, Warn: true}
}

func failed(reason Reason, msg string) Decision {
	return Decision{Outcome: OutcomeError, Reason: reason, Message: msg}
}
