package daemon

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/config"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/sink"
)

// journal records what the fakes did, in order, across backends.
type journal struct {
	mu     sync.Mutex
	events []string
}

func (j *journal) add(e string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.events = append(j.events, e)
}

func (j *journal) list() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.events)
}

// fake is a backend driven by the test. Run writes before, waits for ctx
// (unless exit is set), writes drain (what a real backend delivers on the
// way out) and returns runErr.
type fake struct {
	name    string
	j       *journal
	before  []flow.Record
	drain   []flow.Record
	flush   bool  // flush the sink after writing before, as real backends do after a batch
	exit    bool  // return right after writing before
	runErr  error // what Run returns
	ignore  bool  // ignore ctx: block until Close
	onClose func()
	started chan struct{}

	closeOnce sync.Once
	closed    chan struct{}
	closes    int
	mu        sync.Mutex
}

func newFake(name string, j *journal) *fake {
	return &fake{name: name, j: j, started: make(chan struct{}), closed: make(chan struct{})}
}

func (f *fake) Name() string { return f.name }

func (f *fake) Run(ctx context.Context, s flow.Sink) error {
	f.j.add("run " + f.name)
	write := func(rs []flow.Record) error {
		for i := range rs {
			if err := s.Write(&rs[i]); err != nil {
				return err
			}
		}
		return nil
	}
	err := write(f.before)
	if err == nil && f.flush {
		err = flow.Flush(s)
	}
	close(f.started)
	if err != nil {
		return err
	}
	if f.exit {
		return f.runErr
	}
	if f.ignore {
		<-f.closed
		return nil
	}
	<-ctx.Done()
	if err := write(f.drain); err != nil {
		return err
	}
	f.j.add("return " + f.name)
	if f.runErr != nil {
		return f.runErr
	}
	return ctx.Err()
}

func (f *fake) Close() error {
	f.mu.Lock()
	f.closes++
	f.mu.Unlock()
	f.j.add("close " + f.name)
	if f.onClose != nil {
		f.onClose()
	}
	f.closeOnce.Do(func() { close(f.closed) })
	return nil
}

// dropFake counts drops, as the ebpf backend does.
type dropFake struct {
	*fake
	mu    sync.Mutex
	drops uint64
	err   error
}

func (f *dropFake) Drops() (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.drops, f.err
}

func (f *dropFake) setDrops(n uint64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drops, f.err = n, err
}

// flowFake counts flows, as the netlink backend does.
type flowFake struct{ *fake }

func (flowFake) Flows() int { return 42 }

// cgroupFake follows its cgroup, as both backends do.
type cgroupFake struct {
	*fake
	state backends.CgroupState
}

func (f cgroupFake) CgroupState() backends.CgroupState { return f.state }

func record(backend string, cookie uint64) flow.Record {
	r := flow.Record{
		Time:       time.Date(2026, 11, 22, 0, 41, 2, 123456789, time.UTC),
		Backend:    backend,
		Event:      flow.EventSample,
		Cookie:     cookie,
		Family:     4,
		LocalAddr:  netip.MustParseAddr("127.0.0.1"),
		RemoteAddr: netip.MustParseAddr("127.0.0.1"),
		LocalPort:  5201,
		RemotePort: 40000,
		State:      flow.StateEstablished,
		CA:         "cubic",
	}
	r.Info.Set(flow.FieldRTT, 42)
	return r
}

// testConfig is the default configuration with names as its backends, a
// ring buffer of 1 MiB and a port filter.
func testConfig(names ...config.Backend) *config.Config {
	c := config.Default()
	c.Backends = names
	c.EBPF.RingbufSize = 1 << 20
	c.Filter.LocalPorts = []config.Port{5201}
	return c
}

// cgroupRoot returns the root of the cgroup2 hierarchy, which New resolves
// the default cgroup to.
func cgroupRoot(t *testing.T) string {
	t.Helper()
	root, err := cgroup.Mount()
	if err != nil {
		t.Skipf("skipping: the daemon needs a mounted cgroup2 file system: %v", err)
	}
	return root
}

// syncBuffer is a bytes.Buffer safe to read while the daemon writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type harness struct {
	d     *Daemon
	out   *syncBuffer
	hook  *logtest.Hook
	j     *journal
	ebpf  backends.Backend // what NewEBPF returns
	nl    backends.Backend // what NewNetlink returns
	ecfg  *ebpf.Config
	ncfg  *netlink.Config
	probe error
	eErr  error // NewEBPF's error
	nErr  error // NewNetlink's error
}

