package main

import (
	"regexp"

	"github.com/sds-injector/sds-injector/webhook/inject"
)

// The images a release publishes. The chart sets both (image.*,
// agentImage.*, defaulting to its appVersion); without the chart the
// binary defaults the agent to its own version, so the injector never
// injects an agent of another release.
const (
	injectorImageRepository = "ghcr.io/sds-injector/sds-injector"
	agentImageRepository    = "ghcr.io/sds-injector/sds-agent"
	// releaseVersion is the release this tree builds (the chart's
	// appVersion; a test keeps them equal). It names the images of a
	// binary built without -ldflags "-X main.version=...".
	releaseVersion = "v0.1.0"
)

// imageTagPattern is what an image tag may be.
var imageTagPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// imageTag is the tag of this binary's images: its stamped version, or
// releaseVersion for an unstamped ("dev") or unusable one.
func imageTag() string {
	if version == "" || version == "dev" || version == "latest" || !imageTagPattern.MatchString(version) {
		return releaseVersion
	}
	return version
}

func defaultInjectorImage() string { return injectorImageRepository + ":" + imageTag() }
func defaultAgentImage() string    { return agentImageRepository + ":" + imageTag() }

// pinAgentImage replaces the engine's built-in sds-agent image (a mutable
// tag) with this binary's version unless the user chose an image.
func pinAgentImage(cfg *inject.Config, set inject.Presence) {
	if set.SDSAgentImage {
		return
	}
	if cfg.SDSAgentImage == "" || cfg.SDSAgentImage == inject.DefaultSDSAgentImage {
		cfg.SDSAgentImage = defaultAgentImage()
	}
}
