// Package metrics exposes flowd's Prometheus metrics: the TCP statistics
// of the flows it records (per cgroup, from package tcpstats), and flowd's
// own health and cost: records per backend and event, tracked flows, ring
// buffer drops and backlog, dumps, output errors, whether the backends are
// attached to their cgroup, the kernel's statistics of flowd's BPF
// programs, build information, and the Go and process collectors. It uses
// its own registry, never the global default one, and serves it over HTTP
// with /healthz (Server).
package metrics

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/flow"
)

const namespace = "flowd"

// Label names.
const (
	labelBackend = "backend"
	labelEvent   = "event"
	labelVersion = "version"
	labelProgram = "program"
)

// Metrics holds flowd's metrics and the registry they are served from.
type Metrics struct {
	reg           *prometheus.Registry
	health        *Health
	records       *prometheus.CounterVec
	flows         *prometheus.GaugeVec
	drops         *prometheus.CounterVec
	unread        *prometheus.GaugeVec
	ringbufSize   *prometheus.GaugeVec
	dumpDuration  *prometheus.HistogramVec
	dumpFailures  *prometheus.CounterVec
	outputErrors  prometheus.Counter
	rejectedConns prometheus.Counter

	cgroupAttached *prometheus.GaugeVec
	cgroupRemovals *prometheus.CounterVec

	counters atomic.Pointer[[]*backendCounters] // of every Sink; copied on write
	mu       sync.Mutex                         // serializes additions to counters
	programs programStats

	tcpMu sync.Mutex
	tcp   *tcpExporter // nil: no TCP metrics
}

// New returns the metrics of a flowd of this version, registered in a new
// registry.
func New(version string) (*Metrics, error) {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "records_total",
			Help:      "Records received from the backends, by backend and event.",
		}, []string{labelBackend, labelEvent}),
		flows: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "flows",
			Help:      "Flows a backend tracks now (ebpf: opened and not closed in its records).",
		}, []string{labelBackend}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "ringbuf_drops_total",
			Help:      "Records lost because the backend's ring buffer was full.",
		}, []string{labelBackend}),
		unread: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "ringbuf_unread_bytes",
			Help:      "Bytes of records in the backend's ring buffer not read yet.",
		}, []string{labelBackend}),
		ringbufSize: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "ringbuf_size_bytes",
			Help:      "Size of the backend's ring buffer.",
		}, []string{labelBackend}),
		dumpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "dump_duration_seconds",
			Help:      "Time a round of inet_diag dumps (every network namespace) took.",
			Buckets:   prometheus.ExponentialBuckets(100e-6, 2.5, 12), // 100 µs to ~2.4 s
		}, []string{labelBackend}),
		dumpFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "dump_errors_total",
			Help:      "inet_diag dumps that failed or were skipped.",
		}, []string{labelBackend}),
		outputErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "output_errors_total",
			Help:      "Records lost because the output could not be written.",
		}),
		cgroupAttached: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace,
			Name:      "cgroup_attached",
			Help:      "1 while the backend records the flows of the configured cgroup, 0 while it waits for the cgroup, which was removed, to be created again.",
		}, []string{labelBackend}),
		cgroupRemovals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "cgroup_removals_total",
			Help:      "Times the backend found the configured cgroup removed (or replaced by a new one at the same path).",
		}, []string{labelBackend}),
		rejectedConns: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "http_rejected_connections_total",
			Help:      "Connections to the metrics endpoint closed at once because too many were open.",
		}),
	}
	m.counters.Store(&[]*backendCounters{})
	m.health = newHealth()
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "build_info",
		Help:      "Always 1; the version label says which flowd runs.",
	}, []string{labelVersion})
	buildInfo.WithLabelValues(version).Set(1)

	for _, c := range []prometheus.Collector{
		m.records, m.flows, m.drops, m.unread, m.ringbufSize, m.dumpDuration, m.dumpFailures,
		m.outputErrors, m.cgroupAttached, m.cgroupRemovals, m.rejectedConns, buildInfo, m.health,
		lastRecords{m}, &m.programs,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := m.reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	return m, nil
}

// Registry returns the registry the metrics are in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Health returns what /healthz answers from.
func (m *Metrics) Health() *Health { return m.health }

// Sink returns a sink that counts each record, then writes it to next. A
// record next refuses counts as an output error; the records an output
// loses later, when it writes what it buffered, it counts itself
// (AddOutputErrors). It is safe for concurrent use if next is.
func (m *Metrics) Sink(next flow.Sink) flow.Sink {
	return &countingSink{m: m, next: next}
}

// countingSink counts records by backend and event in the counters of
// Metrics, found by a short scan of a slice holding one entry per backend
// (usually the first matches), not by the label hashing and locking of
// CounterVec.WithLabelValues, nor a map's string hashing: it runs once per
// record.
type countingSink struct {
	m    *Metrics
	next flow.Sink
}

// backendCounters holds one backend's counters, indexed by event, and the
// time of its last record.
type backendCounters struct {
	backend string
	events  [flow.EventClose + 1]prometheus.Counter // nil for no event
	last    atomic.Int64                            // Unix ns
}

func (s *countingSink) Write(r *flow.Record) error {
	c := s.m.backendCounters(r.Backend)
	if int(r.Event) < len(c.events) && c.events[r.Event] != nil {
		c.events[r.Event].Inc()
	} else {
		s.m.records.WithLabelValues(r.Backend, r.Event.String()).Inc()
	}
	c.last.Store(r.Time.UnixNano())
	if err := s.next.Write(r); err != nil {
		s.m.outputErrors.Inc()
		return err
	}
	return nil
}