func newHarness(t *testing.T, cfg *config.Config) *harness {
	t.Helper()
	cgroupRoot(t)
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	d, err := New(cfg, log, "test")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{d: d, out: &syncBuffer{}, hook: hook, j: &journal{}}
	h.ebpf = &dropFake{fake: newFake("ebpf", h.j)}
	h.nl = flowFake{newFake("netlink", h.j)}
	d.out = h.out
	d.probe = func() error { return h.probe }
	d.newEBPF = func(c ebpf.Config) (backends.Backend, error) {
		h.j.add("new ebpf")
		h.ecfg = &c
		if h.eErr != nil {
			return nil, h.eErr
		}
		return h.ebpf, nil
	}
	d.newNetlink = func(c netlink.Config) (backends.Backend, error) {
		h.j.add("new netlink")
		h.ncfg = &c
		if h.nErr != nil {
			return nil, h.nErr
		}
		return h.nl, nil
	}
	d.statsInterval = time.Hour
	return h
}

// fakeOf returns the *fake inside a backend the harness made.
func fakeOf(b backends.Backend) *fake {
	switch b := b.(type) {
	case *dropFake:
		return b.fake
	case flowFake:
		return b.fake
	case cgroupFake:
		return b.fake
	case *fake:
		return b
	}
	return nil
}

// start runs the daemon in the background; stop cancels it and returns
// Run's error.
func (h *harness) start(t *testing.T) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- h.d.Run(ctx) }()
	return func() error {
		cancel()
		select {
		case err := <-errc:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after cancel")
			return nil
		}
	}
}

func (h *harness) lines(t *testing.T) []flow.Record {
	t.Helper()
	var rs []flow.Record
	s := bufio.NewScanner(strings.NewReader(h.out.String()))
	for s.Scan() {
		var r flow.Record
		if err := sink.ParseJSON(s.Bytes(), &r); err != nil {
			t.Fatalf("output line %q: %v", s.Text(), err)
		}
		rs = append(rs, r)
	}
	return rs
}

// recordsCounted returns the sum of d's flowd_records_total.
func recordsCounted(t testing.TB, d *Daemon) float64 {
	t.Helper()
	mfs, err := d.metrics.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var counted float64
	for _, mf := range mfs {
		if mf.GetName() == "flowd_records_total" {
			for _, m := range mf.GetMetric() {
				counted += m.GetCounter().GetValue()
			}
		}
	}
	return counted
}

func (h *harness) warnings() []*logrus.Entry {
	var ws []*logrus.Entry
	for _, e := range h.hook.AllEntries() {
		if e.Level == logrus.WarnLevel {
			ws = append(ws, e)
		}
	}
	return ws
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRecordsReachOutput(t *testing.T) {
	h := newHarness(t, testConfig("netlink"))
	nl := fakeOf(h.nl)
	nl.before = []flow.Record{record("netlink", 1), record("netlink", 2), record("netlink", 3)}
	stop := h.start(t)
	<-nl.started
	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want nil after cancel", err)
	}
	rs := h.lines(t)
	if len(rs) != 3 {
		t.Fatalf("%d records in the output, want 3:\n%s", len(rs), h.out.String())
	}
	for i, r := range rs {
		want := record("netlink", uint64(i+1))
		if r.Cookie != want.Cookie || r.Backend != "netlink" || r.CA != "cubic" || r.Info.Values[flow.FieldRTT] != 42 {
			t.Errorf("record %d = %+v", i, r)
		}
	}
	if nl.closes != 1 {
		t.Errorf("netlink backend closed %d times, want 1", nl.closes)
	}
	// The configuration reached the backend.
	if h.ncfg == nil || h.ncfg.Cgroup != cgroupRoot(t) || h.ncfg.Interval != time.Second ||
		!slices.Equal(h.ncfg.Filter.LocalPorts, []uint16{5201}) || h.ncfg.Log == nil {
		t.Errorf("netlink.Config = %+v", h.ncfg)
	}
	if counted := recordsCounted(t, h.d); counted != 3 {
		t.Errorf("flowd_records_total sums to %v, want 3", counted)
	}
}

// TestOutputMembers: output.tcp_info decides the members of every line.
func TestOutputMembers(t *testing.T) {
	cfg := testConfig("netlink")
	cfg.Output.TCPInfo = []flow.Field{flow.FieldSndCwnd}
	h := newHarness(t, cfg)
	nl := fakeOf(h.nl)
	r := record("netlink", 1)
	r.Info.Set(flow.FieldSndCwnd, 10)
	nl.before = []flow.Record{r}
	stop := h.start(t)
	<-nl.started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if out := h.out.String(); !strings.HasSuffix(out, `,"tcp_info":{"snd_cwnd":10}}`+"\n") {
		t.Errorf("with output.tcp_info [snd_cwnd]:\n%s", out)
	}
	logged := false
	for _, e := range h.hook.AllEntries() {
		if e.Message == "recording flows" {
			members, _ := e.Data["tcp_info"].([]string)
			logged = slices.Equal(members, []string{"snd_cwnd"})
		}
	}
	if !logged {
		t.Error(`"recording flows" does not name the members written`)
	}
}

