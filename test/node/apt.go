package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Paths of the Debian packages the node runs on.
const (
	ContainerdBinary = "/usr/bin/containerd"
	CtrBinary        = "/usr/bin/ctr"
	RuncBinary       = "/usr/sbin/runc"
	CNIBinDir        = "/usr/lib/cni"
)

// aptPackages maps each Debian package to a file it installs.
var aptPackages = []struct{ pkg, file string }{
	{"containerd", ContainerdBinary},
	{"runc", RuncBinary},
	{"containernetworking-plugins", filepath.Join(CNIBinDir, "bridge")},
	// kube-proxy (Options.Services) programs iptables and reads
	// iptables-save; the CNI bridge plugin's masquerading uses it too.
	{"iptables", "/usr/sbin/iptables-save"},
}

// EnsurePackages installs containerd, runc, the CNI plugins and iptables with apt-get
// when they are missing (as the suites build their binaries when missing),
// saying so on stderr. It needs root and Debian's apt.
func EnsurePackages(ctx context.Context) error {
	var missing []string
	for _, p := range aptPackages {
		if _, err := os.Stat(p.file); err != nil {
			missing = append(missing, p.pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("the node needs the Debian packages %s, and there is no apt-get to install them", strings.Join(missing, ", "))
	}
	fmt.Fprintf(os.Stderr, "node: installing %s with apt-get (missing)\n", strings.Join(missing, " "))
	run := func(args ...string) error {
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, out.String())
		}
		return nil
	}
	if err := run(append([]string{"install", "-y", "--no-install-recommends"}, missing...)...); err != nil {
		// A fresh machine may have no package lists yet.
		if err2 := run("update"); err2 != nil {
			return errors.Join(err, err2)
		}
		if err := run(append([]string{"install", "-y", "--no-install-recommends"}, missing...)...); err != nil {
			return err
		}
	}
	for _, p := range aptPackages {
		if _, err := os.Stat(p.file); err != nil {
			return fmt.Errorf("after installing %s, %s is still missing", p.pkg, p.file)
		}
	}
	return nil
}
