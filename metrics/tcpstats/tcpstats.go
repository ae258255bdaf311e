// Package tcpstats turns the record stream into TCP statistics per cgroup
// (and, optionally, per remote port or prefix): counters of bytes and
// retransmits that never go backwards, flows opened, closed and open now,
// and distributions of srtt, min_rtt and delivery rate; and it picks the
// busiest flows. It does no kernel work of its own: it reads the records
// the backends already produce.
//
// The aggregates are plain values (Snapshot), apart from any exposition:
// the Prometheus collector in package metrics reads them, and so can any
// other exporter.
package tcpstats

import (
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flowd/flowd/flow"
)

// CgroupNames finds the path of a cgroup from its id (cgroup.Names).
type CgroupNames interface {
	Path(id uint64) (string, bool)
}

// By chooses the second aggregation, besides the one per cgroup.
type By string

const (
	ByNone         By = ""
	ByRemotePort   By = "remote_port"   // the flow's remote port
	ByRemotePrefix By = "remote_prefix" // the prefix of the flow's remote address
)

// Label values of series that are not one cgroup (or remote port or prefix).
const (
	Other   = "other"   // the cgroups (remotes) beyond the limit
	Unknown = "unknown" // flows whose cgroup path could not be found
)

// Config configures an Aggregator.
type Config struct {
	Names      CgroupNames
	MaxCgroups int // cgroups with series of their own, per backend; the others are Other

	By                 By
	IPv4Bits, IPv6Bits int // prefix lengths for ByRemotePrefix
	MaxBy              int // remote ports or prefixes with series of their own, per backend

	TopFlows int // how many of the busiest flows Snapshot reports; 0 = none
}

// Limits of what an Aggregator keeps, whatever the records.
const (
	// MaxTracked is how many flows an Aggregator follows at once. Flows
	// whose close record never came (lost in a full ring buffer) would
	// otherwise accumulate: at the limit, flows not seen for StaleAfter
	// are forgotten, and records of new flows are ignored (and counted)
	// while none is.
	MaxTracked = 1 << 18
	// StaleAfter is how long a flow must have been silent to be forgotten
	// at MaxTracked, and a series without open flows to give its place to
	// a new cgroup (or remote) at the configured limit.
	StaleAfter = 10 * time.Minute
	// minSelectInterval is the shortest window in which the busiest flows
	// are measured, so that two exporters reading one after the other
	// both see the flows of a real interval.
	minSelectInterval = time.Second
)

// Aggregator is a flow.Sink that aggregates the records it is given. It is
// safe for concurrent use.
type Aggregator struct {
	cfg        Config
	maxTracked int // MaxTracked; tests lower it

	mu       sync.Mutex
	backends []*backendStats
	tracked  int    // flows followed, over all backends
	ignored  uint64 // records of flows not followed (MaxTracked)
	nextGC   int64  // the earliest time (ns) to look for stale flows again

	selected   []*flowState // the busiest flows at the last selection
	selectedAt time.Time
	spare      []*flowState // flows untracked, reused for new ones: churn allocates nothing
}

// maxSpare bounds the flows kept for reuse.
const maxSpare = 1024

// New returns an Aggregator configured by cfg.
func New(cfg Config) *Aggregator {
	cfg.MaxCgroups = max(cfg.MaxCgroups, 1)
	cfg.MaxBy = max(cfg.MaxBy, 1)
	return &Aggregator{cfg: cfg, maxTracked: MaxTracked}
}

// Series is what the flows of one cgroup (or remote port or prefix) and
// one backend did. Bytes and segments count from each flow's first record:
// what a flow moved before flowd saw it (netlink: since the last dump;
// flows open when flowd started) is not counted, so that a restart of flowd
// does not count the past of long-lived flows again.
type Series struct {
	// What each record updates comes first.
	last          int64  // time of its last record, ns
	BytesAcked    uint64 // tcpi_bytes_acked
	BytesReceived uint64 // tcpi_bytes_received
	BytesRetrans  uint64 // tcpi_bytes_retrans
	SegsRetrans   uint64 // tcpi_total_retrans
	Opened        uint64 // open records
	Closed        uint64 // close records
	Open          uint64 // flows followed now

	Backend string
	Key     string // the cgroup path relative to the cgroup2 mount, remote port or prefix; Other or Unknown
	Start   int64  // time of the record that made the series, ns: its counters count from 0 then

	// Distributions over the sample and close records.
	SRTT         Histogram // µs, RTTBounds
	MinRTT       Histogram // µs, RTTBounds
	DeliveryRate Histogram // bytes/s, RateBounds
}