// TestOutputEvents: output.events decides the records written to the
// file; the metrics count every record.
func TestOutputEvents(t *testing.T) {
	cfg := testConfig("netlink")
	cfg.Output.Events = []flow.Event{flow.EventOpen, flow.EventClose}
	h := newHarness(t, cfg)
	nl := fakeOf(h.nl)
	for i, ev := range []flow.Event{flow.EventOpen, flow.EventSample, flow.EventState, flow.EventSample, flow.EventClose} {
		r := record("netlink", 1)
		r.Event, r.Time = ev, r.Time.Add(time.Duration(i)*time.Millisecond)
		nl.before = append(nl.before, r)
	}
	stop := h.start(t)
	<-nl.started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	var written []flow.Event
	for _, r := range h.lines(t) {
		written = append(written, r.Event)
	}
	if want := []flow.Event{flow.EventOpen, flow.EventClose}; !slices.Equal(written, want) {
		t.Errorf("written %v, want %v", written, want)
	}
	if counted := recordsCounted(t, h.d); counted != 5 {
		t.Errorf("flowd_records_total sums to %v, want every record, 5", counted)
	}
	logged := false
	for _, e := range h.hook.AllEntries() {
		if e.Message == "recording flows" {
			events, _ := e.Data["events"].([]string)
			logged = slices.Equal(events, []string{"open", "close"})
		}
	}
	if !logged {
		t.Error(`"recording flows" does not name the events written`)
	}
}

// TestBackendFlushes: a backend's flush after a batch reaches the output
// through the metrics' sink, without a timer of the daemon's, and the
// records are counted once.
func TestBackendFlushes(t *testing.T) {
	h := newHarness(t, testConfig("netlink"))
	nl := fakeOf(h.nl)
	nl.before = []flow.Record{record("netlink", 1), record("netlink", 2)}
	nl.flush = true
	stop := h.start(t)
	<-nl.started
	if n := strings.Count(h.out.String(), "\n"); n != 2 {
		t.Errorf("%d lines in the output after the backend flushed, want 2", n)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if n := len(h.lines(t)); n != 2 {
		t.Errorf("%d lines in the output after stopping, want 2", n)
	}
}

// TestShutdownOrder: on cancel the backends drain, the output is flushed,
// then the backends are closed in reverse order of creation.
func TestShutdownOrder(t *testing.T) {
	h := newHarness(t, testConfig("ebpf", "netlink"))
	e, nl := fakeOf(h.ebpf), fakeOf(h.nl)
	e.before = []flow.Record{record("ebpf", 1)}
	e.drain = []flow.Record{record("ebpf", 2), record("ebpf", 3)}
	nl.drain = []flow.Record{record("netlink", 4)}
	atClose := -1
	// Count the lines in the output when the first backend is closed.
	nl.onClose = func() { atClose = strings.Count(h.out.String(), "\n") }
	stop := h.start(t)
	<-e.started
	<-nl.started
	if s := h.out.String(); s != "" {
		t.Errorf("output written before the flush: %q", s)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if atClose != 4 {
		t.Errorf("%d records in the output when the backends were closed, want all 4", atClose)
	}
	byBackend := map[string]int{}
	for _, r := range h.lines(t) {
		byBackend[r.Backend]++
	}
	if byBackend["ebpf"] != 3 || byBackend["netlink"] != 1 {
		t.Errorf("records by backend = %v, want ebpf:3 netlink:1", byBackend)
	}
	ev := h.j.list()
	idx := func(e string) int { return slices.Index(ev, e) }
	if !(idx("new ebpf") < idx("new netlink") &&
		idx("return ebpf") < idx("close netlink") && idx("return netlink") < idx("close netlink") &&
		idx("close netlink") < idx("close ebpf")) || idx("close ebpf") < 0 {
		t.Errorf("events in the wrong order: %v", ev)
	}
}

func TestAutoUsesEBPF(t *testing.T) {
	h := newHarness(t, testConfig("auto"))
	stop := h.start(t)
	<-fakeOf(h.ebpf).started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if ev := h.j.list(); slices.Contains(ev, "new netlink") {
		t.Errorf("netlink created although ebpf works: %v", ev)
	}
	if ws := h.warnings(); len(ws) != 0 {
		t.Errorf("warnings: %v", ws)
	}
	if h.ecfg == nil || h.ecfg.RingbufSize != 1<<20 || h.ecfg.Mode != ebpf.ModePoll || h.ecfg.Log == nil {
		t.Errorf("ebpf.Config = %+v", h.ecfg)
	}
}

func TestAutoFallback(t *testing.T) {
	for _, tc := range []struct {
		name        string
		probe, eErr error
		wantNewEBPF bool
	}{
		{"probe fails", errors.New("kernel BTF is not available"), nil, false},
		{"load fails", nil, errors.New("attaching sockops: permission denied"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, testConfig("auto"))
			h.probe, h.eErr = tc.probe, tc.eErr
			fakeOf(h.nl).before = []flow.Record{record("netlink", 1)}
			stop := h.start(t)
			<-fakeOf(h.nl).started
			if err := stop(); err != nil {
				t.Fatalf("Run = %v", err)
			}
			ev := h.j.list()
			if slices.Contains(ev, "new ebpf") != tc.wantNewEBPF || !slices.Contains(ev, "run netlink") {
				t.Errorf("events %v", ev)
			}
			ws := h.warnings()
			if len(ws) != 1 {
				t.Fatalf("%d warnings, want exactly 1: %v", len(ws), ws)
			}
			reason := errors.Join(tc.probe, tc.eErr)
			if err, _ := ws[0].Data[logrus.ErrorKey].(error); err == nil || err.Error() != reason.Error() {
				t.Errorf("warning %q carries error %v, want %v", ws[0].Message, ws[0].Data[logrus.ErrorKey], reason)
			}
			if !strings.Contains(ws[0].Message, "netlink") {
				t.Errorf("warning %q does not say netlink is used", ws[0].Message)
			}
			if rs := h.lines(t); len(rs) != 1 || rs[0].Backend != "netlink" {
				t.Errorf("output %v", rs)
			}
		})
	}
}

func TestExplicitEBPFFails(t *testing.T) {
	for _, tc := range []struct {
		name        string
		probe, eErr error
		want        string
	}{
		{"probe fails", errors.New("no BTF"), nil, "ebpf backend unavailable: no BTF"},
		{"load fails", nil, errors.New("EPERM"), "loading ebpf backend: EPERM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, testConfig("netlink", "ebpf"))
			h.probe, h.eErr = tc.probe, tc.eErr
			err := h.d.Run(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want an error with %q", err, tc.want)
			}
			if errors.Is(err, config.ErrInvalid) {
				t.Error("a runtime error matches config.ErrInvalid")
			}
			ev := h.j.list()
			if slices.Contains(ev, "run netlink") || !slices.Contains(ev, "close netlink") {
				t.Errorf("the netlink backend created first must be closed, not run: %v", ev)
			}
			if len(h.warnings()) != 0 {
				t.Errorf("warnings: %v", h.warnings())
			}
		})
	}
}

