package node

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/sds-injector/sds-injector/internal/imagebuild"
	"github.com/sds-injector/sds-injector/test/harness"
)

// AddReleaseImage adds the release image name (imagebuild.ReleaseImages:
// sds-injector or sds-agent, exactly as make images builds it) made from
// binary, tagged ref, with env as its environment (nil: PATH only), to the
// images the node imports.
func (p *Prepared) AddReleaseImage(name, ref, binary string, env []string) error {
	for _, ri := range imagebuild.ReleaseImages {
		if ri.Name != name {
			continue
		}
		spec := ri.Spec(binary, v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, "node-test", "test", time.Unix(1, 0))
		if env != nil {
			spec.Env = env
		}
		img, err := imagebuild.Build(spec)
		if err != nil {
			return fmt.Errorf("the release %s image: %w", name, err)
		}
		file := p.ArchivePath(ref)
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			return err
		}
		if err := imagebuild.WriteArchive(file, ref, img); err != nil {
			return err
		}
		p.AddArchive(ref, file)
		return nil
	}
	return fmt.Errorf("no release image %q", name)
}

// Injector is a running `sds-injector serve`.
type Injector struct{ proc *harness.Process }

// ServeInjector runs bin (an sds-injector binary) as `sds-injector serve`
// with config (YAML) on the control plane's local webhook serving address
// and certificate (the address the webhook configurations that
// InstallMutatingWebhookFile installs point at), and waits until it is
// ready.
func (n *Node) ServeInjector(ctx context.Context, bin, name, config string) (*Injector, error) {
	return n.ServeInjectorAt(ctx, bin, name, config, n.CP.WebhookInstallOptions.LocalServingPort)
}

// ServeInjectorAt is ServeInjector on another port of the local serving
// host (with the same certificate), for a second webhook configuration
// (InstallMutatingWebhookFileAt).
func (n *Node) ServeInjectorAt(ctx context.Context, bin, name, config string, port int) (*Injector, error) {
	w := n.CP.WebhookInstallOptions
	cfgFile := filepath.Join(n.dir, "sds-injector-"+name+".yaml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o644); err != nil {
		return nil, err
	}
	health, err := n.freePort()
	if err != nil {
		return nil, err
	}
	proc, err := harness.StartProcess("sds-injector serve ("+name+")", exec.Command(bin, "serve", "--config", cfgFile,
		"--host", w.LocalServingHost, "--port", strconv.Itoa(port), "--cert-dir", w.LocalServingCertDir,
		"--metrics-bind-address", "0", "--health-probe-bind-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(health))))
	if err != nil {
		return nil, err
	}
	inj := &Injector{proc: proc}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := proc.WaitHTTP(wctx, http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/readyz", health)); err != nil {
		inj.Stop()
		return nil, fmt.Errorf("sds-injector serve (%s) not ready: %w\n%s", name, err, inj.Output())
	}
	return inj, nil
}

// Output is what the injector printed so far.
func (i *Injector) Output() string { return i.proc.Output() }

// Stop ends the injector (its process group, at once) and waits until it
// has exited.
func (i *Injector) Stop() { _ = i.proc.Stop(0) }
