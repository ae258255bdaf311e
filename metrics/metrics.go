// Package metrics exposes flowd's Prometheus metrics: records per backend
// and event, tracked flows, ring buffer drops, output errors, whether the
// backends are attached to their cgroup and build information, plus the Go
// and process collectors. It uses its own registry, never the global
// default one.
package metrics

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/flowd/flowd/flow"
)

const namespace = "flowd"

// Label names.
const (
	labelBackend = "backend"
	labelEvent   = "event"
	labelVersion = "version"
)

// Metrics holds flowd's metrics and the registry they are served from.
type Metrics struct {
	reg          *prometheus.Registry
	records      *prometheus.CounterVec
	flows        *prometheus.GaugeVec
	drops        *prometheus.CounterVec
	outputErrors prometheus.Counter

	cgroupAttached *prometheus.GaugeVec
	cgroupRemovals *prometheus.CounterVec
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
			Help:      "Flows a backend currently tracks (backends that count them).",
		}, []string{labelBackend}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "ringbuf_drops_total",
			Help:      "Records lost because the backend's ring buffer was full.",
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
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: namespace,
		Name:      "build_info",
		Help:      "Always 1; the version label says which flowd runs.",
	}, []string{labelVersion})
	buildInfo.WithLabelValues(version).Set(1)

	for _, c := range []prometheus.Collector{
		m.records, m.flows, m.drops, m.outputErrors, m.cgroupAttached, m.cgroupRemovals, buildInfo,
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

// Sink returns a sink that counts each record, then writes it to next. A
// record next refuses counts as an output error; the records an output
// loses later, when it writes what it buffered, it counts itself
// (AddOutputErrors). It is safe for concurrent use if next is.
func (m *Metrics) Sink(next flow.Sink) flow.Sink {
	s := &countingSink{m: m, next: next}
	s.counters.Store(&[]backendCounters{})
	return s
}

// countingSink keeps the counters of every backend and event it has seen,
// so that counting a record is a short scan of a slice holding one entry
// per backend (usually the first matches), not the label hashing and
// locking of CounterVec.WithLabelValues, nor a map's string hashing: it
// runs once per record.
type countingSink struct {
	m        *Metrics
	next     flow.Sink
	mu       sync.Mutex                        // serializes additions to counters
	counters atomic.Pointer[[]backendCounters] // copied on write
}

// backendCounters holds one backend's counters, indexed by event; nil
// until a record with that event is seen.
type backendCounters struct {
	backend string
	events  [256]prometheus.Counter
}

func (s *countingSink) Write(r *flow.Record) error {
	s.counter(r).Inc()
	if err := s.next.Write(r); err != nil {
		s.m.outputErrors.Inc()
		return err
	}
	return nil
}

// Flush flushes next, when it buffers.
func (s *countingSink) Flush() error { return flow.Flush(s.next) }

func (s *countingSink) counter(r *flow.Record) prometheus.Counter {
	if c := find(*s.counters.Load(), r); c != nil {
		return c
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.counters.Load()
	if c := find(old, r); c != nil {
		return c
	}
	counters := slices.Clone(old)
	i := slices.IndexFunc(counters, func(b backendCounters) bool { return b.backend == r.Backend })
	if i < 0 {
		counters = append(counters, backendCounters{backend: r.Backend})
		i = len(counters) - 1
	}
	c := s.m.records.WithLabelValues(r.Backend, r.Event.String())
	counters[i].events[r.Event] = c
	s.counters.Store(&counters)
	return c
}

// find returns the counter of r's backend and event, nil if there is none yet.
func find(counters []backendCounters, r *flow.Record) prometheus.Counter {
	for i := range counters {
		if counters[i].backend == r.Backend {
			return counters[i].events[r.Event]
		}
	}
	return nil
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
