// Command stand-in-envoy is a STAND-IN for Envoy (test only): the proxyv2
// test image ships it as /usr/local/bin/envoy. pilot-agent, with Envoy
// enabled, serves SDS for as long as its Envoy child lives; this binary only
// stays alive until SIGTERM/SIGINT and serves nothing (no admin port, no
// listeners), so the istio-proxy flavor's Envoy-based readiness cannot pass
// with it. It prints its argv once so the test can see how it was started.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	fmt.Printf("stand-in-envoy (not Envoy) started: %q\n", os.Args)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
}
