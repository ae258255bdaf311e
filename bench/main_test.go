package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary act as the idle connection helper, as the
// bench binary does (openIdle runs os.Executable()).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == helperArg {
		os.Exit(runHelper(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == churnHelperArg {
		os.Exit(runChurnHelper(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// TestQuick runs the suite with -quick (tiny counts) against the real
// daemon, every section but the Go benchmarks, and checks that each row
// was measured. Its figures mean nothing.
func TestQuick(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: the suite needs root (BPF, cgroups); run 'sudo make test'")
	}
	if testing.Short() {
		t.Skip("skipping the quick suite in -short mode")
	}
	o, err := parseOptions([]string{"-quick", "-repo", "..",
		"-run", "^(overhead/(ebpf-poll-1s|netlink-1s)|scale/|memory/|latency/|churn/)"}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := runSuite(ctx, o, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	// ebpf-poll-1s matches ebpf-poll-1s-otlp too, and its collector.
	if len(res.Overhead) != 3 || len(res.Scale) != 2 || len(res.Memory) != 2 || res.Latency == nil {
		t.Fatalf("rows: %d overhead, %d scale, %d memory, latency %v; want 3, 2, 2, one",
			len(res.Overhead), len(res.Scale), len(res.Memory), res.Latency != nil)
	}
	for _, r := range res.Overhead {
		if r.Err != "" || r.Ratio.N != 1 || r.Accounted.N != 1 || r.RecordsPerSec.N != 1 {
			t.Errorf("overhead %s: %+v", r.Name, r)
		}
	}
	for _, r := range res.Scale {
		if r.Err != "" || r.EBPFCPU.N == 0 || r.NetlinkCPU.N == 0 || r.DumpMs.N == 0 || r.SSLines == 0 {
			t.Errorf("scale N=%d: %+v", r.N, r)
		}
		if r.N > 0 && (r.EBPFGrowth.N == 0 || r.TCPInUse < 2*r.N) {
			t.Errorf("scale N=%d: growth %+v, %d TCP sockets in use", r.N, r.EBPFGrowth, r.TCPInUse)
		}
	}
	for _, r := range res.Memory {
		if r.Err != "" || r.Flows != o.memFlows || r.HWMKB == 0 {
			t.Errorf("memory %s: %+v", r.Backend, r)
		}
	}
	if r := res.Latency; r.Err != "" || r.Missing != 0 || r.P99Ms <= 0 {
		t.Errorf("latency: %+v", r)
	}
	if r := res.Churn; r == nil || r.Err != "" || r.Ratio.N != 1 || r.EventsPerConn["open"] < 1.9 || r.EventsPerConn["close"] < 1.9 {
		t.Errorf("churn: %+v", r)
	}
	md := Render(res)
	if !strings.Contains(md, "Quick smoke run") || strings.Contains(md, "error:") {
		t.Errorf("report:\n%s", md)
	}
}

// testLog sends the suite's progress to the test log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
