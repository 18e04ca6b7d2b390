package main

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/sds-injector/sds-injector/test/harness"
)

// TestNoCheckBuild: the webhook image's build (-tags nocheck, see
// internal/imagebuild.ReleaseImages) links none of check's dependencies —
// the point of the build, ~6 MiB of resident memory — still serves, and
// answers `check` by pointing at the CLI; the default build (the CLI) has
// the real command.
func TestNoCheckBuild(t *testing.T) {
	deps := func(tags ...string) string {
		args := append([]string{"list", "-deps"}, tags...)
		out, err := exec.Command("go", append(args, ".")...).Output()
		if err != nil {
			t.Fatalf("go %v: %v", args, err)
		}
		return string(out)
	}
	checkOnly := []string{"github.com/sds-injector/sds-injector/internal/check", "github.com/cert-manager/cert-manager/", "github.com/google/cel-go/"}
	lean, full := deps("-tags=nocheck"), deps()
	for _, p := range checkOnly {
		if strings.Contains(lean, p) {
			t.Errorf("the nocheck build links %s", p)
		}
		if !strings.Contains(full, p) {
			t.Errorf("the default build does not link %s: is this list still what check costs?", p)
		}
	}
	if !strings.Contains(lean, "github.com/sds-injector/sds-injector/webhook/server") {
		t.Error("the nocheck build does not link the webhook server")
	}

	bin, err := harness.Build(context.Background(), harness.Injector, harness.BuildOptions{Flags: []string{"-tags=nocheck"}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "check").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "run `sds-injector check` from the CLI") {
		t.Errorf("check in the nocheck build: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "serve", "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "--cert-mode") {
		t.Errorf("serve --help in the nocheck build: %v\n%s", err, out)
	}
	if _, _, err := run(t, "", "check", "--help"); err != nil {
		t.Errorf("check --help in the default build: %v", err)
	}
}
