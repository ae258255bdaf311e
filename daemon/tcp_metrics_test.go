package daemon

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	cebpf "github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/config"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// tree is a temporary cgroup with two children, a and b.
type tree struct {
	root, a, b string // absolute
	relA, relB string // relative to the cgroup2 mount, as the metrics name them
	idA, idB   uint64
}

func newTree(t *testing.T) tree {
	t.Helper()
	testutil.RequireRoot(t)
	if err := ebpf.Probe(); err != nil {
		t.Skipf("skipping: the ebpf backend cannot run here: %v", err)
	}
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	tr := tree{root: testutil.TempCgroup(t)}
	tr.a, tr.b = filepath.Join(tr.root, "a"), filepath.Join(tr.root, "b")
	for _, dir := range []string{tr.a, tr.b} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tr.relA, _ = filepath.Rel(mount, tr.a)
	tr.relB, _ = filepath.Rel(mount, tr.b)
	if tr.idA, err = cgroup.ID(tr.a); err != nil {
		t.Fatal(err)
	}
	if tr.idB, err = cgroup.ID(tr.b); err != nil {
		t.Fatal(err)
	}
	return tr
}

// liveDaemon is a daemon with real backends, serving metrics.
type liveDaemon struct {
	d    *Daemon
	out  *syncBuffer
	addr string
	stop func() error
}

