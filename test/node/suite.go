package node

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"
)

// SuiteTimeout bounds the context RunMain gives inside: the node's start-up
// and the suite's own set-up.
const SuiteTimeout = 10 * time.Minute

// RunMain is the TestMain of a real-node suite named name: under -short it
// runs the tests without a node (each skips with its reason); otherwise it
// runs Main with prepare and, inside the namespace, inside, which starts
// what the suite needs, runs m and returns its code. An error from inside
// fails the run ("<name>: FAIL: <error>"). It returns the exit code:
//
//	func TestMain(m *testing.M) { os.Exit(node.RunMain(m, "flavors", prepare, inside)) }
func RunMain(m *testing.M, name string, prepare func(context.Context, *Prepared) error,
	inside func(ctx context.Context, m *testing.M, p *Prepared) (int, error)) int {
	flag.Parse()
	if testing.Short() {
		return m.Run()
	}
	return Main(prepare, func(p *Prepared) int {
		ctx, cancel := context.WithTimeout(context.Background(), SuiteTimeout)
		defer cancel()
		code, err := inside(ctx, m, p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: FAIL: %v\n", name, err)
			return 1
		}
		return code
	})
}
