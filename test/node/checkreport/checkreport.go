// Package checkreport is the report format of gateway-checker
// (test/node/cmd/gateway-checker), shared by the checker, which writes it,
// and the tests, which read it from the kubelet's container logs
// (package node): one line per event, Prefix and the event as JSON.
package checkreport

import "time"

// Prefix starts every report line on the checker's stdout.
const Prefix = "CHECK "

// Line is one line of the checker's report (after Prefix).
type Line struct {
	Event string    `json:"event"` // start, cert, rootca, error, stream-end
	Time  time.Time `json:"time"`
	// start
	UID            int   `json:"uid,omitempty"`
	GID            int   `json:"gid,omitempty"`
	Groups         []int `json:"groups,omitempty"`
	PresentAtStart *bool `json:"presentAtStart,omitempty"`
	// cert
	Serial   string    `json:"serial,omitempty"`
	NotAfter time.Time `json:"notAfter,omitzero"`
	SPIFFE   string    `json:"spiffe,omitempty"`
	Version  string    `json:"version,omitempty"`
	// Since is the time since the checker started.
	Since string `json:"since,omitempty"`
	Error string `json:"error,omitempty"`
}