// Histogram counts observations in buckets of fixed upper bounds (RTTBounds
// or RateBounds).
type Histogram struct {
	Count uint64
	Sum   float64 // in the unit of the bounds
	// Counts[i] counts the observations in (Bounds[i-1], Bounds[i]];
	// Counts[len(Bounds)] those above the last bound.
	Counts [maxBuckets]uint64
}

// Bucket upper bounds. RTTs (µs) span loopback's tens of µs to seconds of
// a bloated WAN path; delivery rates (bytes/s) span 100 kbit/s to
// 250 Gbit/s, in steps of 1, 2.5 and 5 bits/s times a power of ten.
var (
	RTTBounds = [...]uint64{10, 25, 50, 100, 250, 500, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6}

	RateBounds = [...]uint64{1e5 / 8, 2.5e5 / 8, 5e5 / 8, 1e6 / 8, 2.5e6 / 8, 5e6 / 8, 1e7 / 8, 2.5e7 / 8,
		5e7 / 8, 1e8 / 8, 2.5e8 / 8, 5e8 / 8, 1e9 / 8, 2.5e9 / 8, 5e9 / 8, 1e10 / 8, 2.5e10 / 8, 5e10 / 8,
		1e11 / 8, 2.5e11 / 8}
)

const maxBuckets = max(len(RTTBounds), len(RateBounds)) + 1

func (h *Histogram) observe(bounds []uint64, v uint64) {
	i := 0
	for i < len(bounds) && v > bounds[i] {
		i++
	}
	h.Counts[i]++
	h.Count++
	h.Sum += float64(v)
}

// Flow is one of the busiest flows.
type Flow struct {
	Backend               string
	Cgroup                string // as in Series.Key
	Cookie                uint64
	LocalAddr, RemoteAddr netip.Addr
	LocalPort, RemotePort uint16

	SRTT         uint64 // µs
	SndCwnd      uint64 // segments
	DeliveryRate uint64 // bytes/s
	TotalRetrans uint64 // segments
	Bytes        uint64 // acked and received in the last interval
}

// Tracked is how many flows the Aggregator follows for a backend.
type Tracked struct {
	Backend string
	Flows   int
}

// Snapshot is a copy of the aggregates.
type Snapshot struct {
	Cgroups []Series // per backend and cgroup
	Remote  []Series // per backend and remote port or prefix; none when By is ByNone
	Flows   []Flow   // the busiest flows, at most TopFlows, busiest first
	Tracked []Tracked
	Ignored uint64 // records of flows not followed, at MaxTracked
}

// counted are the counters a flow adds to its series, in the order of
// flowState.last.
var counted = [...]flow.Field{flow.FieldBytesAcked, flow.FieldBytesReceived, flow.FieldBytesRetrans, flow.FieldTotalRetrans}

// Members are the tcp_info members the aggregates are made of: a backend
// that reads only some members must read these too.
var Members = []flow.Field{flow.FieldBytesAcked, flow.FieldBytesReceived, flow.FieldBytesRetrans,
	flow.FieldTotalRetrans, flow.FieldRTT, flow.FieldMinRTT, flow.FieldDeliveryRate, flow.FieldSndCwnd}

// flowState is what the Aggregator keeps of one flow; what each record
// reads and writes comes first, in two cache lines.
type flowState struct {
	cgroup *Series // nil until the cgroup's path is found
	remote *Series // nil with ByNone
	seen   int64   // time of its last record, ns

	last                        [len(counted)]uint64 // the counters' last values
	srtt, sndCwnd, deliveryRate uint64

	mark     uint64 // acked + received at the last selection
	interval uint64 // acked + received in the interval the last selection ended
	cookie   uint64
	cgroupID uint64
	opened   bool // its first record was an open record
	gone     bool // closed or forgotten
	selected bool // in Aggregator.selected: not reused while it is
	backend  string

	localAddr, remoteAddr netip.Addr
	localPort, remotePort uint16
}

// backendStats holds one backend's flows and series.
type backendStats struct {
	name    string
	flows   map[uint64]*flowState // by cookie
	cgroups *dimension[string]
	ports   *dimension[uint16]
	nets    *dimension[netip.Prefix]
}

