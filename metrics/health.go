package metrics

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Health says whether flowd records flows: /healthz answers from it, and
// flowd_backend_up follows it. It starts in the starting phase; the daemon
// moves it on.
type Health struct {
	mu       sync.Mutex
	phase    phase
	backends []backendHealth // in the order Running named them
}

type phase uint8

const (
	phaseStarting phase = iota
	phaseRunning
	phaseStopping
)

type backendHealth struct {
	name    string
	failed  error  // why it stopped; stays
	waiting string // why it does not record for now ("": it records)
}

func newHealth() *Health { return &Health{} }

// Running says that the named backends run, without error.
func (h *Health) Running(names ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.phase = phaseRunning
	h.backends = h.backends[:0]
	for _, n := range names {
		h.backends = append(h.backends, backendHealth{name: n})
	}
}

// Failed says that the named backend stopped, and why.
func (h *Health) Failed(name string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.backend(name).failed = err
}

// Waiting says why the named backend does not record flows for now (its
// cgroup was removed and it waits for a new one), or, with "", that it
// does again.
func (h *Health) Waiting(name, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.backend(name).waiting = why
}

// backend returns the named backend's health, added if need be.
func (h *Health) backend(name string) *backendHealth {
	i := slices.IndexFunc(h.backends, func(b backendHealth) bool { return b.name == name })
	if i < 0 {
		h.backends = append(h.backends, backendHealth{name: name})
		i = len(h.backends) - 1
	}
	return &h.backends[i]
}

// records reports whether b records flows (while flowd runs).
func (b *backendHealth) records() bool { return b.failed == nil && b.waiting == "" }

// Stopping says that flowd is shutting down.
func (h *Health) Stopping() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.phase = phaseStopping
}

// Status reports whether flowd is healthy: every backend runs, without
// error, and records flows. The reason says what runs, or what is wrong,
// in a line.
func (h *Health) Status() (ok bool, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var problems, running []string
	for _, b := range h.backends {
		switch {
		case b.failed != nil:
			problems = append(problems, fmt.Sprintf("%s backend: %v", b.name, b.failed))
		case b.waiting != "":
			problems = append(problems, fmt.Sprintf("%s backend: %s", b.name, b.waiting))
		default:
			running = append(running, b.name)
		}
	}
	switch {
	case h.phase == phaseStarting:
		return false, "starting: the backends are not running yet"
	case h.phase == phaseStopping:
		return false, strings.Join(append([]string{"stopping"}, problems...), "; ")
	case len(problems) > 0:
		return false, strings.Join(problems, "; ")
	}
	return true, "ok: " + strings.Join(running, ", ") + " running"
}

var backendUpDesc = prometheus.NewDesc(namespace+"_backend_up",
	"1 when the backend runs and records flows, 0 when it does not (as /healthz says).",
	[]string{labelBackend}, nil)

func (h *Health) Describe(ch chan<- *prometheus.Desc) { ch <- backendUpDesc }

func (h *Health) Collect(ch chan<- prometheus.Metric) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, b := range h.backends {
		up := 0.0
		if h.phase == phaseRunning && b.records() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(backendUpDesc, prometheus.GaugeValue, up, b.name)
	}
}
