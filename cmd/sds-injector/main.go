// Command sds-injector gives edge gateways (Gloo Edge, Envoy Gateway,
// Contour, Emissary, any Envoy) an Istio mesh identity by injecting a
// certificate agent into their pods.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCommand(os.Stdin, os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(exitCode(err))
	}
}
