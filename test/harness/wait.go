package harness

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// PollInterval is how often Eventually and WaitHTTP look again.
const PollInterval = 100 * time.Millisecond

// Eventually polls cond (at once, then every PollInterval) until it reports
// true, and fails t naming what if it has not within timeout or returns an
// error.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), PollInterval, timeout, true, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// Await polls cond until it reports true, treating an error as "not yet"
// (an object not created yet, a server still starting), and fails t with
// the last error after timeout or when ctx ends. It logs how long it took.
func Await(ctx context.Context, t testing.TB, timeout time.Duration, what string, cond func(context.Context) (bool, error)) {
	t.Helper()
	begin := time.Now()
	var last error
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := wait.PollUntilContextCancel(ctx, PollInterval, true, func(ctx context.Context) (bool, error) {
		ok, err := cond(ctx)
		if err != nil {
			last = err
			return false, nil
		}
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v (last error: %v)", what, err, last)
	}
	t.Logf("%s after %s", what, time.Since(begin).Round(time.Millisecond))
}

// WaitHTTP polls url until it answers 200 OK or ctx ends. HTTPS is not
// verified: this waits for a server to come up, it does not prove its
// certificate.
func WaitHTTP(ctx context.Context, url string) error {
	// Not verified: readiness only.
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	var last error
	err := wait.PollUntilContextCancel(ctx, PollInterval, true, func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := c.Do(req)
		if err != nil {
			if ctx.Err() == nil { // not the poll's own end
				last = err
			}
			return false, nil
		}
		resp.Body.Close()
		last = fmt.Errorf("status %s", resp.Status)
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("%s not ready: %w (last: %v)", url, err, last)
	}
	return nil
}

// WaitReady is WaitHTTP failing t after timeout.
func WaitReady(t testing.TB, timeout time.Duration, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := WaitHTTP(ctx, url); err != nil {
		t.Fatal(err)
	}
}

// WaitHTTP polls url (GET, with c) until it answers 200 OK, and fails when
// the process exits first ("<name> exited before it was ready: ...") or
// ctx ends.
func (p *Process) WaitHTTP(ctx context.Context, c *http.Client, url string) error {
	var last error
	err := wait.PollUntilContextCancel(ctx, PollInterval, true, func(ctx context.Context) (bool, error) {
		select {
		case <-p.Done():
			return false, fmt.Errorf("%s exited before it was ready: %w", p.Name, p.Err())
		default:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := c.Do(req)
		if err != nil {
			last = err
			return false, nil
		}
		resp.Body.Close()
		last = fmt.Errorf("status %s", resp.Status)
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil && !p.Exited() {
		return fmt.Errorf("%s not ready at %s: %w (last: %v)", p.Name, url, err, last)
	}
	return err
}
