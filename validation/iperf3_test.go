package validation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/sink"
	"github.com/flowd/flowd/utils/flows"
	"github.com/flowd/flowd/utils/iperf3"
	"github.com/flowd/flowd/utils/report"
)

var outDir = flag.String("out", "", "keep each scenario's files (ebpf.jsonl, netlink.jsonl, their .changes.jsonl twins, iperf3.json, report.json) in DIR/<scenario>")

// The sampling interval of both backends, and iperf3's reporting interval.
const (
	sampleInterval = 50 * time.Millisecond
	iperfInterval  = "0.2"
	serverPort     = 5201
	clientPort     = 40001
)

// Scenario is one validation run.
type Scenario struct {
	Name        string
	Description string
	CC          string
	IPv6        bool
	Shape       *Shaping
	Parallel    int
	Reverse     bool
	Seconds     int
	// WantRetransmits: the bottleneck must cause losses.
	WantRetransmits bool
}

var bottleneck = &Shaping{Rate: "50mbit", Burst: "16kb", Limit: 60000}

var scenarios = []Scenario{
	{Name: "cubic-unshaped", Description: "cubic over an unshaped veth link", CC: "cubic", Seconds: 2},
	{Name: "cubic-bottleneck", Description: "cubic through a 50 Mbit/s tbf with a short queue (losses)",
		CC: "cubic", Shape: bottleneck, Seconds: 3, WantRetransmits: true},
	// A queue this deep keeps bbr out of the loss storms it runs into, from
	// one run to the next, behind a 100 kB queue that fills with 64 kB GSO
	// aggregates (the losses of cubic-bottleneck).
	{Name: "bbr-bottleneck", Description: "bbr through a 50 Mbit/s tbf with a 300 kB queue",
		CC: "bbr", Shape: &Shaping{Rate: "50mbit", Burst: "16kb", Limit: 300000}, Seconds: 3},
	{Name: "parallel-4", Description: "4 parallel cubic streams sharing a 100 Mbit/s tbf",
		CC: "cubic", Shape: &Shaping{Rate: "100mbit", Burst: "32kb", Limit: 120000}, Parallel: 4, Seconds: 3},
	{Name: "reverse", Description: "iperf3 -R: the server sends, cubic through a 50 Mbit/s tbf on its side",
		CC: "cubic", Shape: bottleneck, Reverse: true, Seconds: 3},
	{Name: "ipv6", Description: "cubic over IPv6 through a 50 Mbit/s tbf", CC: "cubic", IPv6: true, Shape: bottleneck, Seconds: 3},
}