func TestDropsLoggedAndCounted(t *testing.T) {
	h := newHarness(t, testConfig("ebpf"))
	h.d.statsInterval = 5 * time.Millisecond
	e := h.ebpf.(*dropFake)
	dropsMetric := func() float64 {
		mfs, _ := h.d.metrics.Registry().Gather()
		for _, mf := range mfs {
			if mf.GetName() == "flowd_ringbuf_drops_total" {
				for _, m := range mf.GetMetric() {
					return m.GetCounter().GetValue()
				}
			}
		}
		return -1
	}
	stop := h.start(t)
	<-e.started
	waitFor(t, "the drops series", func() bool { return dropsMetric() == 0 })

	e.setDrops(5, nil)
	waitFor(t, "5 drops", func() bool { return dropsMetric() == 5 })
	e.setDrops(5, errors.New("map lookup failed"))
	waitFor(t, "the error warning", func() bool { return len(h.warnings()) == 2 })
	time.Sleep(30 * time.Millisecond) // several polls with the same error: logged once
	e.setDrops(12, nil)
	waitFor(t, "12 drops", func() bool { return dropsMetric() == 12 })
	e.setDrops(20, nil) // a tick or the shutdown poll sees this
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if v := dropsMetric(); v != 20 {
		t.Errorf("flowd_ringbuf_drops_total = %v after shutdown, want 20", v)
	}
	var grew []any
	errWarnings := 0
	for _, w := range h.warnings() {
		if _, ok := w.Data[logrus.ErrorKey]; ok {
			errWarnings++
			continue
		}
		if w.Data[logKeyBackend] != "ebpf" {
			t.Errorf("drop warning without the backend: %v", w.Data)
		}
		grew = append(grew, w.Data[logKeyDrops], w.Data[logKeyDropsTotal])
	}
	want := []any{uint64(5), uint64(5), uint64(7), uint64(12), uint64(8), uint64(20)}
	if !slices.Equal(grew, want) {
		t.Errorf("drop warnings (drops, total) = %v, want %v", grew, want)
	}
	if errWarnings != 1 {
		t.Errorf("%d warnings about the failing drop counter, want 1", errWarnings)
	}
}

func TestFlowsMetric(t *testing.T) {
	h := newHarness(t, testConfig("netlink"))
	stop := h.start(t)
	<-fakeOf(h.nl).started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	const want = "# HELP flowd_flows Flows a backend tracks now (ebpf: opened and not closed in its records).\n" +
		"# TYPE flowd_flows gauge\nflowd_flows{backend=\"netlink\"} 42\n"
	if err := testutil.GatherAndCompare(h.d.metrics.Registry(), strings.NewReader(want), "flowd_flows"); err != nil {
		t.Error(err)
	}
}

