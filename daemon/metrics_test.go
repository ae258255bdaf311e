package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/config"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/metrics/tcpstats"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// freeAddr returns a loopback address with a port nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// healthz returns the status code and body of GET /healthz at addr.
func healthz(t *testing.T, addr string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// stepBackend is a backend the test moves on: Run returns the error sent
// to end, or nil when ctx ends if it heeds ctx.
type stepBackend struct {
	name       string
	heedCtx    bool
	started    chan struct{}
	end        chan error
	closeOnce  sync.Once
	closedChan chan struct{}
}

func newStepBackend(name string, heedCtx bool) *stepBackend {
	return &stepBackend{name: name, heedCtx: heedCtx, started: make(chan struct{}), end: make(chan error, 1), closedChan: make(chan struct{})}
}

func (b *stepBackend) Name() string { return b.name }

func (b *stepBackend) Run(ctx context.Context, _ flow.Sink) error {
	close(b.started)
	done := ctx.Done()
	if !b.heedCtx {
		done = nil
	}
	select {
	case err := <-b.end:
		return err
	case <-done:
		return nil
	case <-b.closedChan:
		return nil
	}
}

func (b *stepBackend) Close() error {
	b.closeOnce.Do(func() { close(b.closedChan) })
	return nil
}

// TestHealthz: /healthz is 503 while the backends load, 200 while they
// run, and 503 naming the backend once one failed, while flowd stops.
func TestHealthz(t *testing.T) {
	cfg := testConfig("ebpf", "netlink")
	cfg.Metrics.Listen = freeAddr(t)
	h := newHarness(t, cfg)
	e := newStepBackend("ebpf", false) // stays up after netlink failed, until the test ends it
	nl := newStepBackend("netlink", true)
	h.ebpf, h.nl = e, nl
	loading, load := make(chan struct{}), make(chan struct{})
	newNetlink := h.d.newNetlink
	h.d.newNetlink = func(c netlink.Config) (backends.Backend, error) {
		close(loading)
		<-load
		return newNetlink(c)
	}
	h.d.stopTimeout = time.Minute
	errc := make(chan error, 1)
	go func() { errc <- h.d.Run(context.Background()) }()

	<-loading
	if code, body := healthz(t, cfg.Metrics.Listen); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "starting") {
		t.Errorf("while the backends load: %d %q", code, body)
	}
	close(load)
	<-e.started
	<-nl.started
	waitFor(t, "healthy", func() bool {
		code, body := healthz(t, cfg.Metrics.Listen)
		return code == http.StatusOK && body == "ok: ebpf, netlink running"
	})
	nl.end <- errors.New("reading netlink socket: no buffer space")
	waitFor(t, "the failure on /healthz", func() bool {
		code, body := healthz(t, cfg.Metrics.Listen)
		return code == http.StatusServiceUnavailable && body == "stopping; netlink backend: reading netlink socket: no buffer space"
	})
	e.end <- nil
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "no buffer space") {
		t.Errorf("Run = %v, want the netlink backend's error", err)
	}
}

// TestMetricsListen: a metrics.listen that cannot be bound on this host is
// a configuration error found before any backend is created; a port in
// use is a run-time failure (it may be free after a restart).
func TestMetricsListen(t *testing.T) {
	inUse, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inUse.Close()
	_, dnsErr := net.DefaultResolver.LookupHost(context.Background(), "flowd-no-such-host.invalid")
	var notFound *net.DNSError
	resolverAnswers := errors.As(dnsErr, &notFound) && notFound.IsNotFound

	for _, tc := range []struct {
		name, addr string
		config     bool
		want       string
	}{
		{"not on this host", "192.0.2.1:9977", true, `metrics.listen: "192.0.2.1:9977" cannot be bound on this host: bind: cannot assign requested address`},
		{"unresolvable", "flowd-no-such-host.invalid:9977", true, `metrics.listen: "flowd-no-such-host.invalid:9977" cannot be bound on this host: lookup flowd-no-such-host.invalid`},
		{"in use", inUse.Addr().String(), false, "address already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "unresolvable" && !resolverAnswers {
				t.Skipf("skipping: the resolver does not say that names do not exist here (%v)", dnsErr)
			}
			cfg := testConfig("netlink")
			cfg.Metrics.Listen = tc.addr
			h := newHarness(t, cfg)
			err := h.d.Run(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, config.ErrInvalid) != tc.config {
				t.Errorf("Run = %v; want an error with %q that is a configuration error: %v", err, tc.want, tc.config)
			}
			if ev := h.j.list(); len(ev) != 0 {
				t.Errorf("backends created although the metrics endpoint failed: %v", ev)
			}
		})
	}
}