// TestIperf3 runs every scenario: real iperf3 flows between two network
// namespaces inside a temporary cgroup, recorded by both backends, compared
// with iperf3's own figures.
func TestIperf3(t *testing.T) {
	testutil.RequireRoot(t)
	if err := haveTools(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	for _, sc := range scenarios {
		t.Run(sc.Name, func(t *testing.T) { runScenario(t, sc) })
	}
}

func runScenario(t *testing.T, sc Scenario) {
	dir := t.TempDir()
	if *outDir != "" {
		dir = filepath.Join(*outDir, sc.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cg := testutil.TempCgroup(t)
	sender := "a"
	if sc.Reverse {
		sender = "b"
	}
	topo, err := NewTopology(fmt.Sprintf("%04x", rand.IntN(1<<16)), sc.IPv6, sc.Shape, sender)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	senderNS := topo.NSA
	if sc.Reverse {
		senderNS = topo.NSB
	}

	started := time.Now()
	stop := record(t, dir, cg, NetnsPath(senderNS))

	cgFD, err := unix.Open(cg, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cgFD)
	inCgroup := &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgFD}

	server := exec.Command("ip", "netns", "exec", topo.NSB, "iperf3", "-s", "-1", "-J", "-i", iperfInterval, "-p", fmt.Sprint(serverPort))
	server.SysProcAttr = inCgroup
	var serverOut bytes.Buffer
	server.Stdout, server.Stderr = &serverOut, &serverOut
	if err := server.Start(); err != nil {
		t.Fatalf("starting iperf3 server: %v", err)
	}
	defer func() {
		_ = server.Process.Kill()
		_ = server.Wait()
	}()
	waitListening(t, topo.NSB, serverPort)

	args := []string{"netns", "exec", topo.NSA, "iperf3", "-c", topo.AddrB.String(), "-p", fmt.Sprint(serverPort),
		"--cport", fmt.Sprint(clientPort), "-C", sc.CC, "-t", fmt.Sprint(sc.Seconds), "-i", iperfInterval, "-J",
		// The server's intervals: the sender's in reverse mode, the
		// receiver's otherwise.
		"--get-server-output"}
	if sc.Parallel > 1 {
		args = append(args, "-P", fmt.Sprint(sc.Parallel))
	}
	if sc.Reverse {
		args = append(args, "-R")
	}
	client := exec.Command("ip", args...)
	client.SysProcAttr = inCgroup
	var clientErr bytes.Buffer
	client.Stderr = &clientErr
	out, err := client.Output()
	if werr := os.WriteFile(filepath.Join(dir, "iperf3.json"), out, 0o644); werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatalf("iperf3 client: %v: %s%s", err, clientErr.String(), out)
	}
	// Let the connections finish closing so that close records exist.
	time.Sleep(300 * time.Millisecond)
	stop()

	res, err := iperf3.Load(filepath.Join(dir, "iperf3.json"))
	if err != nil {
		t.Fatal(err)
	}
	erecs := loadBoth(t, dir, "ebpf")
	nrecs := loadBoth(t, dir, "netlink")
	streams, checks, err := Compare(Inputs{Iperf: res, EBPF: erecs, Netlink: nrecs, Reverse: sc.Reverse, Shaped: sc.Shape != nil})
	if err != nil {
		t.Fatal(err)
	}
	if want := max(1, sc.Parallel); len(streams) != want {
		t.Fatalf("%d streams compared, want %d", len(streams), want)
	}
	if sc.WantRetransmits {
		var total float64
		for _, c := range checks {
			if c.Metric == "retransmits" {
				total += c.Reference
			}
		}
		pass := total > 0
		checks = append(checks, report.Check{Stream: "all", Metric: "losses", Compared: "the bottleneck caused retransmissions (iperf3)",
			Value: total, Reference: 1, Rule: "value >= reference", Pass: pass})
	}
	rep := report.Report{Scenario: sc.Name, Description: sc.Description, Kernel: kernelRelease(), Started: started.UTC(),
		Interval: sampleInterval.String(), Streams: streams, Checks: checks, Pass: true}
	for _, c := range checks {
		rep.Pass = rep.Pass && c.Pass
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %s\n%s", sc.Name, sc.Description, table(checks))
	for _, c := range checks {
		if !c.Pass {
			t.Errorf("%s %s: %s: %.4g vs %.4g, diff %.4g > tolerance %.4g (%s)",
				c.Stream, c.Metric, c.Compared, c.Value, c.Reference, c.Diff, c.Tolerance, c.Rule)
		}
	}
	if *outDir != "" {
		t.Logf("files kept in %s", dir)
	}
}

// loadBoth loads dir/NAME.jsonl, written as the daemon does by default
// (output.samples: full), and checks that it reads back as the same
// records as dir/NAME.changes.jsonl, which the same backend wrote with
// partial samples (output.samples: changes).
func loadBoth(t *testing.T, dir, name string) []flow.Record {
	t.Helper()
	recs, err := flows.Load(filepath.Join(dir, name+".jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	changes, err := flows.Load(filepath.Join(dir, name+".changes.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(changes) {
		t.Fatalf("%s: %d records with output.samples: full, %d with changes", name, len(recs), len(changes))
	}
	for i := range recs {
		if !reflect.DeepEqual(recs[i], changes[i]) {
			t.Fatalf("%s: record %d reads back as\n%+v\nfrom output.samples: full, and as\n%+v\nfrom changes", name, i, recs[i], changes[i])
		}
	}
	return recs
}

// tee writes every record to both of its sinks.
type tee [2]*sink.JSONL

func (s tee) Write(r *flow.Record) error {
	return errors.Join(s[0].Write(r), s[1].Write(r))
}

func (s tee) Flush() error { return errors.Join(s[0].Flush(), s[1].Flush()) }

func (s tee) Close() error { return errors.Join(s[0].Close(), s[1].Close()) }

// record runs both backends into dir/ebpf.jsonl and dir/netlink.jsonl
// (complete lines, as the daemon writes by default), and the same records
// with partial samples into dir/ebpf.changes.jsonl and
// dir/netlink.changes.jsonl; the returned function stops them and flushes
// the files.
func record(t *testing.T, dir, cg, netns string) (stop func()) {
	eb, err := ebpf.New(ebpf.Config{Cgroup: cg, Mode: ebpf.ModePoll, Interval: sampleInterval, FlushInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("ebpf backend: %v", err)
	}
	nb, err := netlink.New(netlink.Config{Cgroup: cg, Interval: sampleInterval, Netns: netns})
	if err != nil {
		eb.Close()
		t.Fatalf("netlink backend: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	type running struct {
		b    backends.Backend
		f    [2]*os.File
		out  tee
		done chan error
	}
	var rs []running
	for _, b := range []backends.Backend{eb, nb} {
		r := running{b: b, done: make(chan error, 1)}
		for i, suffix := range []string{".jsonl", ".changes.jsonl"} {
			f, err := os.Create(filepath.Join(dir, b.Name()+suffix))
			if err != nil {
				t.Fatal(err)
			}
			r.f[i], r.out[i] = f, sink.NewJSONL(f)
		}
		r.out[1].SetSamples(sink.SamplesChanges)
		go func() { r.done <- r.b.Run(ctx, r.out) }()
		rs = append(rs, r)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		for _, r := range rs {
			if err := <-r.done; err != nil {
				t.Errorf("%s: %v", r.b.Name(), err)
			}
			if err := r.out.Close(); err != nil {
				t.Errorf("%s output: %v", r.b.Name(), err)
			}
			for _, f := range r.f {
				if err := f.Close(); err != nil {
					t.Error(err)
				}
			}
			if err := r.b.Close(); err != nil {
				t.Errorf("%s: close: %v", r.b.Name(), err)
			}
		}
	}
	t.Cleanup(stop)
	return stop
}

func waitListening(t *testing.T, ns string, port int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := exec.Command("ip", "netns", "exec", ns, "ss", "-Hltn", fmt.Sprintf("sport = :%d", port)).Output()
		if len(bytes.TrimSpace(out)) > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("iperf3 server in %s is not listening on %d", ns, port)
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func table(checks []report.Check) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "stream\tmetric\tflowd\treference\tdiff\ttolerance\tn\tresult")
	// A check passes by its rule, which is not always diff <= tolerance
	// (bracketed counters, an absolute floor, informational rows, a ratio
	// of scale): those rules are printed below the table.
	var rules []string
	for _, c := range checks {
		res := "ok"
		switch {
		case !c.Pass:
			res = "FAIL"
		case strings.HasPrefix(c.Rule, "informational"):
			res = "info"
		}
		if !c.Pass || c.Diff > c.Tolerance || res == "info" || strings.HasPrefix(c.Rule, "scale") {
			res += fmt.Sprintf(" [%d]", len(rules)+1)
			rules = append(rules, fmt.Sprintf("[%d] %s %s: %s", len(rules)+1, c.Stream, c.Metric, c.Rule))
		}
		fmt.Fprintf(w, "%s\t%s\t%.4g\t%.4g\t%.3g\t%.3g\t%d\t%s\n", c.Stream, c.Metric, c.Value, c.Reference, c.Diff, c.Tolerance, c.Samples, res)
	}
	w.Flush()
	for _, r := range rules {
		fmt.Fprintln(&b, r)
	}
	return b.String()
}
