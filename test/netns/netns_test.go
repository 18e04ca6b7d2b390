package netns_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sds-injector/sds-injector/test/netns"
)

var (
	testNet = netns.Network{CIDR: "10.216.0.1/24", Link: "sdsnstest0", Peer: "sdsnstest1"}
	// prepared is set through the environment Prepare returned.
	prepared = os.Getenv("NETNS_TEST_PREPARED")
	link     string
)

func TestMain(m *testing.M) {
	os.Exit(netns.Main(netns.Suite{
		Name:    "netns-test",
		RootFor: "network namespace",
		Network: testNet,
		Prepare: func(context.Context) ([]string, func(), error) {
			return []string{"NETNS_TEST_PREPARED=outside pid " + fmt.Sprint(os.Getpid())}, nil, nil
		},
		Run: func(l string) int { link = l; return m.Run() },
	}))
}

// TestInside: the suite runs in a namespace of its own (not the outer
// run's: that one's PID is a different process), with the address on its
// link, a server on that address reachable, and no route out.
func TestInside(t *testing.T) {
	if !strings.HasPrefix(prepared, "outside pid ") || prepared == fmt.Sprintf("outside pid %d", os.Getpid()) {
		t.Fatalf("Prepare's environment did not reach the inner run: %q", prepared)
	}
	t.Logf("link: %s", link)
	if err := testNet.CheckNoRouteOut(); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(testNet.IP(), "0"))
	if err != nil {
		t.Fatalf("listening on the namespace's address: %v", err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			_, _ = io.WriteString(c, "hello")
			c.Close()
		}
	}()
	c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "hello" {
		t.Fatalf("read %q", b)
	}
	if _, err := net.DialTimeout("tcp", "1.1.1.1:80", 2*time.Second); !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("dialling 1.1.1.1:80 from inside: %v, want network unreachable", err)
	}
	if os.Getenv("GOPROXY") != "off" {
		t.Errorf("GOPROXY=%q inside, want off", os.Getenv("GOPROXY"))
	}
}

// TestCheckNoRouteOutFails: an interface the network does not name fails
// the check (it is what stops a suite whose namespace is not private).
func TestCheckNoRouteOutFails(t *testing.T) {
	if out, err := exec.Command("ip", "link", "add", "sdsnsextra0", "type", "veth", "peer", "name", "sdsnsextra1").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v: %s", err, out)
	}
	defer func() { _ = exec.Command("ip", "link", "del", "sdsnsextra0").Run() }()
	err := testNet.CheckNoRouteOut()
	if err == nil || !strings.Contains(err.Error(), "sdsnsextra") {
		t.Fatalf("CheckNoRouteOut with an extra interface: %v, want it named", err)
	}
	allowing := testNet
	allowing.Allow = []string{"sdsnsextra*"}
	if err := allowing.CheckNoRouteOut(); err != nil {
		t.Fatalf("with the interface allowed: %v", err)
	}
}
