// Package certmanager runs the real cert-manager controller and cainjector
// (v1.21.2, built from source by build-cert-manager.sh next to this file and
// cached outside the repository) as processes against a local
// kube-apiserver, for the install tests.
//
// Every listener they open is on loopback: the controller's metrics and
// health servers (set through a ControllerConfiguration file, since its
// health server otherwise binds all interfaces) and cainjector's metrics.
// Leader election is off: each runs alone.
package certmanager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sds-injector/sds-injector/test/controlplane"
	"github.com/sds-injector/sds-injector/test/harness"
)

// Version is the cert-manager release the script builds.
const Version = "v1.21.2"

const (
	buildScript = "build-cert-manager.sh"
	// exitSourcesMissing is build-cert-manager.sh's status when the
	// third-party sources it needs are absent.
	exitSourcesMissing = 3
	// ControllerBinary and CAInjectorBinary are the names in BinaryDir.
	ControllerBinary = "cm-controller"
	CAInjectorBinary = "cainjector"
)

// SourcesMissingError reports that cert-manager is not built and cannot
// be: the sources the module proxy does not serve are absent. Tests report
// it as a failure or a listed not-run reason, never a silent skip.
type SourcesMissingError struct{ Detail string }

func (e *SourcesMissingError) Error() string {
	return "real cert-manager " + Version + " unavailable: " + e.Detail
}

// BinaryDir builds (once per cache, under a lock) or finds cm-controller,
// cainjector and crds/, and returns their directory.
func BinaryDir(ctx context.Context) (string, error) {
	_, file, _, _ := runtime.Caller(0)
	script, err := controlplane.LocateScript(file, filepath.Join("test", "certmanager"), buildScript)
	if err != nil {
		return "", err
	}
	var stderr bytes.Buffer
	dir, err := controlplane.RunBuildScript(ctx, script, nil, nil, &teeWriter{&stderr})
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == exitSourcesMissing {
			return "", &SourcesMissingError{Detail: strings.TrimSpace(stderr.String())}
		}
		return "", err
	}
	for _, b := range []string{ControllerBinary, CAInjectorBinary} {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s returned %q, which lacks %s", script, dir, b)
		}
	}
	return dir, nil
}

// CRDFiles are cert-manager's CRDs, from the same release as the binaries.
func CRDFiles(dir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "crds", "*.yaml"))
	if err == nil && len(files) == 0 {
		err = fmt.Errorf("no CRDs in %s", filepath.Join(dir, "crds"))
	}
	return files, err
}

// teeWriter keeps the build's stderr for the error and shows it live.
type teeWriter struct{ buf *bytes.Buffer }

func (t *teeWriter) Write(p []byte) (int, error) {
	t.buf.Write(p)
	return os.Stderr.Write(p)
}

// Options configure Start.
type Options struct {
	// Dir is BinaryDir's result.
	Dir string
	// Kubeconfig authenticates both components (an admin kubeconfig).
	Kubeconfig string
	// ClusterResourceNamespace is the controller's
	// --cluster-resource-namespace (default kube-system).
	ClusterResourceNamespace string
	// LogDir receives controller.log and cainjector.log.
	LogDir string
}

// CertManager is a running controller and cainjector.
type CertManager struct {
	// HealthAddr is the controller's health server (/livez), on loopback.
	HealthAddr string
	opts       Options
	args       map[string][]string
	mu         sync.Mutex
	procs      []*harness.Process
	// releasePorts frees the reserved ports (Stop).
	releasePorts func()
	stopOnce     sync.Once
}