// TestBPFStatsUnavailable: metrics.bpf_stats that the kernel refuses is a
// configuration error before any backend is created or the endpoint
// serves; without a backend that may run BPF, or without the endpoint, the
// statistics stay off.
func TestBPFStatsUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backends []config.Backend
		listen   bool
		enables  bool
	}{
		{"ebpf", []config.Backend{"ebpf"}, true, true},
		{"auto", []config.Backend{"auto"}, true, true},
		{"netlink", []config.Backend{"netlink"}, true, false},
		{"no endpoint", []config.Backend{"ebpf"}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(tc.backends...)
			cfg.Metrics.BPFStats = true
			if tc.listen {
				cfg.Metrics.Listen = freeAddr(t)
			}
			h := newHarness(t, cfg)
			enabled := false
			h.d.enableStats = func() (io.Closer, error) {
				enabled = true
				return nil, errors.New("operation not permitted")
			}
			stop := h.start(t)
			var err error
			if tc.enables {
				err = stop()
			} else {
				select {
				case <-fakeOf(h.ebpf).started:
				case <-fakeOf(h.nl).started:
				}
				err = stop()
			}
			if enabled != tc.enables {
				t.Errorf("statistics enabled: %v, want %v", enabled, tc.enables)
			}
			if !tc.enables {
				if err != nil {
					t.Errorf("Run = %v", err)
				}
				return
			}
			if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "metrics.bpf_stats: the kernel's BPF statistics cannot be enabled") ||
				!strings.Contains(err.Error(), "operation not permitted") {
				t.Errorf("Run = %v, want a configuration error naming metrics.bpf_stats and the cause", err)
			}
			if ev := h.j.list(); len(ev) != 0 {
				t.Errorf("backends created although the statistics failed: %v", ev)
			}
			for _, e := range h.hook.AllEntries() {
				if e.Message == "serving metrics" {
					t.Errorf("the endpoint served metrics although the statistics failed")
				}
			}
		})
	}
}

// TestTCPMetricsMembers: with TCP metrics, the ebpf backend reads the
// members they are made of besides output.tcp_info; the output keeps to
// output.tcp_info.
func TestTCPMetricsMembers(t *testing.T) {
	cfg := testConfig("ebpf")
	cfg.Output.TCPInfo = []flow.Field{flow.FieldSndCwnd}
	h := newHarness(t, cfg)
	if got := h.d.ebpfConfig().Members; !slices.Equal(got, []flow.Field{flow.FieldSndCwnd}) {
		t.Errorf("without metrics: members %v", got)
	}
	cfg.Metrics.Listen = freeAddr(t)
	h = newHarness(t, cfg)
	got := h.d.ebpfConfig().Members
	for _, f := range append([]flow.Field{flow.FieldSndCwnd}, tcpstats.Members...) {
		if !slices.Contains(got, f) {
			t.Errorf("with metrics: members %v lack %s", got, f)
		}
	}
	r := record("ebpf", 1)
	r.Info.Set(flow.FieldSndCwnd, 10)
	r.Info.Set(flow.FieldBytesAcked, 1000)
	fakeOf(h.ebpf).before = []flow.Record{r}
	stop := h.start(t)
	<-fakeOf(h.ebpf).started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	lines := h.lines(t)
	if len(lines) != 1 || lines[0].Info.Has(flow.FieldBytesAcked) || !lines[0].Info.Has(flow.FieldSndCwnd) {
		t.Errorf("output %+v, want snd_cwnd only", lines)
	}
}

// statsFake is a backend with every optional counter.
type statsFake struct {
	*fake
	mu    sync.Mutex
	dumps backends.DumpStats
}

func (f *statsFake) Unread() (int, int) { return 12288, 1 << 20 }

func (f *statsFake) Dumps() backends.DumpStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.dumps
	f.dumps.Durations = nil
	return d
}

func (f *statsFake) Programs() ([]backends.ProgramStats, error) {
	return []backends.ProgramStats{{Name: "flowd_sockops", Runs: 1000, RunTime: 250 * time.Microsecond, RecursionMisses: 2}}, nil
}

