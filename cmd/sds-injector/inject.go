package main

import (
	"bufio"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"

	"github.com/sds-injector/sds-injector/webhook/inject"
	"github.com/sds-injector/sds-injector/webhook/kubeinject"
)

type ioFlags struct {
	filename string
	output   string
}

func (f *ioFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.filename, "filename", "f", "", "input manifest (YAML or JSON, multi-document); - reads standard input")
	cmd.Flags().StringVarP(&f.output, "output", "o", "", "write the result here instead of standard output")
	_ = cmd.MarkFlagRequired("filename")
}

// run streams the manifests through fn and reports per-object outcomes on
// standard error. Skips are informational; engine errors make the command
// fail after all output is written, so nothing is silently half-processed.
func (f *ioFlags) run(cmd *cobra.Command, fn kubeinject.Transform, showInjected bool) error {
	in := cmd.InOrStdin()
	if f.filename != "-" {
		file, err := os.Open(f.filename)
		if err != nil {
			return err
		}
		defer file.Close()
		in = file
	}
	out := cmd.OutOrStdout()
	var outFile *os.File
	if f.output != "" {
		var err error
		if outFile, err = os.Create(f.output); err != nil {
			return err
		}
		defer outFile.Close()
		out = outFile
	}
	buf := bufio.NewWriter(out)
	reports, err := kubeinject.Process(in, buf, fn)
	if err != nil {
		return fmt.Errorf("%s: %w", displayName(f.filename), err)
	}
	if err := buf.Flush(); err != nil {
		return err
	}
	if outFile != nil {
		if err := outFile.Close(); err != nil {
			return err
		}
	}
	failures := 0
	for _, r := range reports {
		switch {
		case r.Decision.Outcome == inject.OutcomeError:
			failures++
			fmt.Fprintln(cmd.ErrOrStderr(), "error:", r)
		case r.Decision.Outcome == inject.OutcomeSkipped:
			fmt.Fprintln(cmd.ErrOrStderr(), "skipped:", r)
		case showInjected:
			fmt.Fprintln(cmd.ErrOrStderr(), r)
		}
	}
	if failures > 0 {
		return &partialError{fmt.Sprintf("%d object(s) could not be processed and were written unchanged", failures)}
	}
	return nil
}

func displayName(f string) string {
	if f == "-" {
		return "standard input"
	}
	return f
}

func newInjectCommand() *cobra.Command {
	var ef engineFlags
	var io ioFlags
	var isf istioFlags
	var verbose bool
	cmd := &cobra.Command{
		Use:   "inject -f FILE",
		Short: "Inject the agent into the Pods and pod templates of a manifest (offline)",
		Long: `Reads Kubernetes manifests and injects the certificate agent into every gateway
Pod and pod template (Deployment, DaemonSet, StatefulSet, ReplicaSet, Job, CronJob,
and Lists of them) exactly as the admission webhook would. Other objects pass through
unchanged. The result is written as YAML; skipped objects are reported on stderr.`,
		Example: `  sds-injector inject -f gateway-proxy.yaml | kubectl apply -f -
  kubectl get deploy gateway-proxy -o yaml | sds-injector inject -f - --flavor sds-agent`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := ef.config(cmd)
			if err != nil {
				return err
			}
			for _, w := range l.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			s, err := l.Config.Resolve()
			if err != nil {
				return err
			}
			r, err := isf.offlineDiscovery(cmd, l)
			if err != nil {
				return err
			}
			return io.run(cmd, func(p *corev1.Pod) inject.Result {
				if r == nil {
					return inject.Inject(p, s)
				}
				rs, problem, istioInjects, nsLabels := r.resolve(cmd.Context(), p)
				// In the webhook's order: Istio's injector, ambient, the
				// revision.
				if istioInjects != nil {
					// A gateway Istio's injector takes is left to it, never
					// made a hybrid.
					return inject.Result{Pod: p, Decision: inject.LeftToIstio(p, rs, *istioInjects)}
				}
				if d, ok := inject.Ambient(p, rs, nsLabels); ok {
					return inject.Result{Pod: p, Decision: d}
				}
				if problem != "" {
					return inject.Result{Pod: p, Decision: inject.RevisionUnavailable(p, rs, problem)}
				}
				return inject.Inject(p, rs)
			}, verbose)
		},
	}
	ef.register(cmd)
	isf.register(cmd, false, true)
	io.register(cmd)
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "also report injected objects on stderr")
	return cmd
}

func newUninjectCommand() *cobra.Command {
	var io ioFlags
	var verbose bool
	cmd := &cobra.Command{
		Use:   "uninject -f FILE",
		Short: "Remove what inject added, restoring the original Pods and pod templates",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return io.run(cmd, inject.Uninject, verbose)
		},
	}
	io.register(cmd)
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "also report restored objects on stderr")
	return cmd
}
