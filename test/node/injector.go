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
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/sds-injector/sds-injector/internal/imagebuild"
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
type Injector struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

// ServeInjector runs bin (an sds-injector binary) as `sds-injector serve`
// with config (YAML) on the control plane's local webhook serving address
// and certificate (the address the webhook configurations that
// InstallMutatingWebhookFile installs point at), and waits until it is
// ready.
func (n *Node) ServeInjector(ctx context.Context, bin, name, config string) (*Injector, error) {
	w := n.CP.WebhookInstallOptions
	cfgFile := filepath.Join(n.dir, "sds-injector-"+name+".yaml")
	if err := os.WriteFile(cfgFile, []byte(config), 0o644); err != nil {
		return nil, err
	}
	health, err := n.freePort()
	if err != nil {
		return nil, err
	}
	inj := &Injector{out: &lockedBuffer{}, done: make(chan struct{})}
	inj.cmd = exec.Command(bin, "serve", "--config", cfgFile,
		"--host", w.LocalServingHost, "--port", strconv.Itoa(w.LocalServingPort), "--cert-dir", w.LocalServingCertDir,
		"--metrics-bind-address", "0", "--health-probe-bind-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(health)))
	inj.cmd.Stdout, inj.cmd.Stderr = inj.out, inj.out
	if err := inj.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = inj.cmd.Wait(); close(inj.done) }()
	readyz := fmt.Sprintf("http://127.0.0.1:%d/readyz", health)
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case <-inj.done:
			return false, fmt.Errorf("exited: %v", inj.cmd.ProcessState)
		default:
		}
		resp, err := http.Get(readyz)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		inj.Stop()
		return nil, fmt.Errorf("sds-injector serve (%s) not ready: %w\n%s", name, err, inj.Output())
	}
	return inj, nil
}

// Output is what the injector printed so far.
func (i *Injector) Output() string { return i.out.String() }

// Stop ends the injector.
func (i *Injector) Stop() {
	_ = i.cmd.Process.Kill()
	<-i.done
}

type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}