// Flush flushes next, when it buffers.
func (s *countingSink) Flush() error { return flow.Flush(s.next) }

// backendCounters returns the counters of backend, made with a series for
// every event the first time, so that they all exist from the start.
func (m *Metrics) backendCounters(backend string) *backendCounters {
	if c := findCounters(*m.counters.Load(), backend); c != nil {
		return c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.counters.Load()
	if c := findCounters(old, backend); c != nil {
		return c
	}
	c := &backendCounters{backend: backend}
	for ev := flow.EventOpen; ev <= flow.EventClose; ev++ {
		c.events[ev] = m.records.WithLabelValues(backend, ev.String())
	}
	m.counters.Store(new(append(slices.Clone(old), c)))
	return c
}

func findCounters(counters []*backendCounters, backend string) *backendCounters {
	for _, c := range counters {
		if c.backend == backend {
			return c
		}
	}
	return nil
}

// lastRecords exports the time of each backend's last record.
type lastRecords struct{ m *Metrics }

var lastRecordDesc = prometheus.NewDesc(namespace+"_last_record_timestamp_seconds",
	"When the backend's last record was taken (Unix time); time() minus it is the seconds since.",
	[]string{labelBackend}, nil)

func (l lastRecords) Describe(ch chan<- *prometheus.Desc) { ch <- lastRecordDesc }

func (l lastRecords) Collect(ch chan<- prometheus.Metric) {
	for _, c := range *l.m.counters.Load() {
		if c.last.Load() <= 0 { // no record with a time yet
			continue
		}
		ch <- prometheus.MustNewConstMetric(lastRecordDesc, prometheus.GaugeValue,
			float64(c.last.Load())/1e9, c.backend)
	}
}

// AddDrops adds n records lost by backend. Adding 0 makes the series
// appear before the first drop.
func (m *Metrics) AddDrops(backend string, n uint64) {
	m.drops.WithLabelValues(backend).Add(float64(n))
}

// AddOutputErrors adds n records an output lost.
func (m *Metrics) AddOutputErrors(n int) {
	m.outputErrors.Add(float64(n))
}

// SetFlows sets the number of flows backend tracks.
func (m *Metrics) SetFlows(backend string, n int) {
	m.flows.WithLabelValues(backend).Set(float64(n))
}

// SetCgroup sets whether backend is attached to its cgroup, and adds
// removals to the times it found it removed (0 makes the series appear).
func (m *Metrics) SetCgroup(backend string, attached bool, removals uint64) {
	v := 0.0
	if attached {
		v = 1
	}
	m.cgroupAttached.WithLabelValues(backend).Set(v)
	m.cgroupRemovals.WithLabelValues(backend).Add(float64(removals))
}

// SetUnread sets the bytes not read yet in backend's ring buffer, and its size.
func (m *Metrics) SetUnread(backend string, unread, size int) {
	m.unread.WithLabelValues(backend).Set(float64(unread))
	m.ringbufSize.WithLabelValues(backend).Set(float64(size))
}

// AddDumps observes the durations of backend's rounds of dumps and adds
// failed dumps to its count. Adding none makes the series appear.
func (m *Metrics) AddDumps(backend string, durations []time.Duration, failed uint64) {
	h := m.dumpDuration.WithLabelValues(backend)
	for _, d := range durations {
		h.Observe(d.Seconds())
	}
	m.dumpFailures.WithLabelValues(backend).Add(float64(failed))
}

// SetPrograms sets the kernel's statistics of backend's BPF programs.
func (m *Metrics) SetPrograms(backend string, stats []backends.ProgramStats) {
	m.programs.set(backend, stats)
}

// programStats exports the kernel's counters of flowd's BPF programs,
// as last read.
type programStats struct {
	mu    sync.Mutex
	stats map[string][]backends.ProgramStats // by backend
}

var (
	programRunsDesc = prometheus.NewDesc(namespace+"_bpf_program_runs_total",
		"Times the kernel ran the BPF program (with metrics.bpf_stats).", []string{labelBackend, labelProgram}, nil)
	programTimeDesc = prometheus.NewDesc(namespace+"_bpf_program_run_seconds_total",
		"Time the kernel spent running the BPF program (with metrics.bpf_stats).", []string{labelBackend, labelProgram}, nil)
	programMissesDesc = prometheus.NewDesc(namespace+"_bpf_program_recursion_misses_total",
		"Runs of the BPF program the kernel skipped because another BPF program ran on that CPU.",
		[]string{labelBackend, labelProgram}, nil)
)

func (p *programStats) set(backend string, stats []backends.ProgramStats) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stats == nil {
		p.stats = make(map[string][]backends.ProgramStats)
	}
	p.stats[backend] = slices.Clone(stats)
}

func (p *programStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- programRunsDesc
	ch <- programTimeDesc
	ch <- programMissesDesc
}

func (p *programStats) Collect(ch chan<- prometheus.Metric) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for backend, stats := range p.stats {
		for _, s := range stats {
			ch <- prometheus.MustNewConstMetric(programRunsDesc, prometheus.CounterValue, float64(s.Runs), backend, s.Name)
			ch <- prometheus.MustNewConstMetric(programTimeDesc, prometheus.CounterValue, s.RunTime.Seconds(), backend, s.Name)
			ch <- prometheus.MustNewConstMetric(programMissesDesc, prometheus.CounterValue, float64(s.RecursionMisses), backend, s.Name)
		}
	}
}