func TestBackendFailure(t *testing.T) {
	h := newHarness(t, testConfig("ebpf", "netlink"))
	nl := fakeOf(h.nl)
	nl.exit, nl.runErr = true, errors.New("inet_diag dump: EINVAL")
	err := h.d.Run(context.Background()) // no cancel: the failure ends it
	if err == nil || !strings.Contains(err.Error(), "netlink backend: inet_diag dump: EINVAL") {
		t.Fatalf("Run = %v", err)
	}
	ev := h.j.list()
	if !slices.Contains(ev, "return ebpf") || !slices.Contains(ev, "close ebpf") || !slices.Contains(ev, "close netlink") {
		t.Errorf("the other backend was not stopped and everything closed: %v", ev)
	}
}

// TestCgroupMetrics: a backend's cgroup state reaches the metrics.
func TestCgroupMetrics(t *testing.T) {
	h := newHarness(t, testConfig("netlink"))
	h.nl = cgroupFake{fake: newFake("netlink", h.j), state: backends.CgroupState{Attached: false, Removals: 2}}
	stop := h.start(t)
	<-fakeOf(h.nl).started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	const want = "# HELP flowd_cgroup_attached 1 while the backend records the flows of the configured cgroup, 0 while it waits for the cgroup, which was removed, to be created again.\n" +
		"# TYPE flowd_cgroup_attached gauge\nflowd_cgroup_attached{backend=\"netlink\"} 0\n" +
		"# HELP flowd_cgroup_removals_total Times the backend found the configured cgroup removed (or replaced by a new one at the same path).\n" +
		"# TYPE flowd_cgroup_removals_total counter\nflowd_cgroup_removals_total{backend=\"netlink\"} 2\n"
	if err := testutil.GatherAndCompare(h.d.metrics.Registry(), strings.NewReader(want), "flowd_cgroup_attached", "flowd_cgroup_removals_total"); err != nil {
		t.Error(err)
	}
}

// TestCgroupRemovedExits: a backend that stops because its cgroup was
// removed (cgroup_removed: exit) fails the run with an error that says why.
func TestCgroupRemovedExits(t *testing.T) {
	h := newHarness(t, testConfig("ebpf"))
	eb := fakeOf(h.ebpf)
	eb.exit, eb.runErr = true, fmt.Errorf("%w: /sys/fs/cgroup/nginx.service (id 4711)", backends.ErrCgroupRemoved)
	err := h.d.Run(context.Background())
	if want := "ebpf backend: cgroup removed: /sys/fs/cgroup/nginx.service (id 4711) (cgroup_removed is exit)"; err == nil || err.Error() != want {
		t.Fatalf("Run = %v, want %q", err, want)
	}
}

func TestBackendStopsEarly(t *testing.T) {
	h := newHarness(t, testConfig("netlink"))
	fakeOf(h.nl).exit = true
	err := h.d.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "netlink backend stopped unexpectedly") {
		t.Fatalf("Run = %v", err)
	}
}

func TestStopTimeout(t *testing.T) {
	h := newHarness(t, testConfig("netlink"))
	h.d.stopTimeout = 50 * time.Millisecond
	fakeOf(h.nl).ignore = true
	stop := h.start(t)
	<-fakeOf(h.nl).started
	err := stop()
	if err == nil || !strings.Contains(err.Error(), "did not stop in time") {
		t.Fatalf("Run = %v", err)
	}
	if fakeOf(h.nl).closes != 1 {
		t.Error("the stuck backend was not closed")
	}
}

func TestOutputFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "records.jsonl")
	if err := os.WriteFile(path, []byte("{\"earlier\":1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig("netlink")
	cfg.Output.Path = path
	recordOnce(t, cfg)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 2 || lines[0] != `{"earlier":1}` || !strings.Contains(lines[1], `"cookie":7`) {
		t.Errorf("output file:\n%s", b)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	cfg := testConfig("netlink")
	cfg.Metrics.Listen = addr
	h := newHarness(t, cfg)
	fakeOf(h.nl).before = []flow.Record{record("netlink", 1)}
	stop := h.start(t)
	<-fakeOf(h.nl).started
	url := "http://" + addr + "/metrics"
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`flowd_records_total{backend="netlink",event="sample"} 1`, `flowd_build_info{version="test"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("GET %s lacks %q", url, want)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: time.Second}
	if resp, err := client.Get(url); err == nil {
		resp.Body.Close()
		t.Errorf("metrics still served after Run returned")
	}
}

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger(config.Log{Level: "warn", Format: "json"}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.WithField(logKeyBackend, "ebpf").Warn("shown")
	if s := buf.String(); strings.Contains(s, "hidden") || !strings.Contains(s, `"backend":"ebpf"`) || !strings.Contains(s, `"msg":"shown"`) {
		t.Errorf("log output %q", s)
	}
	if _, err := NewLogger(config.Log{Level: "loud"}, &buf); err == nil {
		t.Error("bad level accepted")
	}
}

// fileCookies returns the cookies of the records in a JSON Lines file, in
// order; a partial or unparsable line fails the test.
func fileCookies(t *testing.T, path string) []uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		t.Errorf("%s ends in a partial line", path)
	}
	var cookies []uint64
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		var r flow.Record
		if err := sink.ParseJSON(s.Bytes(), &r); err != nil {
			t.Fatalf("%s: line %q: %v", path, s.Text(), err)
		}
		cookies = append(cookies, r.Cookie)
	}
	return cookies
}

// TestReopen: log rotation. After the output file is renamed, Reopen
// writes out what is buffered (to the renamed file) and creates a new file
// at output.path for what follows; nothing is lost.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "records.jsonl")
	cfg := testConfig("netlink")
	cfg.Output.Path = path
	h := newHarness(t, cfg)
	h.d.out = nil // output.path, not the harness's buffer
	nl := fakeOf(h.nl)
	nl.before = []flow.Record{record("netlink", 1), record("netlink", 2)} // buffered, not flushed
	nl.drain = []flow.Record{record("netlink", 3)}

	if ok, err := h.d.Reopen(); ok || err != nil {
		t.Errorf("Reopen before Run = %v, %v; want false, nil", ok, err)
	}
	stop := h.start(t)
	<-nl.started
	rotated := filepath.Join(dir, "records.jsonl.1")
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if ok, err := h.d.Reopen(); !ok || err != nil {
		t.Fatalf("Reopen = %v, %v; want true, nil", ok, err)
	}
	// A failed reopen (the directory is gone) keeps the current file.
	if err := os.Rename(dir, dir+".moved"); err != nil {
		t.Fatal(err)
	}
	if ok, err := h.d.Reopen(); !ok || err == nil {
		t.Errorf("Reopen with the directory gone = %v, %v; want true and an error", ok, err)
	}
	if err := os.Rename(dir+".moved", dir); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	if got := fileCookies(t, rotated); !slices.Equal(got, []uint64{1, 2}) {
		t.Errorf("rotated file holds cookies %v, want 1 and 2", got)
	}
	if got := fileCookies(t, path); !slices.Equal(got, []uint64{3}) {
		t.Errorf("new file holds cookies %v, want 3", got)
	}
	if ok, err := h.d.Reopen(); ok || err != nil {
		t.Errorf("Reopen after Run = %v, %v; want false, nil", ok, err)
	}

	// Standard output (or a writer) has nothing to reopen.
	h2 := newHarness(t, testConfig("netlink"))
	stop2 := h2.start(t)
	<-fakeOf(h2.nl).started
	if ok, err := h2.d.Reopen(); ok || err != nil {
		t.Errorf("Reopen of a non-file output = %v, %v; want false, nil", ok, err)
	}
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
}

// TestSamplesAcrossReopen: with output.samples: changes, a flow's second
// sample is partial, and the first one in a reopened file is complete, so
// that the new file can be read on its own.
func TestSamplesAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "records.jsonl")
	cfg := testConfig("netlink")
	cfg.Output.Path = path
	cfg.Output.Samples = "changes"
	h := newHarness(t, cfg)
	h.d.out = nil
	nl := fakeOf(h.nl)
	second := record("netlink", 7)
	second.Time = second.Time.Add(time.Second)
	second.Info.Set(flow.FieldRTT, 43)
	third := second
	third.Time = third.Time.Add(time.Second)
	nl.before = []flow.Record{record("netlink", 7), second}
	nl.drain = []flow.Record{third}

	stop := h.start(t)
	<-nl.started
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if ok, err := h.d.Reopen(); !ok || err != nil {
		t.Fatalf("Reopen = %v, %v; want true, nil", ok, err)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run = %v", err)
	}
	partial := func(path string) []bool {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var out []bool
		for line := range bytes.Lines(b) {
			var r flow.Record
			p, err := sink.ParseLine(line, &r)
			if err != nil {
				t.Fatalf("%s: %q: %v", path, line, err)
			}
			out = append(out, p)
		}
		return out
	}
	if got := partial(rotated); !slices.Equal(got, []bool{false, true}) {
		t.Errorf("rotated file: partial lines %v, want [false true]", got)
	}
	if got := partial(path); !slices.Equal(got, []bool{false}) {
		t.Errorf("new file: partial lines %v, want [false]", got)
	}
}

// loadConfig loads a config file of content with the environment env and no
// other FLOWD_* variable.
func loadConfig(t *testing.T, content string, env ...string) *config.Config {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, config.EnvPrefix+"_") {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
	for _, kv := range env {
		name, val, _ := strings.Cut(kv, "=")
		t.Setenv(name, val)
	}
	path := filepath.Join(t.TempDir(), "flowd.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestStartupChecks: what the configuration names on the machine is checked
// when the daemon starts, before any backend is created, with errors that
// are configuration errors naming the key, the value and where it was set.
func TestStartupChecks(t *testing.T) {
	cgroupRoot(t)
	dir := t.TempDir()                       // a directory, but not on cgroup2
	link := filepath.Join(dir, "link.jsonl") // planted by another user
	if err := os.Symlink(filepath.Join(dir, "target"), link); err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(dir, "blob") // 100 KiB without a newline
	if err := os.WriteFile(blob, bytes.Repeat([]byte{'x'}, 100<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		file string
		env  []string
		want []string
		run  bool // the check is Run's: New succeeds
	}{
		{name: "nonexistent cgroup", file: "cgroup: /nonexistent/flowd\n", want: []string{`cgroup: "/nonexistent/flowd" is not usable`, "does not exist"}},
		{name: "cgroup not cgroup2", file: "cgroup: " + dir + "\n", want: []string{`cgroup: "` + dir + `"`, "not on a cgroup2 file system"}},
		{name: "cgroup env", env: []string{"FLOWD_CGROUP=/proc"}, want: []string{`cgroup: "/proc"`, "(set by FLOWD_CGROUP)"}},
		{name: "missing netns", file: "netlink:\n  netns: /run/netns/does-not-exist\n", want: []string{`netlink.netns: "/run/netns/does-not-exist"`, "no such file"}},
		{name: "netns not a namespace", file: "netlink:\n  netns: /etc/hostname\n", want: []string{`netlink.netns: "/etc/hostname" is not a network namespace file`}},
		{name: "output in missing directory", file: "output:\n  path: " + dir + "/missing/out.jsonl\n", want: []string{`output.path: "` + dir + `/missing/out.jsonl" is not writable`}, run: true},
		{name: "output a directory", file: "output:\n  path: " + dir + "\n", want: []string{`output.path: "` + dir + `" is not writable`, "is a directory"}, run: true},
		{name: "output a symbolic link", env: []string{"FLOWD_OUTPUT_PATH=" + link}, want: []string{`output.path: "` + link + `" is a symbolic link`, "output.follow_symlinks", "(set by FLOWD_OUTPUT_PATH)"}, run: true},
		{name: "output not JSON Lines", file: "output:\n  path: " + blob + "\n", want: []string{`output.path: "` + blob + `"`, "without a newline"}, run: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := loadConfig(t, tc.file, tc.env...)
			log, _ := logtest.NewNullLogger()
			d, err := New(cfg, log, "test")
			if tc.run {
				if err != nil {
					t.Fatalf("New = %v", err)
				}
				created := false
				d.probe = func() error { return nil }
				d.newNetlink = func(netlink.Config) (backends.Backend, error) { created = true; return nil, errors.New("fake") }
				d.newEBPF = func(ebpf.Config) (backends.Backend, error) { created = true; return nil, errors.New("fake") }
				err = d.Run(context.Background())
				if created {
					t.Error("a backend was created before the output was checked")
				}
			}
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("error %v is not a configuration error", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	// A namespace file passes, and reaches the netlink backend.
	h := newHarness(t, loadConfig(t, "backends: [netlink]\nnetlink:\n  netns: /proc/self/ns/net\n"))
	stop := h.start(t)
	<-fakeOf(h.nl).started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if h.ncfg.Netns != "/proc/self/ns/net" {
		t.Errorf("netlink.Config.Netns = %q", h.ncfg.Netns)
	}
}

// TestBackendConfigs: the configuration reaches each backend's Config,
// whose filter slices are the backend's own.
func TestBackendConfigs(t *testing.T) {
	root := cgroupRoot(t)
	cfg := loadConfig(t, `
ebpf:
  mode: transition
  interval: 0s
  ringbuf_size: 65536
  flush_interval: 250ms
netlink:
  interval: 2s
filter:
  local_ports: [5201, 80]
  remote_cidrs: [10.1.2.3/8, "2001:db8::1/32"]
output:
  tcp_info: [snd_cwnd, rtt]
cgroup_removed: exit
`)
	log, _ := logtest.NewNullLogger()
	d, err := New(cfg, log, "test")
	if err != nil {
		t.Fatal(err)
	}
	ec := d.ebpfConfig()
	if ec.Cgroup != root || ec.Mode != ebpf.ModeTransition || ec.Interval != 0 || ec.RingbufSize != 65536 ||
		ec.FlushInterval != 250*time.Millisecond || len(ec.Filter.RemoteCIDRs) != 2 || ec.Log == nil ||
		!slices.Equal(ec.Members, []flow.Field{flow.FieldSndCwnd, flow.FieldRTT}) || !ec.StopWhenRemoved {
		t.Errorf("ebpf.Config = %+v", ec)
	}
	nc := d.netlinkConfig()
	if nc.Cgroup != root || nc.Interval != 2*time.Second || !slices.Equal(nc.Filter.LocalPorts, []uint16{5201, 80}) || nc.Log == nil ||
		!nc.StopWhenRemoved {
		t.Errorf("netlink.Config = %+v", nc)
	}
	if !nc.Filter.Match(5201, 1, netip.MustParseAddr("10.9.9.9")) || nc.Filter.Match(22, 22, netip.MustParseAddr("10.9.9.9")) {
		t.Errorf("filter %+v does not filter as configured", nc.Filter)
	}
	nc.Filter.LocalPorts[0] = 1
	nc.Filter.RemoteCIDRs[0] = netip.Prefix{}
	ec.Members[0] = flow.FieldState
	if cfg.Filter.LocalPorts[0] != 5201 || !cfg.Filter.RemoteCIDRs[0].IsValid() || cfg.Output.TCPInfo[0] != flow.FieldSndCwnd {
		t.Error("a backend's Config shares its slices with the configuration")
	}
}

// TestOutputsFanOut: every output gets every record, a flush and a close;
// Reopen reaches those that write to files.
func TestOutputsFanOut(t *testing.T) {
	var a, b bytes.Buffer
	path := filepath.Join(t.TempDir(), "records.jsonl")
	file, err := sink.Open(path, sink.Options{})
	if err != nil {
		t.Fatal(err)
	}
	outs := outputs{sink.NewJSONL(&a), file, sink.NewJSONL(&b)}
	r := record("ebpf", 1)
	if err := outs.Write(&r); err != nil {
		t.Fatal(err)
	}
	if a.Len() != 0 || b.Len() != 0 {
		t.Fatal("written before the flush")
	}
	if err := outs.Flush(); err != nil {
		t.Fatal(err)
	}
	fromFile, _ := os.ReadFile(path)
	if a.String() == "" || a.String() != b.String() || a.String() != string(fromFile) {
		t.Errorf("the outputs got %q, %q and %q; want the same line", a.String(), fromFile, b.String())
	}
	if ok, err := outs.Reopen(); !ok || err != nil {
		t.Errorf("Reopen = %v, %v; want true, nil (one output is a file)", ok, err)
	}
	if ok, err := (outputs{sink.NewJSONL(&a)}).Reopen(); ok || err != nil {
		t.Errorf("Reopen without a file = %v, %v; want false, nil", ok, err)
	}
	if err := outs.Close(); err != nil {
		t.Fatal(err)
	}
	if err := outs.Write(&r); !errors.Is(err, sink.ErrClosed) {
		t.Errorf("Write after Close = %v, want sink.ErrClosed", err)
	}
}

// TestRecordsNameTheirCgroup: the daemon fills in each record's cgroup path
// from its id before the outputs see it, and leaves it out where the id
// names no cgroup it can find, also on a record a backend reuses.
func TestRecordsNameTheirCgroup(t *testing.T) {
	root := cgroupRoot(t)
	rootID, err := cgroup.ID(root)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, testConfig("netlink"))
	nl := fakeOf(h.nl)
	known, unknown := record("netlink", 1), record("netlink", 2)
	known.CgroupID = rootID
	unknown.CgroupID = 1 << 62 // no cgroup has it
	nl.before = []flow.Record{known, unknown}
	stop := h.start(t)
	<-nl.started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(h.out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"cgroup_id":`+strconv.FormatUint(rootID, 10)+`,"cgroup":"/",`) ||
		strings.Contains(lines[1], `"cgroup":`) {
		t.Errorf("output:\n%s\nwant the root's path \"/\" on the first line, no cgroup key on the second", h.out.String())
	}

	var got []string
	n := cgroupNamer{cgroup.NewNames(root, root), flow.SinkFunc(func(r *flow.Record) error {
		got = append(got, r.Cgroup)
		return nil
	})}
	r := known
	for _, id := range []uint64{rootID, 0, rootID} {
		r.CgroupID = id
		if err := n.Write(&r); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"/", "", "/"}; !slices.Equal(got, want) {
		t.Errorf("paths of a reused record %q, want %q", got, want)
	}
}

// BenchmarkCgroupNamer is what naming the cgroup costs a record whose
// cgroup is known.
func BenchmarkCgroupNamer(b *testing.B) {
	root, err := cgroup.Mount()
	if err != nil {
		b.Skip(err)
	}
	id, err := cgroup.ID(root)
	if err != nil {
		b.Fatal(err)
	}
	n := cgroupNamer{cgroup.NewNames(root, root), flow.SinkFunc(func(*flow.Record) error { return nil })}
	r := record("ebpf", 1)
	r.CgroupID = id
	b.ReportAllocs()
	for b.Loop() {
		if err := n.Write(&r); err != nil {
			b.Fatal(err)
		}
	}
}