// Start runs cainjector and the controller and waits until the
// controller's health server answers.
func Start(ctx context.Context, o Options) (_ *CertManager, retErr error) {
	if o.ClusterResourceNamespace == "" {
		o.ClusterResourceNamespace = "kube-system"
	}
	ports, release, err := harness.ReservePorts("127.0.0.1", 3)
	if err != nil {
		return nil, err
	}
	cm := &CertManager{HealthAddr: "127.0.0.1:" + strconv.Itoa(ports[0]), opts: o, args: map[string][]string{}, releasePorts: release}
	defer func() {
		if retErr != nil {
			_ = cm.Stop()
		}
	}()
	config := filepath.Join(o.LogDir, "controller-config.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`apiVersion: controller.config.cert-manager.io/v1alpha1
kind: ControllerConfiguration
healthzListenAddress: %s
metricsListenAddress: 127.0.0.1:%d
`, cm.HealthAddr, ports[1])), 0o600); err != nil {
		return nil, err
	}
	// cainjector reads the kubeconfig from the environment (its
	// --kubeconfig alone is not enough); set both for each.
	cm.args[CAInjectorBinary] = []string{"--kubeconfig=" + o.Kubeconfig, "--leader-elect=false",
		"--metrics-listen-address=127.0.0.1:" + strconv.Itoa(ports[2])}
	cm.args[ControllerBinary] = []string{"--config=" + config, "--kubeconfig=" + o.Kubeconfig, "--leader-elect=false",
		"--cluster-resource-namespace=" + o.ClusterResourceNamespace}
	for _, name := range []string{CAInjectorBinary, ControllerBinary} {
		if err := cm.StartProcess(name); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := cm.process(ControllerBinary).WaitHTTP(ctx, http.DefaultClient, "http://"+cm.HealthAddr+"/livez"); err != nil {
		return nil, fmt.Errorf("cert-manager did not start: %w\n%s", err, cm.LogTail())
	}
	if !cm.Running() {
		return nil, fmt.Errorf("cert-manager exited during start:\n%s", cm.LogTail())
	}
	return cm, nil
}

// process is the running component called name.
func (cm *CertManager) process(name string) *harness.Process {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	for _, p := range cm.procs {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// StartProcess starts one component (ControllerBinary or CAInjectorBinary)
// that is not running, appending to its log.
func (cm *CertManager) StartProcess(name string) error {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	args, ok := cm.args[name]
	if !ok {
		return fmt.Errorf("unknown cert-manager component %q", name)
	}
	for _, p := range cm.procs {
		if p.Name == name {
			return fmt.Errorf("%s is already running", name)
		}
	}
	cmd := exec.Command(filepath.Join(cm.opts.Dir, name), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+cm.opts.Kubeconfig)
	p, err := harness.StartLogged(name, cmd, filepath.Join(cm.opts.LogDir, name+".log"), nil)
	if err != nil {
		return err
	}
	cm.procs = append(cm.procs, p)
	return nil
}

// StopProcess stops one component and waits until it has exited.
func (cm *CertManager) StopProcess(name string) error {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	for i, p := range cm.procs {
		if p.Name == name {
			_ = p.Stop(stopGrace)
			cm.procs = append(cm.procs[:i], cm.procs[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("%s is not running", name)
}

// stopGrace is how long a component has after SIGTERM before its process
// group is killed.
const stopGrace = 15 * time.Second

// Running reports whether both processes are still up.
func (cm *CertManager) Running() bool {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	for _, p := range cm.procs {
		if p.Exited() {
			return false
		}
	}
	return len(cm.procs) == 2
}

// LogTail is the end of each component's log, for failure messages.
func (cm *CertManager) LogTail() string {
	var b strings.Builder
	for _, name := range []string{ControllerBinary, CAInjectorBinary} {
		logPath := filepath.Join(cm.opts.LogDir, name+".log")
		data, _ := os.ReadFile(logPath)
		fmt.Fprintf(&b, "--- %s (%s) ---\n%s\n", name, logPath, harness.Tail(string(data), 40))
	}
	return b.String()
}

// Stop terminates the running components (SIGTERM, then SIGKILL to each
// process group after stopGrace).
func (cm *CertManager) Stop() error {
	cm.stopOnce.Do(func() {
		cm.mu.Lock()
		defer cm.mu.Unlock()
		for _, p := range cm.procs {
			p.Terminate()
		}
		for _, p := range cm.procs {
			_ = p.Stop(stopGrace)
		}
		cm.procs = nil
		cm.releasePorts()
	})
	return nil
}
