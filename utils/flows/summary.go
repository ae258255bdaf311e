package flows

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/flowd/flowd/flow"
)

// Summary is what one flow did in the records read, as one backend
// recorded it. Counters are differences between the flow's first and last
// records that carry them, so a flow seen from its open record counts from
// its start, and a time window counts what happened in it.
type Summary struct {
	Backend string `json:"backend"`
	Cookie  uint64 `json:"cookie"`
	// The 4-tuple and cgroup id are zero (and left out of JSON) for a flow
	// read only from partial samples, which do not repeat them.
	Local    netip.AddrPort `json:"local,omitzero"`
	Remote   netip.AddrPort `json:"remote,omitzero"`
	CgroupID uint64         `json:"cgroup_id,omitzero"`
	Cgroup   string         `json:"cgroup,omitempty"` // the cgroup's path, when the records carry it
	CA       string         `json:"ca,omitempty"`
	Start    time.Time      `json:"start"` // the first record's time
	End      time.Time      `json:"end"`   // the last record's time
	Duration float64        `json:"duration_s"`
	Records  int            `json:"records"`
	Closed   bool           `json:"closed"` // a close record was read

	BytesAcked    uint64  `json:"bytes_acked"`    // sent and acknowledged (the FIN counts one)
	BytesReceived uint64  `json:"bytes_received"` // received in order (the FIN counts one)
	SendRate      float64 `json:"send_bps"`       // bytes_acked over the time between its readings, bit/s
	RecvRate      float64 `json:"recv_bps"`       // bytes_received over the time between its readings, bit/s
	Retransmits   uint64  `json:"retransmits"`    // segments (total_retrans)
	// RetransShare is bytes_retrans / bytes_sent; absent when the records
	// lack them (kernels before 4.19).
	RetransShare *float64 `json:"retrans_share,omitempty"`

	// RTT in µs: the smallest the kernel measured (min_rtt, else the
	// smallest rtt read), and the median and 95th percentile of the
	// smoothed rtt over the records (within 1%). 0 when unknown.
	RTTMin    float64 `json:"rtt_min_us,omitempty"`
	RTTMedian float64 `json:"rtt_median_us,omitempty"`
	RTTP95    float64 `json:"rtt_p95_us,omitempty"`

	// Limits are the shares of the flow's time by what limited its
	// sending; absent for the verdicts that do not weigh them.
	Limits  *Limits `json:"limits,omitempty"`
	Verdict Verdict `json:"verdict"`
	// PeerVerdict is, for a flow that mostly received, the verdict on its
	// other end when the input has it (a loopback or a host pair recorded
	// together).
	PeerVerdict Verdict `json:"peer_verdict,omitempty"`

	// The records lacked bytes_acked or bytes_received (output.tcp_info
	// left them out): BytesAcked or BytesReceived is 0 for want of a
	// reading, which a table shows as "-".
	noAcked, noReceived bool
}

// Key returns the summary's flow key.
func (s *Summary) Key() Key { return Key{s.Backend, s.Cookie} }

// Bytes is the payload moved both ways.
func (s *Summary) Bytes() uint64 { return s.BytesAcked + s.BytesReceived }

// Rate is the mean throughput of the direction that moved more bytes.
func (s *Summary) Rate() float64 { return max(s.SendRate, s.RecvRate) }

// The counters a summary takes differences of.
const (
	cBytesAcked = iota
	cBytesReceived
	cBytesSent
	cBytesRetrans
	cTotalRetrans
	cBusy
	cRwnd
	cSndbuf
	numCounters
)

var counterFields = [numCounters]flow.Field{
	cBytesAcked:    flow.FieldBytesAcked,
	cBytesReceived: flow.FieldBytesReceived,
	cBytesSent:     flow.FieldBytesSent,
	cBytesRetrans:  flow.FieldBytesRetrans,
	cTotalRetrans:  flow.FieldTotalRetrans,
	cBusy:          flow.FieldBusyTime,
	cRwnd:          flow.FieldRwndLimited,
	cSndbuf:        flow.FieldSndbufLimited,
}

// span is a counter's values at the earliest and latest records that
// carry it.
type span struct {
	first, last   uint64
	firstT, lastT int64
	seen          bool
}

func (s *span) add(v uint64, t int64) {
	switch {
	case !s.seen:
		*s = span{first: v, last: v, firstT: t, lastT: t, seen: true}
	case t < s.firstT:
		s.first, s.firstT = v, t
	case t >= s.lastT:
		s.last, s.lastT = v, t
	}
}

// spans reports whether the counter was read at two times or more.
func (s *span) spans() bool { return s.seen && s.lastT > s.firstT }

