package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/sds-injector/sds-injector/internal/check"
	"github.com/sds-injector/sds-injector/webhook/inject"
)

func writeConfig(t *testing.T, data string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(f, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestConfigVersionOnTheCLI(t *testing.T) {
	pod := "../../docs/examples/gloo-gateway-proxy.yaml"
	_, stderr, err := run(t, "", "inject", "-f", pod, "--config", writeConfig(t, "flavor: sds-agent\n"))
	if err != nil || !strings.Contains(stderr, "warning:") || !strings.Contains(stderr, "apiVersion: "+inject.ConfigAPIVersion) {
		t.Errorf("a file without apiVersion works with a warning: err %v, stderr %q", err, stderr)
	}
	_, stderr, err = run(t, "", "inject", "-f", pod, "--config", writeConfig(t, "apiVersion: "+inject.ConfigAPIVersion+"\nkind: InjectorConfig\nflavor: sds-agent\n"))
	if err != nil || strings.Contains(stderr, "warning:") {
		t.Errorf("a current file: err %v, stderr %q", err, stderr)
	}
	_, _, err = run(t, "", "inject", "-f", pod, "--config", writeConfig(t, "apiVersion: sds-injector.io/v1\nkind: InjectorConfig\n"))
	if err == nil || !strings.Contains(err.Error(), "supported: "+inject.ConfigAPIVersion) {
		t.Errorf("an unknown version must be an error naming the supported one: %v", err)
	}
}

// build records what the file and the flags set; discovery never
// overrides those.
func TestBuildRecordsPresence(t *testing.T) {
	var ef engineFlags
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	ef.register(cmd)
	if err := cmd.ParseFlags([]string{"--trust-domain", "corp.example", "--native-sidecar=false"}); err != nil {
		t.Fatal(err)
	}
	l, err := ef.build(cmd, []byte("apiVersion: "+inject.ConfigAPIVersion+"\nkind: InjectorConfig\ncaAddress: istiod.corp:15012\nhub: \"\"\n"), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := inject.Presence{CAAddress: true, TrustDomain: true, NativeSidecar: true}
	if l.Set != want {
		t.Errorf("presence %+v, want %+v", l.Set, want)
	}
	if l.Config.TrustDomain != "corp.example" || l.Config.CAAddress != "istiod.corp:15012" {
		t.Errorf("config %+v", l.Config)
	}
	if l.Config.SDSAgentImage != defaultAgentImage() {
		t.Errorf("an unset agent image is pinned to this release: %s", l.Config.SDSAgentImage)
	}
	if _, err := ef.build(cmd, []byte("flavour: x\n"), "bad.yaml"); err == nil || !strings.HasPrefix(err.Error(), "bad.yaml: ") {
		t.Errorf("errors name the source: %v", err)
	}
}

// The help text is generated from the checks' data.
func TestCheckHelpListsEveryCheck(t *testing.T) {
	long := newCheckCommand().Long
	for _, c := range check.All() {
		if !strings.Contains(long, c.ID+" ") || !strings.Contains(long, c.Description) {
			t.Errorf("check --help lacks %s", c.ID)
		}
	}
}

func TestRestConfig(t *testing.T) {
	kc := writeConfig(t, `apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {server: "https://127.0.0.1:1"}
- name: b
  cluster: {server: "https://127.0.0.1:2"}
contexts:
- name: a
  context: {cluster: a, user: u}
- name: b
  context: {cluster: b, user: u}
current-context: a
users:
- name: u
  user: {token: t}
`)
	for ctx, want := range map[string]string{"": "https://127.0.0.1:1", "b": "https://127.0.0.1:2"} {
		rc, err := restConfig(kc, ctx)
		if err != nil || rc.Host != want {
			t.Errorf("context %q: %v %v, want host %s", ctx, rc, err, want)
		}
	}
	if _, err := restConfig(filepath.Join(t.TempDir(), "missing"), ""); err == nil {
		t.Error("a missing --kubeconfig must be an error")
	}
	t.Setenv("KUBECONFIG", kc)
	if rc, err := restConfig("", ""); err != nil || rc.Host != "https://127.0.0.1:1" {
		t.Errorf("$KUBECONFIG: %v %v", rc, err)
	}
}
