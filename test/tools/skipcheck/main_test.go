package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const stream = `{"Action":"run","Package":"p/a","Test":"TestRuns"}
{"Action":"pass","Package":"p/a","Test":"TestRuns"}
{"Action":"run","Package":"p/a","Test":"TestListed"}
{"Action":"output","Package":"p/a","Test":"TestListed","Output":"=== RUN   TestListed\n"}
{"Action":"output","Package":"p/a","Test":"TestListed","Output":"    a_test.go:9: EXPECTED-UNSUPPORTED: the agent serves SDS v2 only\n"}
{"Action":"output","Package":"p/a","Test":"TestListed","Output":"--- SKIP: TestListed (0.00s)\n"}
{"Action":"skip","Package":"p/a","Test":"TestListed"}
{"Action":"run","Package":"p/b","Test":"TestSilent/sub"}
{"Action":"output","Package":"p/b","Test":"TestSilent/sub","Output":"    b_test.go:3: no non-loopback IPv4 address\n"}
{"Action":"skip","Package":"p/b","Test":"TestSilent/sub"}
{"Action":"skip","Package":"p/c"}
not json: go build output
`

func TestRun(t *testing.T) {
	dir := t.TempDir()
	js := filepath.Join(dir, "run.json")
	if err := os.WriteFile(js, []byte(stream), 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, c := range map[string]struct {
		allow   string
		wantErr string
		wantOut []string
	}{
		"a skip not on the list fails, naming it": {
			allow:   "# only the first\n^p/a$ | ^TestListed$ | EXPECTED-UNSUPPORTED | measured: that release cannot work\n",
			wantErr: "1 test(s) skipped without an entry",
			wantOut: []string{"skipped tests: 2", "allowed     p/a TestListed: a_test.go:9: EXPECTED-UNSUPPORTED", "NOT ALLOWED p/b TestSilent/sub: b_test.go:3: no non-loopback IPv4 address"},
		},
		"every skip listed passes and still prints them": {
			allow:   "^p/a$ | ^TestListed$ | EXPECTED | why a\np/b | TestSilent | loopback | why b\n",
			wantOut: []string{"skipped tests: 2", "(allow list line 1: why a)", "(allow list line 2: why b)"},
		},
		"the message must match too": {
			allow:   "^p/a$ | ^TestListed$ | something else | why\np/b | TestSilent | loopback | why b\n",
			wantErr: "1 test(s) skipped",
			wantOut: []string{"NOT ALLOWED p/a TestListed"},
		},
		"an entry without a reason is refused": {
			allow:   "p/a | TestListed | EXPECTED\n",
			wantErr: "want four fields",
		},
	} {
		t.Run(name, func(t *testing.T) {
			var out strings.Builder
			err := run(write("allow.txt", c.allow), []string{js}, &out)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, c.wantErr)
			}
			for _, w := range c.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}