// seconds is the time from the counter's first reading to its last.
func (s *span) seconds() float64 { return float64(s.lastT-s.firstT) / 1e9 }

// delta is the counter's growth; 0 when unseen or when it went back.
func (s *span) delta() uint64 {
	if !s.seen || s.last < s.first {
		return 0
	}
	return s.last - s.first
}

// unmeasured is what min_rtt reads before the kernel measured an RTT.
const unmeasured = math.MaxUint32

// flowState is what a Summarizer keeps of one flow: a few hundred bytes,
// whatever the number of its records.
type flowState struct {
	local, remote  netip.AddrPort
	cgroupID       uint64
	cgroup, ca     string
	start, end     int64
	records        int
	closed         bool
	haveHeader     bool
	counters       [numCounters]span
	rtt            sketch
	minRTT         uint64 // min_rtt, or unmeasured
	minSmoothedRTT uint64 // the smallest rtt read, or unmeasured
	prevBusy       uint64
	prevBusySet    bool
	busySamples    uint32 // records whose busy_time grew since the flow's previous one
	appLimited     uint32 // of those, the ones with delivery_rate_app_limited set
}

// Summarizer gathers records into per-flow summaries. Its memory grows
// with the number of flows, not of records.
type Summarizer struct {
	flows map[Key]*flowState
}

// Add counts r in its flow's summary. Records of one flow may come in any
// order, but the share of app-limited samples assumes time order.
func (z *Summarizer) Add(r *flow.Record) {
	if z.flows == nil {
		z.flows = make(map[Key]*flowState)
	}
	k := KeyOf(r)
	f := z.flows[k]
	t := r.Time.UnixNano()
	if f == nil {
		f = &flowState{start: t, end: t, minRTT: unmeasured, minSmoothedRTT: unmeasured}
		z.flows[k] = f
	}
	if !f.haveHeader && r.Family != 0 {
		f.haveHeader = true
		tu := TupleOf(r)
		f.local, f.remote, f.cgroupID, f.ca = tu.Local, tu.Remote, r.CgroupID, r.CA
	}
	if f.cgroup == "" {
		f.cgroup = r.Cgroup // the first records in a new cgroup may lack it
	}
	f.start, f.end = min(f.start, t), max(f.end, t)
	f.records++
	f.closed = f.closed || r.Event == flow.EventClose
	if !ReadAtItsTime(r) {
		return
	}
	for c, field := range counterFields {
		if v, ok := r.Info.Get(field); ok {
			f.counters[c].add(v, t)
		}
	}
	if v, ok := r.Info.Get(flow.FieldRTT); ok && v > 0 {
		f.rtt.add(float64(v))
		f.minSmoothedRTT = min(f.minSmoothedRTT, v)
	}
	if v, ok := r.Info.Get(flow.FieldMinRTT); ok && v > 0 && v < unmeasured {
		f.minRTT = min(f.minRTT, v)
	}
	if busy, ok := r.Info.Get(flow.FieldBusyTime); ok {
		if f.prevBusySet && busy > f.prevBusy {
			if app, ok := r.Info.Get(flow.FieldDeliveryRateAppLimited); ok {
				f.busySamples++
				if app != 0 {
					f.appLimited++
				}
			}
		}
		f.prevBusy, f.prevBusySet = busy, true
	}
}

// ReadAtItsTime reports whether r's tcp_info was read at r.Time. A netlink
// close record's is not: it comes from the first dump that no longer lists
// the socket and repeats what the dump before read, so counting it would
// add a span in which nothing moved to the flow's rates and shares.
func ReadAtItsTime(r *flow.Record) bool {
	return r.Backend != flow.BackendNetlink || r.Event != flow.EventClose
}

// Len returns the number of flows seen.
func (z *Summarizer) Len() int { return len(z.flows) }

// Summaries returns every flow's summary, in the order of their start.
func (z *Summarizer) Summaries() []Summary {
	out := make([]Summary, 0, len(z.flows))
	for k, f := range z.flows {
		out = append(out, f.summary(k))
	}
	SortBy(out, SortStart)
	peerVerdicts(out)
	return out
}