func (a *Aggregator) backend(name string) *backendStats {
	for _, b := range a.backends {
		if b.name == name {
			return b
		}
	}
	b := &backendStats{
		name:  name,
		flows: make(map[uint64]*flowState),
		cgroups: newDimension(name, a.cfg.MaxCgroups, Other, Unknown,
			func(p string) string { return strings.ToValidUTF8(p, "\uFFFD") }), // exporters take UTF-8 only
	}
	switch a.cfg.By {
	case ByRemotePort:
		// Port 0 is no remote port of a connected flow: the overflow's key.
		b.ports = newDimension(name, a.cfg.MaxBy, 0, 0, func(p uint16) string {
			if p == 0 {
				return Other
			}
			return strconv.Itoa(int(p))
		})
	case ByRemotePrefix:
		b.nets = newDimension(name, a.cfg.MaxBy, netip.Prefix{}, netip.Prefix{}, func(p netip.Prefix) string {
			if !p.IsValid() {
				return Other
			}
			return p.String()
		})
	}
	a.backends = append(a.backends, b)
	return b
}

// Write adds what r says to the aggregates. The first record of a flow is
// its baseline; each later one adds what the flow's counters grew by, and
// the close record, its last growth. It never fails.
func (a *Aggregator) Write(r *flow.Record) error {
	now := r.Time.UnixNano()
	a.mu.Lock()
	defer a.mu.Unlock()
	b := a.backend(r.Backend)
	f := b.flows[r.Cookie]
	if f == nil {
		if f = a.track(b, r, now); f == nil {
			return nil
		}
	}
	f.seen = now
	closing := r.Event == flow.EventClose
	if f.cgroup == nil && !a.resolve(b, f, closing) {
		return nil // counted once its cgroup is found: f.last holds still
	}

	var grew [len(counted)]uint64
	for i, field := range counted {
		if v, ok := r.Info.Get(field); ok {
			if v > f.last[i] {
				grew[i] = v - f.last[i]
			}
			f.last[i] = v
		}
	}
	observe := closing || r.Event == flow.EventSample
	srtt, hasSRTT := r.Info.Get(flow.FieldRTT)
	minRTT, hasMinRTT := r.Info.Get(flow.FieldMinRTT)
	rate, hasRate := r.Info.Get(flow.FieldDeliveryRate)
	if hasSRTT {
		f.srtt = srtt
	}
	if hasRate {
		f.deliveryRate = rate
	}
	if v, ok := r.Info.Get(flow.FieldSndCwnd); ok {
		f.sndCwnd = v
	}
	for _, s := range [2]*Series{f.cgroup, f.remote} {
		if s == nil {
			continue
		}
		s.last = now
		s.BytesAcked += grew[0]
		s.BytesReceived += grew[1]
		s.BytesRetrans += grew[2]
		s.SegsRetrans += grew[3]
		if observe {
			// 0 is "not measured yet", and so is min_rtt's ~0U.
			if hasSRTT && srtt > 0 {
				s.SRTT.observe(RTTBounds[:], srtt)
			}
			if hasMinRTT && minRTT > 0 && minRTT < 1<<32-1 {
				s.MinRTT.observe(RTTBounds[:], minRTT)
			}
			if hasRate && rate > 0 {
				s.DeliveryRate.observe(RateBounds[:], rate)
			}
		}
		if closing {
			s.Closed++
		}
	}
	if closing {
		a.untrack(b, f)
	}
	return nil
}

// track starts following the flow of r, with r's counters as its
// baseline. It returns nil when MaxTracked flows are followed and none is
// stale.
func (a *Aggregator) track(b *backendStats, r *flow.Record, now int64) *flowState {
	if a.tracked >= a.maxTracked && !a.forgetStale(now) {
		a.ignored++
		return nil
	}
	f := a.newFlow()
	*f = flowState{
		backend:    b.name,
		cookie:     r.Cookie,
		cgroupID:   r.CgroupID,
		opened:     r.Event == flow.EventOpen,
		localAddr:  r.LocalAddr,
		remoteAddr: r.RemoteAddr,
		localPort:  r.LocalPort,
		remotePort: r.RemotePort,
	}
	for i, field := range counted {
		f.last[i] = r.Info.Values[field] // 0 when absent
	}
	f.mark = f.last[0] + f.last[1]
	b.flows[r.Cookie] = f
	a.tracked++
	return f
}

// untrack stops following f.
func (a *Aggregator) untrack(b *backendStats, f *flowState) {
	for _, s := range [2]*Series{f.cgroup, f.remote} {
		if s != nil {
			s.Open--
		}
	}
	f.gone = true
	delete(b.flows, f.cookie)
	a.tracked--
	a.recycle(f)
}

// newFlow returns a spare flowState, or a new one.
func (a *Aggregator) newFlow() *flowState {
	if n := len(a.spare); n > 0 {
		f := a.spare[n-1]
		a.spare = a.spare[:n-1]
		return f
	}
	return new(flowState)
}

// recycle keeps f, untracked, for reuse, unless the selection of the
// busiest flows still holds it.
func (a *Aggregator) recycle(f *flowState) {
	if f.gone && !f.selected && len(a.spare) < maxSpare {
		a.spare = append(a.spare, f)
	}
}