// startLive runs a daemon on cfg, recording tr's root with real backends,
// until stop or the end of the test.
func startLive(t *testing.T, cfg *config.Config, tr tree) *liveDaemon {
	t.Helper()
	cfg.Cgroup = tr.root
	cfg.Filter.LocalPorts = nil
	cfg.Metrics.Listen = freeAddr(t)
	log, _ := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	d, err := New(cfg, log, "test")
	if err != nil {
		t.Fatal(err)
	}
	l := &liveDaemon{d: d, out: &syncBuffer{}, addr: cfg.Metrics.Listen}
	d.out = l.out
	d.statsInterval = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	var result error
	stopped := false
	l.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			result = <-errc
		}
		return result
	}
	t.Cleanup(func() {
		if err := l.stop(); err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	testutil.WaitFor(t, "the backends to run", 10*time.Second, func() bool {
		resp, err := http.Get("http://" + l.addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return l
}

// records returns the records in the output so far.
func (l *liveDaemon) records(t *testing.T) []flow.Record {
	t.Helper()
	return (&harness{out: l.out}).lines(t)
}

// waitClosed waits until the output holds the close records of cookies,
// from every backend of the daemon.
func (l *liveDaemon) waitClosed(t *testing.T, backends []string, cookies ...uint64) {
	t.Helper()
	testutil.WaitFor(t, "close records", 10*time.Second, func() bool {
		closed := map[string]bool{}
		for _, r := range l.records(t) {
			if r.Event == flow.EventClose {
				closed[r.Backend+"/"+strconv.FormatUint(r.Cookie, 10)] = true
			}
		}
		for _, b := range backends {
			for _, c := range cookies {
				if !closed[b+"/"+strconv.FormatUint(c, 10)] {
					return false
				}
			}
		}
		return true
	})
}

// scrape returns the metric families the daemon serves.
func (l *liveDaemon) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + l.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value returns the value of the sample of family name with labels, and
// whether there is one. Histograms give their count.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, lp := range m.Label {
			have[lp.GetName()] = lp.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// grown sums, per backend and cgroup id, what field grew by in each flow's
// records: its last value minus its first, what the metrics count.
func grown(rs []flow.Record, field flow.Field) map[string]map[uint64]uint64 {
	type key struct {
		backend string
		cookie  uint64
	}
	first, last := map[key]uint64{}, map[key]uint64{}
	cg := map[key]uint64{}
	for _, r := range rs {
		v, ok := r.Info.Get(field)
		if !ok {
			continue
		}
		k := key{r.Backend, r.Cookie}
		if _, seen := first[k]; !seen {
			first[k] = v
		}
		last[k], cg[k] = v, r.CgroupID
	}
	out := map[string]map[uint64]uint64{}
	for k, v := range last {
		if out[k.backend] == nil {
			out[k.backend] = map[uint64]uint64{}
		}
		out[k.backend][cg[k]] += v - first[k]
	}
	return out
}

// count counts the records of each backend, cgroup id and event.
func count(rs []flow.Record) map[string]int {
	n := map[string]int{}
	for _, r := range rs {
		n[fmt.Sprintf("%s/%d/%s", r.Backend, r.CgroupID, r.Event)]++
	}
	return n
}

// TestTCPMetrics: real transfers between two cgroups, recorded by both
// backends; the per-cgroup counters are what the records say, never
// decrease when the flow closes, and are near what the sockets moved.
func TestTCPMetrics(t *testing.T) {
	tr := newTree(t)
	cfg := testConfig("ebpf", "netlink")
	cfg.Netlink.Interval = 100 * time.Millisecond
	l := startLive(t, cfg, tr)

	ln := testutil.Listen(t, tr.a, "tcp4", "127.0.0.1:0") // accepted sockets are a's
	p := testutil.Dial(t, tr.b, ln)                       // the client is b's
	const half = 4 << 20
	p.Send(t, half)
	cookies := []uint64{testutil.Cookie(t, p.Client), testutil.Cookie(t, p.Server)}
	// netlink counts from its first dump of the flow, which usually comes
	// after the first half (a dump between the handshake and the end of
	// the first Send may see part of it): that record's bytes_received is
	// where its counter starts.
	var nlStart uint64
	testutil.WaitFor(t, "netlink's open record of the server", 5*time.Second, func() bool {
		for _, r := range l.records(t) {
			if r.Backend == flow.BackendNetlink && r.Cookie == cookies[1] && r.Event == flow.EventOpen {
				nlStart, _ = r.Info.Get(flow.FieldBytesReceived)
				return true
			}
		}
		return false
	})
	p.Send(t, half)
	p.Quiesce(t)
	sockAcked := testutil.TCPInfo(t, p.Client).Bytes_acked
	// netlink knows what a socket did as of its last dump: wait for the one
	// after the transfer, so that its close record has every byte.
	testutil.WaitFor(t, "a netlink dump after the transfer", 5*time.Second, func() bool {
		return grown(l.records(t), flow.FieldBytesReceived)["netlink"][tr.idA] >= half
	})

	before := l.scrape(t)
	p.Client.Close()
	testutil.ReadEOF(t, p.Server)
	p.Server.Close()
	l.waitClosed(t, []string{"ebpf", "netlink"}, cookies...)
	after := l.scrape(t)
	rs := l.records(t)
	acked, received := grown(rs, flow.FieldBytesAcked), grown(rs, flow.FieldBytesReceived)
	n := count(rs)

	for _, backend := range []string{"ebpf", "netlink"} {
		for _, c := range []struct {
			rel string
			id  uint64
		}{{tr.relA, tr.idA}, {tr.relB, tr.idB}} {
			labels := []string{"backend", backend, "cgroup", c.rel}
			for _, m := range []struct {
				name string
				want uint64
			}{
				{"flowd_tcp_bytes_acked_total", acked[backend][c.id]},
				{"flowd_tcp_bytes_received_total", received[backend][c.id]},
				{"flowd_tcp_flows_opened_total", uint64(n[fmt.Sprintf("%s/%d/open", backend, c.id)])},
				{"flowd_tcp_flows_closed_total", uint64(n[fmt.Sprintf("%s/%d/close", backend, c.id)])},
				{"flowd_tcp_flows_open", 0},
			} {
				got, ok := value(after, m.name, labels...)
				if !ok || got != float64(m.want) {
					t.Errorf("%s{%s}: %v (served: %v), want %d as the records say", m.name, strings.Join(labels, ","), got, ok, m.want)
				}
				if was, _ := value(before, m.name, labels...); was > got && m.name != "flowd_tcp_flows_open" {
					t.Errorf("%s{%s} went down from %v to %v when the flow closed", m.name, strings.Join(labels, ","), was, got)
				}
			}
			if got, _ := value(before, "flowd_tcp_flows_open", labels...); got != 1 {
				t.Errorf("flowd_tcp_flows_open{%s} = %v before the close, want 1", strings.Join(labels, ","), got)
			}
			if got, _ := value(after, "flowd_tcp_srtt_seconds", labels...); got == 0 {
				t.Errorf("flowd_tcp_srtt_seconds{%s} observed nothing", strings.Join(labels, ","))
			}
		}
	}
	// What the sockets moved: ebpf counts from the open record (the
	// handshake's byte), netlink from its first dump of the flow.
	ebpfAcked, _ := value(after, "flowd_tcp_bytes_acked_total", "backend", "ebpf", "cgroup", tr.relB)
	if lo, hi := float64(2*half-1), float64(sockAcked+1); ebpfAcked < lo || ebpfAcked > hi {
		t.Errorf("ebpf: %v bytes acked in cgroup b, want %v to %v (the socket acked %d)", ebpfAcked, lo, hi, sockAcked)
	}
	nlReceived, _ := value(after, "flowd_tcp_bytes_received_total", "backend", "netlink", "cgroup", tr.relA)
	if nlStart > half || nlReceived != float64(2*half-nlStart) {
		t.Errorf("netlink: %v bytes received in cgroup a, want %d (from its first dump of the flow, at %d)", nlReceived, 2*half-nlStart, nlStart)
	}
	if got, _ := value(after, "flowd_tcp_bytes_received_total", "backend", "ebpf", "cgroup", tr.relB); got > 2 {
		t.Errorf("ebpf: cgroup b received %v bytes; it only sent", got)
	}
	if _, ok := value(after, "flowd_last_record_timestamp_seconds", "backend", "netlink"); !ok {
		t.Error("no flowd_last_record_timestamp_seconds for netlink")
	}
	if got, ok := value(after, "flowd_ringbuf_size_bytes", "backend", "ebpf"); !ok || got != float64(cfg.EBPF.RingbufSize) {
		t.Errorf("flowd_ringbuf_size_bytes = %v, want %d", got, cfg.EBPF.RingbufSize)
	}
	if got, ok := value(after, "flowd_dump_duration_seconds", "backend", "netlink"); !ok || got < 2 {
		t.Errorf("flowd_dump_duration_seconds{backend=netlink} counts %v dumps, want several", got)
	}
}

// TestTCPMetricsOverflow: with max_cgroups: 1, the flows of the second
// cgroup count in cgroup="other", and nothing is lost.
func TestTCPMetricsOverflow(t *testing.T) {
	tr := newTree(t)
	cfg := testConfig("ebpf")
	cfg.Metrics.MaxCgroups = 1
	l := startLive(t, cfg, tr)
	ln := testutil.Listen(t, tr.a, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, tr.b, ln)
	p.Send(t, 1<<20)
	p.Quiesce(t)
	cookies := []uint64{testutil.Cookie(t, p.Client), testutil.Cookie(t, p.Server)}
	p.Client.Close()
	testutil.ReadEOF(t, p.Server)
	p.Server.Close()
	l.waitClosed(t, []string{"ebpf"}, cookies...)
	fams := l.scrape(t)

	var keys []string
	for _, m := range fams["flowd_tcp_flows_opened_total"].GetMetric() {
		for _, lp := range m.Label {
			if lp.GetName() == "cgroup" {
				keys = append(keys, lp.GetValue())
			}
		}
	}
	if len(keys) != 2 || !(keys[0] == "other" || keys[1] == "other") || !(strings.Contains(keys[0]+keys[1], tr.relA) || strings.Contains(keys[0]+keys[1], tr.relB)) {
		t.Fatalf("cgroups %v, want one of %s, %s and other", keys, tr.relA, tr.relB)
	}
	rs := l.records(t)
	acked, received := grown(rs, flow.FieldBytesAcked)["ebpf"], grown(rs, flow.FieldBytesReceived)["ebpf"]
	var sumAcked, sumReceived float64
	for _, k := range keys {
		v, _ := value(fams, "flowd_tcp_bytes_acked_total", "cgroup", k)
		sumAcked += v
		v, _ = value(fams, "flowd_tcp_bytes_received_total", "cgroup", k)
		sumReceived += v
	}
	if sumAcked != float64(acked[tr.idA]+acked[tr.idB]) || sumReceived != float64(received[tr.idA]+received[tr.idB]) {
		t.Errorf("acked %v, received %v over the series; the records say %d, %d", sumAcked, sumReceived,
			acked[tr.idA]+acked[tr.idB], received[tr.idA]+received[tr.idB])
	}
}

// flowCookies returns the cookies of the flows a family has series of.
func flowCookies(fams map[string]*dto.MetricFamily, name string) map[uint64]map[string]string {
	out := map[uint64]map[string]string{}
	for _, m := range fams[name].GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.Label {
			labels[lp.GetName()] = lp.GetValue()
		}
		c, _ := strconv.ParseUint(labels["cookie"], 10, 64)
		out[c] = labels
	}
	return out
}

// TestPerFlowMetrics: with per_flow, the max_flows busiest flows have
// gauges, labelled by their addresses; a closed flow's series go away.
func TestPerFlowMetrics(t *testing.T) {
	tr := newTree(t)
	cfg := testConfig("ebpf")
	cfg.EBPF.Interval = 0 // samples as often as there are: the short transfers show before they close
	cfg.Metrics.PerFlow = true
	cfg.Metrics.MaxFlows = 2
	l := startLive(t, cfg, tr)
	ln := testutil.Listen(t, tr.a, "tcp4", "127.0.0.1:0")
	busy, quiet := testutil.Dial(t, tr.b, ln), testutil.Dial(t, tr.b, ln)
	busy.Send(t, 8<<20)
	quiet.Send(t, 64<<10)
	busy.Quiesce(t)
	quiet.Quiesce(t)
	busyCookies := []uint64{testutil.Cookie(t, busy.Client), testutil.Cookie(t, busy.Server)}
	quietCookies := []uint64{testutil.Cookie(t, quiet.Client), testutil.Cookie(t, quiet.Server)}
	// Every record so far is in: the flows' counters are up to date.
	testutil.WaitFor(t, "samples of the transfers, both ends", 5*time.Second, func() bool {
		rs := l.records(t)
		return grown(rs, flow.FieldBytesAcked)["ebpf"][tr.idB] >= 8<<20+64<<10 &&
			grown(rs, flow.FieldBytesReceived)["ebpf"][tr.idA] >= 8<<20+64<<10
	})

	fams := l.scrape(t)
	for _, name := range []string{"flowd_flow_srtt_seconds", "flowd_flow_snd_cwnd_segments",
		"flowd_flow_delivery_rate_bytes_per_second", "flowd_flow_segments_retransmitted_total"} {
		got := flowCookies(fams, name)
		if len(got) != 2 || got[busyCookies[0]] == nil || got[busyCookies[1]] == nil {
			t.Fatalf("%s has the flows %v, want the busy connection's two ends %v", name, got, busyCookies)
		}
		client := got[busyCookies[0]]
		want := map[string]string{"backend": "ebpf", "cgroup": tr.relB, "laddr": "127.0.0.1", "raddr": "127.0.0.1",
			"lport": strconv.Itoa(int(testutil.Port(busy.Client.LocalAddr()))), "rport": strconv.Itoa(int(testutil.Port(ln.Addr())))}
		for k, v := range want {
			if client[k] != v {
				t.Errorf("%s of the busy client: %s=%q, want %q", name, k, client[k], v)
			}
		}
	}
	if v, _ := value(fams, "flowd_flow_snd_cwnd_segments", "cookie", strconv.FormatUint(busyCookies[0], 10)); v < 1 {
		t.Errorf("snd_cwnd of the busy client: %v", v)
	}

	// The busy connection closes: its series go at once.
	busy.Client.Close()
	testutil.ReadEOF(t, busy.Server)
	busy.Server.Close()
	l.waitClosed(t, []string{"ebpf"}, busyCookies...)
	got := flowCookies(l.scrape(t), "flowd_flow_srtt_seconds")
	if got[busyCookies[0]] != nil || got[busyCookies[1]] != nil {
		t.Errorf("series of the closed flows are still served: %v", got)
	}
	// The next interval: the quiet connection is the busiest there is.
	time.Sleep(time.Second)
	quiet.Send(t, 64<<10)
	quiet.Quiesce(t)
	testutil.WaitFor(t, "the quiet connection's series", 5*time.Second, func() bool {
		got := flowCookies(l.scrape(t), "flowd_flow_srtt_seconds")
		return len(got) == 2 && got[quietCookies[0]] != nil && got[quietCookies[1]] != nil
	})
}

// TestBPFStats: with bpf_stats, the sockops program's runs and run time
// are served while the kernel counts them, and stops once flowd stops.
func TestBPFStats(t *testing.T) {
	tr := newTree(t)
	if statsCounted(t) {
		t.Skip("skipping: this host has the kernel count BPF program runs already (kernel.bpf_stats_enabled)")
	}
	cfg := testConfig("ebpf")
	cfg.Metrics.BPFStats = true
	l := startLive(t, cfg, tr)
	if !statsCounted(t) {
		t.Error("the kernel does not count BPF program runs while flowd runs with bpf_stats")
	}
	ln := testutil.Listen(t, tr.a, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, tr.b, ln)
	p.Send(t, 1<<20)
	testutil.WaitFor(t, "program statistics", 5*time.Second, func() bool {
		fams := l.scrape(t)
		runs, _ := value(fams, "flowd_bpf_program_runs_total", "backend", "ebpf", "program", "flowd_sockops")
		secs, _ := value(fams, "flowd_bpf_program_run_seconds_total", "backend", "ebpf", "program", "flowd_sockops")
		return runs > 0 && secs > 0
	})
	if err := l.stop(); err != nil {
		t.Fatal(err)
	}
	if statsCounted(t) {
		t.Error("the kernel still counts BPF program runs after flowd stopped")
	}
}

// statsCounted reports whether the kernel counts BPF program runs now: it
// runs a program of its own once and reads its run count.
func statsCounted(t *testing.T) bool {
	t.Helper()
	prog, err := cebpf.NewProgram(&cebpf.ProgramSpec{
		Type:         cebpf.SocketFilter,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		License:      "MIT",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	if _, err := prog.Run(&cebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
		t.Fatal(err)
	}
	st, err := prog.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st.RunCount > 0
}
