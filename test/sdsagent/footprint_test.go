package sdsagent

import (
	"github.com/sds-injector/sds-injector/test/harness"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkIdleFootprint measures the resident memory and CPU use of
// sds-agent and of the stock pilot-agent in DISABLE_ENVOY mode (the
// istio-agent-files flavor), side by side, against the same real istiod,
// each holding a live certificate and otherwise idle: no renewal falls in
// the window (24 h certificates), sds-agent has one open SDS stream (the
// gateway's Envoy), nothing probes either agent. docs/sds-agent.md records
// the figures. Run it alone:
//
//	go test ./test/sdsagent -run '^$' -bench IdleFootprint -benchtime 1x
//
// SDS_AGENT_MEASURE_SECONDS sets the measured window (default 60).
func BenchmarkIdleFootprint(b *testing.B) {
	window := 60 * time.Second
	if v := os.Getenv("SDS_AGENT_MEASURE_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		window = time.Duration(n) * time.Second
	}
	w := setup(b)
	ap := w.injectAgent(b)
	agentProc := harness.Start(b, "sds-agent", ap.command(w.agentBin, agentUID, true))
	if out, err := ap.execHandler(b, w.agentBin, []string{"sds-agent", "wait"}, agentUID, true, 3*time.Minute); err != nil {
		b.Fatalf("sds-agent wait: %v %s", err, out)
	}
	s := subscribe(b, ap.socket, "default", "ROOTCA")
	s.next(time.Minute)

	_, outCerts, pilotProc := w.runPilotAgent(b)
	waitCertChain(b, filepath.Join(outCerts, "cert-chain.pem"))
	pilotPid := pilotProc.Cmd.Process.Pid

	// Let start-up work (GC of start-up garbage, lazy initialisation) settle.
	time.Sleep(10 * time.Second)
	b.ResetTimer()
	procs := map[string]int{"sds-agent": agentProc.Cmd.Process.Pid, "pilot-agent": pilotPid}
	first, peak := map[string]usage{}, map[string]int64{}
	for name, pid := range procs {
		u, err := procUsage(pid)
		if err != nil {
			b.Fatal(err)
		}
		first[name], peak[name] = u, u.RSSKiB
	}
	began := time.Now()
	for time.Since(began) < window {
		time.Sleep(time.Second)
		for name, pid := range procs {
			u, err := procUsage(pid)
			if err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			peak[name] = max(peak[name], u.RSSKiB)
		}
	}
	elapsed := time.Since(began)
	b.StopTimer()
	for _, name := range []string{"sds-agent", "pilot-agent"} {
		last, err := procUsage(procs[name])
		if err != nil {
			b.Fatal(err)
		}
		cpu := last.CPU - first[name].CPU
		perMin := time.Duration(float64(cpu) * float64(time.Minute) / float64(elapsed))
		b.Logf("%-11s RSS %5.1f MiB (anonymous %5.1f, file-backed %5.1f; peak %5.1f), CPU %s in %s = %s per minute (%.3f%% of one core)", name,
			float64(last.RSSKiB)/1024, float64(last.AnonKiB)/1024, float64(last.FileKiB)/1024, float64(peak[name])/1024,
			cpu, elapsed.Round(time.Second), perMin, 100*float64(cpu)/float64(elapsed))
		b.ReportMetric(float64(last.RSSKiB)/1024, name+"-RSS-MiB")
		b.ReportMetric(float64(perMin.Milliseconds()), name+"-CPU-ms/min")
	}

	// The cost of one exec probe (`sds-agent probe`, what the kubelet runs
	// every readiness period), as the kernel accounts it to the child. Go
	// starts children with vfork semantics, so a direct child's max RSS
	// would include this test process's: GNU time, if installed, forks
	// the probe from its own small image and reports its max RSS.
	const probes = 20
	var cpu time.Duration
	var maxRSS int64 = -1
	timeBin := ""
	if _, err := os.Stat("/usr/bin/time"); err == nil {
		timeBin = "/usr/bin/time"
	}
	for range probes {
		cmd := ap.command(w.agentBin, agentUID, true, "probe")
		if timeBin != "" {
			cmd = ap.command(timeBin, agentUID, true, "-f", "maxrss=%M", w.agentBin, "probe")
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("probe: %v %s", err, out)
		}
		cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		if i := strings.LastIndex(string(out), "maxrss="); i >= 0 {
			if kib, err := strconv.ParseInt(strings.TrimSpace(string(out[i+len("maxrss="):])), 10, 64); err == nil {
				maxRSS = max(maxRSS, kib)
			}
		}
	}
	if maxRSS >= 0 {
		b.Logf("sds-agent probe: %s CPU per run (mean of %d), max RSS %.1f MiB", cpu/probes, probes, float64(maxRSS)/1024)
	} else {
		b.Logf("sds-agent probe: %s CPU per run (mean of %d); install GNU time for its max RSS", cpu/probes, probes)
	}
	b.ReportMetric(float64((cpu/probes).Microseconds())/1000, "probe-CPU-ms")
	if agentProc.Exited() {
		b.Fatal("sds-agent exited during the measurement")
	}
}