// TestBackendCounters: the daemon exports what backends count of
// themselves, and counts the flows of those that do not.
func TestBackendCounters(t *testing.T) {
	cfg := testConfig("ebpf")
	cfg.Metrics.Listen = freeAddr(t)
	cfg.Metrics.BPFStats = true
	h := newHarness(t, cfg)
	h.d.enableStats = func() (io.Closer, error) { return io.NopCloser(nil), nil }
	f := &statsFake{fake: newFake("ebpf", h.j)}
	f.dumps = backends.DumpStats{Durations: []time.Duration{2 * time.Millisecond, 40 * time.Millisecond}, Failed: 3}
	h.ebpf = f
	open := func(cookie uint64, ev flow.Event) flow.Record {
		r := record("ebpf", cookie)
		r.Event = ev
		return r
	}
	f.before = []flow.Record{open(1, flow.EventOpen), open(2, flow.EventOpen), open(3, flow.EventOpen), open(2, flow.EventClose)}
	stop := h.start(t)
	<-f.started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	reg := h.d.metrics.Registry()
	const want = `
# HELP flowd_flows Flows a backend tracks now (ebpf: opened and not closed in its records).
# TYPE flowd_flows gauge
flowd_flows{backend="ebpf"} 2
# HELP flowd_ringbuf_unread_bytes Bytes of records in the backend's ring buffer not read yet.
# TYPE flowd_ringbuf_unread_bytes gauge
flowd_ringbuf_unread_bytes{backend="ebpf"} 12288
# HELP flowd_ringbuf_size_bytes Size of the backend's ring buffer.
# TYPE flowd_ringbuf_size_bytes gauge
flowd_ringbuf_size_bytes{backend="ebpf"} 1.048576e+06
# HELP flowd_dump_errors_total inet_diag dumps that failed or were skipped.
# TYPE flowd_dump_errors_total counter
flowd_dump_errors_total{backend="ebpf"} 3
# HELP flowd_bpf_program_runs_total Times the kernel ran the BPF program (with metrics.bpf_stats).
# TYPE flowd_bpf_program_runs_total counter
flowd_bpf_program_runs_total{backend="ebpf",program="flowd_sockops"} 1000
# HELP flowd_bpf_program_run_seconds_total Time the kernel spent running the BPF program (with metrics.bpf_stats).
# TYPE flowd_bpf_program_run_seconds_total counter
flowd_bpf_program_run_seconds_total{backend="ebpf",program="flowd_sockops"} 0.00025
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "flowd_flows", "flowd_ringbuf_unread_bytes",
		"flowd_ringbuf_size_bytes", "flowd_dump_errors_total", "flowd_bpf_program_runs_total", "flowd_bpf_program_run_seconds_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "flowd_dump_duration_seconds"); n != 1 {
		t.Errorf("%d flowd_dump_duration_seconds series, want 1", n)
	}
}

// removableFake is a backend whose cgroup the test removes and creates
// again while it runs.
type removableFake struct {
	*fake
	mu sync.Mutex
	st backends.CgroupState
}

func (f *removableFake) CgroupState() backends.CgroupState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *removableFake) set(attached bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st.Attached && !attached {
		f.st.Removals++
	}
	f.st.Attached, f.st.Since = attached, time.Now()
}

// TestHealthzCgroupRemoved: while a backend waits for its removed cgroup
// to be created again, /healthz says so (503) and flowd_backend_up is 0;
// once it is attached again, both recover.
func TestHealthzCgroupRemoved(t *testing.T) {
	cfg := testConfig("netlink")
	cfg.Metrics.Listen = freeAddr(t)
	h := newHarness(t, cfg)
	f := &removableFake{fake: newFake("netlink", h.j), st: backends.CgroupState{Path: "/sys/fs/cgroup/x", Attached: true, ID: 7}}
	h.nl = f
	h.d.statsInterval = 10 * time.Millisecond
	stop := h.start(t)
	<-f.started
	healthy := func() bool {
		code, body := healthz(t, cfg.Metrics.Listen)
		return code == http.StatusOK && body == "ok: netlink running"
	}
	waitFor(t, "healthy", healthy)
	f.set(false)
	waitFor(t, "the removal on /healthz", func() bool {
		code, body := healthz(t, cfg.Metrics.Listen)
		return code == http.StatusServiceUnavailable &&
			strings.HasPrefix(body, "netlink backend: cgroup /sys/fs/cgroup/x (id 7) removed at ") && strings.HasSuffix(body, "; waiting for a cgroup at that path")
	})
	backendUp := func(want string) {
		t.Helper()
		resp, err := http.Get("http://" + cfg.Metrics.Listen + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if line := `flowd_backend_up{backend="netlink"} ` + want + "\n"; !strings.Contains(string(b), line) {
			t.Errorf("the metrics lack %q", line)
		}
	}
	backendUp("0")
	f.set(true)
	waitFor(t, "healthy again", healthy)
	backendUp("1")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
