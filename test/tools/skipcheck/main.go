// Command skipcheck reads the `go test -json` streams of a test run (as
// written by gotestsum --jsonfile) and fails when any test skipped without
// being on the allow list, so that no skip in `make test` is silent. It
// prints every skip, allowed or not, with its message.
//
// The allow list has one entry per line, four fields separated by " | ":
//
//	<package regexp> | <test name regexp> | <skip message regexp> | <why this skip is fine>
//
// Blank lines and lines starting with # are ignored. The regexps are
// anchored on neither side.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
)

// event is one line of test2json output (cmd/test2json's TestEvent).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

type allowed struct {
	pkg, test, msg *regexp.Regexp
	why            string
	line           int
}

type skip struct {
	pkg, test, msg string
}

func main() {
	allowFile := flag.String("allow", "", "allow list file")
	flag.Parse()
	if err := run(*allowFile, flag.Args(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "skipcheck:", err)
		os.Exit(1)
	}
}

func run(allowFile string, jsonFiles []string, out io.Writer) error {
	if len(jsonFiles) == 0 {
		return errors.New("no go test -json files given")
	}
	allow, err := readAllow(allowFile)
	if err != nil {
		return err
	}
	var skips []skip
	for _, f := range jsonFiles {
		s, err := readSkips(f)
		if err != nil {
			return err
		}
		skips = append(skips, s...)
	}
	sort.Slice(skips, func(i, j int) bool {
		if skips[i].pkg != skips[j].pkg {
			return skips[i].pkg < skips[j].pkg
		}
		return skips[i].test < skips[j].test
	})
	var unlisted []skip
	fmt.Fprintf(out, "skipped tests: %d\n", len(skips))
	for _, s := range skips {
		a := match(allow, s)
		if a == nil {
			unlisted = append(unlisted, s)
			fmt.Fprintf(out, "  NOT ALLOWED %s %s: %s\n", s.pkg, s.test, s.msg)
			continue
		}
		fmt.Fprintf(out, "  allowed     %s %s: %s\n              (allow list line %d: %s)\n", s.pkg, s.test, s.msg, a.line, a.why)
	}
	if len(unlisted) > 0 {
		return fmt.Errorf("%d test(s) skipped without an entry in %s: make them run, or list them there with the reason", len(unlisted), allowFile)
	}
	return nil
}

func match(allow []allowed, s skip) *allowed {
	for i := range allow {
		a := &allow[i]
		if a.pkg.MatchString(s.pkg) && a.test.MatchString(s.test) && a.msg.MatchString(s.msg) {
			return a
		}
	}
	return nil
}

func readAllow(path string) ([]allowed, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var allow []allowed
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, " | ")
		if len(f) != 4 || strings.TrimSpace(f[3]) == "" {
			return nil, fmt.Errorf("%s:%d: want four fields separated by \" | \" (package, test, message, why), got %q", path, i+1, line)
		}
		a := allowed{why: strings.TrimSpace(f[3]), line: i + 1}
		for j, re := range []**regexp.Regexp{&a.pkg, &a.test, &a.msg} {
			if *re, err = regexp.Compile(strings.TrimSpace(f[j])); err != nil {
				return nil, fmt.Errorf("%s:%d: field %d: %w", path, i+1, j+1, err)
			}
		}
		allow = append(allow, a)
	}
	return allow, nil
}

func readSkips(path string) ([]skip, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	output := map[[2]string]*strings.Builder{}
	var skips []skip
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			continue // not an event (go build output in the stream)
		}
		if e.Test == "" {
			continue // package-level: "no test files" is not a skipped test
		}
		key := [2]string{e.Package, e.Test}
		switch e.Action {
		case "output":
			b := output[key]
			if b == nil {
				b = &strings.Builder{}
				output[key] = b
			}
			b.WriteString(e.Output)
		case "skip":
			skips = append(skips, skip{pkg: e.Package, test: e.Test, msg: skipMessage(output[key])})
		}
		if e.Action == "skip" || e.Action == "pass" || e.Action == "fail" {
			delete(output, key)
		}
	}
	return skips, sc.Err()
}

// skipMessage is the test's own output without the "=== RUN" and
// "--- SKIP" framing lines, on one line.
func skipMessage(b *strings.Builder) string {
	if b == nil {
		return "(no message)"
	}
	var parts []string
	for _, l := range strings.Split(b.String(), "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		parts = append(parts, t)
	}
	if len(parts) == 0 {
		return "(no message)"
	}
	return strings.Join(parts, " / ")
}
