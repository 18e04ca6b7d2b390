// Package fastpath holds the webhook's speed code that is no part of the
// engine's API: the JSON Patch encoder that copies the engine's
// pre-encoded values (MarshalPatch), and the engine functions only the
// webhook's fast path needs (Engine: screening a partially decoded pod,
// the patch without the mutated pod, the byte hints), which package
// webhook/inject keeps unexported and registers here.
//
// Being internal to webhook/, it can be imported by webhook/inject and
// webhook/server only. Nothing here changes a decision or a patch: the
// engine's invariant tests and the webhook's differential oracle check
// that each shortcut answers exactly as the plain path does.
package fastpath