// forgetStale forgets the flows not seen for StaleAfter, at most once a
// minute, and reports whether it forgot any.
func (a *Aggregator) forgetStale(now int64) bool {
	if now < a.nextGC {
		return false
	}
	a.nextGC = now + int64(time.Minute)
	n := a.tracked
	for _, b := range a.backends {
		for _, f := range b.flows {
			if now-f.seen >= int64(StaleAfter) {
				a.untrack(b, f)
			}
		}
	}
	return a.tracked < n
}

// resolve finds f's series, once per flow: it reports false while f's
// cgroup path is not known yet. When force is set (f's last record), a
// cgroup still unknown is Unknown. Series are found by path, not kept by
// cgroup id: ids churn (a service restarted is a new cgroup of the same
// path), and what is kept by id would grow with them.
func (a *Aggregator) resolve(b *backendStats, f *flowState, force bool) bool {
	path, ok := "", false
	if a.cfg.Names != nil {
		path, ok = a.cfg.Names.Path(f.cgroupID)
	}
	switch {
	case ok:
		f.cgroup = b.cgroups.get(path, f.seen)
	case force:
		f.cgroup = b.cgroups.get(Unknown, f.seen)
	default:
		return false
	}
	switch {
	case b.ports != nil:
		f.remote = b.ports.get(f.remotePort, f.seen)
	case b.nets != nil:
		f.remote = b.nets.get(a.remotePrefix(f.remoteAddr), f.seen)
	}
	for _, s := range [2]*Series{f.cgroup, f.remote} {
		if s == nil {
			continue
		}
		s.Open++
		if f.opened {
			s.Opened++
		}
	}
	return true
}

// remotePrefix returns the prefix of addr that ByRemotePrefix aggregates
// by; IPv4-mapped addresses count as IPv4.
func (a *Aggregator) remotePrefix(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap()
	bits := a.cfg.IPv6Bits
	if addr.Is4() {
		bits = a.cfg.IPv4Bits
	}
	p, err := addr.Prefix(bits)
	if err != nil {
		return netip.Prefix{} // Other
	}
	return p
}

// Close does nothing: the aggregates stay readable. It makes the
// Aggregator one of the daemon's outputs.
func (a *Aggregator) Close() error { return nil }

// Snapshot copies the aggregates into s, reusing its slices. It also
// measures the flows' bytes since the previous selection of the busiest
// flows, and selects them again, when that was at least a second ago.
func (a *Aggregator) Snapshot(s *Snapshot) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.series(s)
	s.Flows = s.Flows[:0]
	if a.cfg.TopFlows > 0 {
		a.selectBusiest()
		for _, f := range a.selected {
			if f.gone {
				continue // closed or forgotten since: its series goes away
			}
			s.Flows = append(s.Flows, f.flow())
		}
	}
}

// Series copies the aggregates into s as Snapshot does, but not the
// busiest flows, whose selection it leaves alone: for an exporter that
// pushes the aggregates on its own schedule.
func (a *Aggregator) Series(s *Snapshot) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.series(s)
	s.Flows = s.Flows[:0]
}

// series copies the series, tracked flows and ignored records; a.mu is held.
func (a *Aggregator) series(s *Snapshot) {
	s.Cgroups, s.Remote, s.Tracked = s.Cgroups[:0], s.Remote[:0], s.Tracked[:0]
	for _, b := range a.backends {
		s.Cgroups = b.cgroups.appendTo(s.Cgroups)
		if b.ports != nil {
			s.Remote = b.ports.appendTo(s.Remote)
		}
		if b.nets != nil {
			s.Remote = b.nets.appendTo(s.Remote)
		}
		s.Tracked = append(s.Tracked, Tracked{Backend: b.name, Flows: len(b.flows)})
	}
	s.Ignored = a.ignored
}

func (f *flowState) flow() Flow {
	out := Flow{
		Backend:      f.backend,
		Cgroup:       f.cgroup.Key,
		Cookie:       f.cookie,
		LocalAddr:    f.localAddr,
		RemoteAddr:   f.remoteAddr,
		LocalPort:    f.localPort,
		RemotePort:   f.remotePort,
		SRTT:         f.srtt,
		SndCwnd:      f.sndCwnd,
		DeliveryRate: f.deliveryRate,
		TotalRetrans: f.last[3],
		Bytes:        f.interval,
	}
	return out
}

// Tracked returns how many flows of backend the Aggregator follows.
func (a *Aggregator) Tracked(backend string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, b := range a.backends {
		if b.name == backend {
			return len(b.flows)
		}
	}
	return 0
}
