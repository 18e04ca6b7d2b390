package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestParsePlatforms(t *testing.T) {
	ps, err := parsePlatforms("linux/amd64, linux/arm64,")
	if err != nil || len(ps) != 2 || ps[0].String() != "linux/amd64" || ps[1].String() != "linux/arm64" {
		t.Fatalf("parsePlatforms = %v, %v", ps, err)
	}
	for _, bad := range []string{"", ",", "linux", "/amd64"} {
		if _, err := parsePlatforms(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// Bad invocations fail before anything is built.
func TestRunRefusesBadArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", t.TempDir()}, "-version is required"},
		{[]string{"-version", "v1", "extra"}, "unexpected arguments"},
		{[]string{"-version", "v1", "-platforms", "linux"}, "want os/arch"},
		{[]string{"-no-such-flag"}, "not defined"},
	} {
		var out bytes.Buffer
		err := run(context.Background(), tc.args, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run %q: %v, want %q", tc.args, err, tc.want)
		}
	}
}
