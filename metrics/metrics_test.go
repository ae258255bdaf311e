package metrics

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/flow"
)

func newMetrics(t *testing.T) *Metrics {
	t.Helper()
	m, err := New("1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSinkCountsAndForwards(t *testing.T) {
	m := newMetrics(t)
	var got []flow.Event
	fail := false
	next := flow.SinkFunc(func(r *flow.Record) error {
		if fail {
			return errors.New("disk full")
		}
		got = append(got, r.Event)
		return nil
	})
	s := m.Sink(next)
	for _, r := range []flow.Record{
		{Backend: "ebpf", Event: flow.EventOpen},
		{Backend: "ebpf", Event: flow.EventSample},
		{Backend: "ebpf", Event: flow.EventSample},
		{Backend: "netlink", Event: flow.EventClose},
	} {
		if err := s.Write(&r); err != nil {
			t.Fatal(err)
		}
	}
	fail = true
	if err := s.Write(&flow.Record{Backend: "netlink", Event: flow.EventSample}); err == nil {
		t.Error("the sink's error was not returned")
	}
	if len(got) != 4 {
		t.Errorf("%d records forwarded, want 4", len(got))
	}
	for _, c := range []struct {
		backend, event string
		want           float64
	}{
		{"ebpf", "open", 1}, {"ebpf", "sample", 2}, {"netlink", "close", 1}, {"netlink", "sample", 1}, {"ebpf", "close", 0},
	} {
		if v := testutil.ToFloat64(m.records.WithLabelValues(c.backend, c.event)); v != c.want {
			t.Errorf("flowd_records_total{backend=%q,event=%q} = %v, want %v", c.backend, c.event, v, c.want)
		}
	}
	if v := testutil.ToFloat64(m.outputErrors); v != 1 {
		t.Errorf("flowd_output_errors_total = %v, want 1", v)
	}
}

// flushSink is a buffering sink: Flush counts, and fails when told to.
type flushSink struct {
	flushes int
	err     error
}

func (s *flushSink) Write(*flow.Record) error { return nil }
func (s *flushSink) Flush() error {
	s.flushes++
	return s.err
}

// TestSinkFlushes: the counting sink passes Flush on to a buffering sink,
// and its error, which says nothing of how many records were lost, is not
// counted (the output counts what it loses: AddOutputErrors); sinks that
// do not buffer are not flushed.
func TestSinkFlushes(t *testing.T) {
	m := newMetrics(t)
	next := &flushSink{}
	s := m.Sink(next)
	if err := flow.Flush(s); err != nil || next.flushes != 1 {
		t.Fatalf("Flush = %v, %d flushes of the next sink, want nil, 1", err, next.flushes)
	}
	next.err = errors.New("disk full")
	if err := flow.Flush(s); !errors.Is(err, next.err) {
		t.Errorf("Flush = %v, want the next sink's error", err)
	}
	if v := testutil.ToFloat64(m.outputErrors); v != 0 {
		t.Errorf("flowd_output_errors_total = %v after a failed flush, want 0", v)
	}
	m.AddOutputErrors(170)
	m.AddOutputErrors(0)
	if v := testutil.ToFloat64(m.outputErrors); v != 170 {
		t.Errorf("flowd_output_errors_total = %v after 170 records lost, want 170", v)
	}
	plain := m.Sink(flow.SinkFunc(func(*flow.Record) error { return nil }))
	if err := flow.Flush(plain); err != nil {
		t.Errorf("Flush of a sink that does not buffer = %v", err)
	}
}

func TestDropsAndFlows(t *testing.T) {
	m := newMetrics(t)
	m.AddDrops("ebpf", 0)
	m.AddDrops("ebpf", 5)
	m.AddDrops("ebpf", 7)
	m.SetFlows("netlink", 3)
	m.SetFlows("netlink", 2)
	const want = `
# HELP flowd_flows Flows a backend tracks now (ebpf: opened and not closed in its records).
# TYPE flowd_flows gauge
flowd_flows{backend="netlink"} 2
# HELP flowd_ringbuf_drops_total Records lost because the backend's ring buffer was full.
# TYPE flowd_ringbuf_drops_total counter
flowd_ringbuf_drops_total{backend="ebpf"} 12
# HELP flowd_build_info Always 1; the version label says which flowd runs.
# TYPE flowd_build_info gauge
flowd_build_info{version="1.2.3"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want),
		"flowd_flows", "flowd_ringbuf_drops_total", "flowd_build_info"); err != nil {
		t.Error(err)
	}
}

// TestOwnRegistry: nothing lands in the global default registry, and two
// Metrics can coexist.
func TestOwnRegistry(t *testing.T) {
	m1 := newMetrics(t)
	m2 := newMetrics(t)
	m1.AddDrops("ebpf", 1)
	m2.AddDrops("ebpf", 2)
	if v := testutil.ToFloat64(m1.drops.WithLabelValues("ebpf")); v != 1 {
		t.Errorf("m1 drops = %v", v)
	}
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "flowd_") {
			t.Errorf("%s is in the default registry", mf.GetName())
		}
	}
}

func TestListenError(t *testing.T) {
	m := newMetrics(t)
	log, _ := logtest.NewNullLogger()
	srv, err := m.Listen("127.0.0.1:0", ServerOptions{}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	if _, err := m.Listen(srv.Addr().String(), ServerOptions{}, log); err == nil || !strings.Contains(err.Error(), srv.Addr().String()) {
		t.Errorf("second Listen on %s: err = %v, want one naming the address", srv.Addr(), err)
	}
}

// TestSinkConcurrent counts records of several backends and events from
// several goroutines at once (run it with -race).
func TestSinkConcurrent(t *testing.T) {
	m := newMetrics(t)
	s := m.Sink(flow.SinkFunc(func(*flow.Record) error { return nil }))
	const each = 1000
	var wg sync.WaitGroup
	for _, backend := range []string{"ebpf", "netlink"} {
		for ev := flow.EventOpen; ev <= flow.EventClose; ev++ {
			wg.Go(func() {
				r := &flow.Record{Backend: backend, Event: ev}
				for range each {
					if err := s.Write(r); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	for _, backend := range []string{"ebpf", "netlink"} {
		for ev := flow.EventOpen; ev <= flow.EventClose; ev++ {
			if v := testutil.ToFloat64(m.records.WithLabelValues(backend, ev.String())); v != each {
				t.Errorf("flowd_records_total{backend=%q,event=%q} = %v, want %d", backend, ev, v, each)
			}
		}
	}
}

// BenchmarkSink is the metrics' cost per record the daemon writes.
func BenchmarkSink(b *testing.B) {
	m, err := New("1.2.3")
	if err != nil {
		b.Fatal(err)
	}
	s := m.Sink(flow.SinkFunc(func(*flow.Record) error { return nil }))
	r := &flow.Record{Backend: "ebpf", Event: flow.EventSample}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Write(r); err != nil {
			b.Fatal(err)
		}
	}
}

func TestSetCgroup(t *testing.T) {
	m := newMetrics(t)
	m.SetCgroup("ebpf", true, 0)
	m.SetCgroup("netlink", false, 1)
	m.SetCgroup("netlink", false, 2)
	for _, c := range []struct {
		backend            string
		attached, removals float64
	}{{"ebpf", 1, 0}, {"netlink", 0, 3}} {
		if v := testutil.ToFloat64(m.cgroupAttached.WithLabelValues(c.backend)); v != c.attached {
			t.Errorf("flowd_cgroup_attached{backend=%q} = %v, want %v", c.backend, v, c.attached)
		}
		if v := testutil.ToFloat64(m.cgroupRemovals.WithLabelValues(c.backend)); v != c.removals {
			t.Errorf("flowd_cgroup_removals_total{backend=%q} = %v, want %v", c.backend, v, c.removals)
		}
	}
}

// TestLastRecord: the time of each backend's last record, in seconds.
func TestLastRecord(t *testing.T) {
	m := newMetrics(t)
	s := m.Sink(flow.SinkFunc(func(*flow.Record) error { return nil }))
	at := time.Date(2026, 12, 1, 0, 0, 1, 500_000_000, time.UTC)
	for _, r := range []flow.Record{
		{Time: at.Add(-time.Second), Backend: "ebpf", Event: flow.EventOpen},
		{Time: at, Backend: "ebpf", Event: flow.EventSample},
		{Backend: "netlink", Event: flow.EventSample}, // no time: no series
	} {
		if err := s.Write(&r); err != nil {
			t.Fatal(err)
		}
	}
	want := fmt.Sprintf(`
# HELP flowd_last_record_timestamp_seconds When the backend's last record was taken (Unix time); time() minus it is the seconds since.
# TYPE flowd_last_record_timestamp_seconds gauge
flowd_last_record_timestamp_seconds{backend="ebpf"} %v
`, float64(at.UnixNano())/1e9)
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "flowd_last_record_timestamp_seconds"); err != nil {
		t.Error(err)
	}
}