func (f *flowState) summary(k Key) Summary {
	s := Summary{
		Backend: k.Backend, Cookie: k.Cookie, Local: f.local, Remote: f.remote,
		CgroupID: f.cgroupID, Cgroup: f.cgroup, CA: f.ca,
		Start: time.Unix(0, f.start).UTC(), End: time.Unix(0, f.end).UTC(),
		Duration: float64(f.end-f.start) / 1e9, Records: f.records, Closed: f.closed,
		BytesAcked:    f.counters[cBytesAcked].delta(),
		BytesReceived: f.counters[cBytesReceived].delta(),
		Retransmits:   f.counters[cTotalRetrans].delta(),
		noAcked:       !f.counters[cBytesAcked].seen,
		noReceived:    !f.counters[cBytesReceived].seen,
	}
	if t := f.counters[cBytesAcked].seconds(); t > 0 {
		s.SendRate = float64(s.BytesAcked) * 8 / t
	}
	if t := f.counters[cBytesReceived].seconds(); t > 0 {
		s.RecvRate = float64(s.BytesReceived) * 8 / t
	}
	if sent := f.counters[cBytesSent].delta(); sent > 0 && f.counters[cBytesRetrans].seen {
		share := float64(f.counters[cBytesRetrans].delta()) / float64(sent)
		s.RetransShare = &share
	}
	switch {
	case f.minRTT != unmeasured:
		s.RTTMin = float64(f.minRTT)
	case f.minSmoothedRTT != unmeasured:
		s.RTTMin = float64(f.minSmoothedRTT)
	}
	s.RTTMedian, _ = f.rtt.quantile(0.5)
	s.RTTP95, _ = f.rtt.quantile(0.95)
	s.Verdict, s.Limits = f.verdict(f.counters[cBusy].seconds(), s.BytesAcked, s.BytesReceived)
	return s
}

// Sort orders of summaries.
const (
	SortStart    = "start"    // earliest first
	SortBytes    = "bytes"    // most bytes (both ways) first
	SortRate     = "rate"     // highest mean throughput first
	SortDuration = "duration" // longest first
	SortRetrans  = "retrans"  // most retransmitted segments first
	SortRTT      = "rtt"      // highest median RTT first
	SortVerdict  = "verdict"  // by verdict, then most bytes first
	SortCookie   = "cookie"   // lowest first
)

// SortKeys lists the sort orders.
var SortKeys = []string{SortStart, SortBytes, SortRate, SortDuration, SortRetrans, SortRTT, SortVerdict, SortCookie}

// SortBy sorts summaries by one of SortKeys; ties keep start order.
func SortBy(sums []Summary, key string) error {
	var by func(a, b *Summary) int
	switch key {
	case SortStart:
		by = func(a, b *Summary) int { return 0 }
	case SortBytes:
		by = func(a, b *Summary) int { return cmp.Compare(b.Bytes(), a.Bytes()) }
	case SortRate:
		by = func(a, b *Summary) int { return cmp.Compare(b.Rate(), a.Rate()) }
	case SortDuration:
		by = func(a, b *Summary) int { return cmp.Compare(b.Duration, a.Duration) }
	case SortRetrans:
		by = func(a, b *Summary) int { return cmp.Compare(b.Retransmits, a.Retransmits) }
	case SortRTT:
		by = func(a, b *Summary) int { return cmp.Compare(b.RTTMedian, a.RTTMedian) }
	case SortVerdict:
		by = func(a, b *Summary) int {
			return cmp.Or(strings.Compare(string(a.Verdict), string(b.Verdict)), cmp.Compare(b.Bytes(), a.Bytes()))
		}
	case SortCookie:
		by = func(a, b *Summary) int { return cmp.Compare(a.Cookie, b.Cookie) }
	default:
		return fmt.Errorf("unknown sort order %q (one of %s)", key, strings.Join(SortKeys, ", "))
	}
	slices.SortStableFunc(sums, func(a, b Summary) int {
		return cmp.Or(by(&a, &b), a.Start.Compare(b.Start), strings.Compare(a.Backend, b.Backend), cmp.Compare(a.Cookie, b.Cookie))
	})
	return nil
}

// peerVerdicts gives each flow that mostly received the verdict on its
// other end, recorded by the same backend at overlapping times.
func peerVerdicts(sums []Summary) {
	type end struct {
		backend       string
		local, remote netip.AddrPort
	}
	senders := map[end][]int{}
	for i := range sums {
		s := &sums[i]
		senders[end{s.Backend, s.Local, s.Remote}] = append(senders[end{s.Backend, s.Local, s.Remote}], i)
	}
	for i := range sums {
		s := &sums[i]
		if s.Verdict != VerdictReceiver || !s.Local.IsValid() {
			continue // a flow of partial samples only: its ends are unknown
		}
		for _, j := range senders[end{s.Backend, s.Remote, s.Local}] {
			p := &sums[j]
			if !p.Start.After(s.End) && !s.Start.After(p.End) {
				s.PeerVerdict = p.Verdict
				break
			}
		}
	}
}
