package validation

import (
	"fmt"
	"math"
	"net/netip"
	"sort"
	"time"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/utils/flows"
	"github.com/flowd/flowd/utils/iperf3"
	"github.com/flowd/flowd/utils/report"
)

// Tolerances. Each says how far flowd may be from its reference and why.
const (
	// TolBytes: bytes_acked of the close record counts every byte the
	// receiving kernel acknowledged (plus the SYN and FIN). iperf3 counts
	// what its sender wrote and what its receiver read, and (3.12) ends the
	// test by closing the data connection: when the receiver still has
	// unread data, or the sender unsent data, the connection is reset
	// (flowd sees ESTABLISHED -> CLOSE) and the two counts differ by up to a
	// socket buffer. flowd must lie between them: at least the receiver's
	// count (less TolBytes) and at most the sender's (plus SYN and FIN).
	TolBytes = 0.01
	// BytesSlack: what bytes_acked counts beyond iperf3's payload: the
	// 37-byte cookie iperf3 sends first on each data connection, the SYN and
	// the FIN.
	BytesSlack = 37 + 2
	// TolRetransmits: iperf3 reads total_retrans from TCP_INFO when its
	// timer ends the test, and the connection goes on retransmitting the
	// data still in flight until it is closed, so flowd's final count may
	// be ahead of iperf3's. The rule: iperf3's count lies between flowd's
	// readings just before and just after iperf3's reading, give or take
	// TolRetransmits.
	TolRetransmits = 1
	// StartSkew: iperf3's times count from its test start, which comes
	// after the data connection's open record (flowd's time 0 for the
	// stream): the control connection still has to exchange a few messages.
	// Usually that takes a few ms; on a loaded machine tens of ms. So
	// iperf3's last reading is at most StartSkew after the instant
	// computed from flowd's clock, never before it.
	StartSkew = 100 * time.Millisecond
	// TolPerInterval: median relative difference between an iperf3
	// interval-end reading (rtt, snd_cwnd) and the eBPF sample nearest in
	// time. The two readings are up to half a sampling interval apart, and
	// under a bottleneck rtt and cwnd move by a few percent per RTT.
	TolPerInterval = 0.15
	// RTTSlack: rtt and rttvar also pass when the difference is at most
	// this many µs. On an unshaped veth link the RTT is tens of µs and set by
	// when the two cores get to run the softirqs, which moves it by a few
	// hundred µs from one reading to the next.
	RTTSlack = 250.0 // µs
	// TolRTTVar: rttvar is compared by the medians of the two series, not
	// reading by reading: it is a mean deviation with gain 1/4 that moves by
	// tens of percent from one ACK to the next, so readings a few ms apart
	// differ by that much. The check is "within a factor of two": it still
	// catches a wrong shift or field (x4, x8).
	TolRTTVar = 1.0
	// MaxScaleUnshaped: rtt and snd_cwnd on the unshaped link, the
	// largest ratio of the two series' medians (see scaleUnshaped).
	MaxScaleUnshaped = 4.0
	// TolBackends: eBPF vs netlink, sample-aligned: both read the same
	// tcp_sock within half a sampling interval of each other.
	TolBackends = 0.15
	// TolSlope: bytes acknowledged per window of ThroughputWindow iperf3
	// intervals, from the eBPF bytes_acked series interpolated at the
	// window's ends, vs the bytes iperf3 wrote in it. Interpolation between
	// samples, one 128 kB write block more or less, and the few ms between
	// the connection's open and iperf3's test start bound the error.
	TolSlope = 0.10
	// ThroughputWindow is the number of iperf3 intervals per throughput window.
	ThroughputWindow = 5
	// TolDeliveryRate: delivery_rate is the kernel's estimate over the
	// last round trip, iperf3's rate an average over the interval; their
	// medians over the test agree within this where a bottleneck sets the
	// rate. Unshaped, CPU-bound flows deliver in bursts, and the per-round
	// estimate measures the burst: there the check is informational.
	TolDeliveryRate = 0.25
	// TolDeliveryRateShare: where several streams share the bottleneck,
	// each one's share swings from round to round and iperf3's rate comes
	// in steps of its write size per interval (about 10% of a share of
	// 100 Mbit/s), so one stream's medians can lie far apart. Each stream
	// is held to this, and the sum over the streams, where the swings
	// cancel, to TolDeliveryRate.
	TolDeliveryRateShare = 0.5
	// MaxSkew: the largest gap between two readings that are compared.
	MaxSkew = 100 * time.Millisecond
)

// Inputs are what a scenario produced.
type Inputs struct {
	Iperf   *iperf3.Result
	EBPF    []flow.Record
	Netlink []flow.Record
	Reverse bool // iperf3 -R: the server sends
	Shaped  bool // a bottleneck sets the rate
}

// Compare builds the checks of one scenario.
func Compare(in Inputs) ([]report.Stream, []report.Check, error) {
	eflows, nflows := flows.Group(in.EBPF), flows.Group(in.Netlink)
	senderIntervals := in.Iperf.SenderIntervals()
	receiverIntervals, receiverReport := in.Iperf.ReceiverIntervals()
	var streams []report.Stream
	var checks []report.Check
	for i, c := range in.Iperf.Start.Connected {
		tuple, err := senderTuple(c, in.Reverse)
		if err != nil {
			return nil, nil, err
		}
		ef := flows.ByTuple(eflows, tuple)
		if ef == nil {
			return nil, nil, fmt.Errorf("stream %s: no ebpf records of its sending end", tuple)
		}
		nf := nflows[ef.Cookie]
		if nf == nil {
			return nil, nil, fmt.Errorf("stream %s: no netlink records with the ebpf cookie %d", tuple, ef.Cookie)
		}
		total, err := endTotals(in.Iperf, c.Socket, i)
		if err != nil {
			return nil, nil, err
		}
		sock := senderSocket(in.Iperf, c, in.Reverse)
		ivs := senderIntervals[sock]
		st := report.Stream{Name: tuple.String(), Cookie: ef.Cookie, Start: ef.Records[0].Time, IperfSocket: sock,
			EBPFRecords: len(ef.Records), NetlinkRecord: len(nf.Records)}
		checks = append(checks, compareStream(st, ef, nf, total, ivs, in.Shaped, len(in.Iperf.Start.Connected))...)
		if receiverIntervals != nil {
			rf := flows.ByTuple(eflows, flows.Tuple{Local: tuple.Remote, Remote: tuple.Local})
			if rf == nil {
				return nil, nil, fmt.Errorf("stream %s: no ebpf records of its receiving end", tuple)
			}
			st.ReceiverCookie = rf.Cookie
			rivs := receiverIntervals[receiverSocket(receiverReport, c, in.Reverse)]
			checks = append(checks, compareReceiver(st, rf, total, rivs)...)
		}
		streams = append(streams, st)
	}
	if in.Shaped && len(streams) > 1 {
		checks = append(checks, deliveryRateSum(checks))
	}
	return streams, checks, nil
}

// deliveryRateSum checks the sum of the streams' delivery_rate medians
// against the sum of their iperf3 medians.
func deliveryRateSum(checks []report.Check) report.Check {
	c := report.Check{Stream: "all", Metric: "delivery_rate (sum)", Compared: "sum over the streams of their delivery_rate checks' medians",
		Tolerance: TolDeliveryRate, Rule: "relative difference of the sums"}
	n := 0
	for _, s := range checks {
		if s.Metric == "delivery_rate" && s.Samples > 0 {
			c.Value += s.Value
			c.Reference += s.Reference
			c.Samples += s.Samples
			n++
		}
	}
	if n > 0 {
		c.Diff = relDiff(c.Value, c.Reference)
	}
	c.Pass = n > 0 && c.Diff <= TolDeliveryRate
	return c
}

func senderTuple(c iperf3.Connection, reverse bool) (flows.Tuple, error) {
	local, err := netip.ParseAddr(c.LocalHost)
	if err != nil {
		return flows.Tuple{}, fmt.Errorf("iperf3 local_host %q: %w", c.LocalHost, err)
	}
	remote, err := netip.ParseAddr(c.RemoteHost)
	if err != nil {
		return flows.Tuple{}, fmt.Errorf("iperf3 remote_host %q: %w", c.RemoteHost, err)
	}
	t := flows.Tuple{
		Local:  netip.AddrPortFrom(local.Unmap(), uint16(c.LocalPort)),
		Remote: netip.AddrPortFrom(remote.Unmap(), uint16(c.RemotePort)),
	}
	if reverse {
		t.Local, t.Remote = t.Remote, t.Local
	}
	return t, nil
}

// senderSocket is the iperf3 socket number of the stream on the sending side.
func senderSocket(r *iperf3.Result, c iperf3.Connection, reverse bool) int {
	if !reverse || r.ServerOutput == nil {
		return c.Socket
	}
	for _, sc := range r.ServerOutput.Start.Connected {
		if sc.RemotePort == c.LocalPort {
			return sc.Socket
		}
	}
	return -1
}

// receiverSocket is the iperf3 socket number of the stream on the
// receiving side, in the report rep that has its intervals.
func receiverSocket(rep *iperf3.Result, c iperf3.Connection, reverse bool) int {
	if reverse {
		return c.Socket
	}
	for _, sc := range rep.Start.Connected {
		if sc.RemotePort == c.LocalPort {
			return sc.Socket
		}
	}
	return -1
}

func endTotals(r *iperf3.Result, socket, index int) (iperf3.EndStream, error) {
	for _, s := range r.End.Streams {
		if s.Sender.Socket == socket || s.Receiver.Socket == socket {
			return s, nil
		}
	}
	if index < len(r.End.Streams) {
		return r.End.Streams[index], nil
	}
	return iperf3.EndStream{}, fmt.Errorf("iperf3 report has no totals for socket %d", socket)
}

func relDiff(v, ref float64) float64 {
	if ref == 0 {
		if v == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return math.Abs(v-ref) / math.Abs(ref)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func value(r *flow.Record, f flow.Field) (float64, bool) {
	v, ok := r.Info.Get(f)
	return float64(v), ok
}

// nearest returns the sample of recs closest to t within MaxSkew.
func nearest(recs []flow.Record, t time.Time) *flow.Record {
	var best *flow.Record
	var bestGap time.Duration
	for i := range recs {
		gap := recs[i].Time.Sub(t)
		if gap < 0 {
			gap = -gap
		}
		if gap <= MaxSkew && (best == nil || gap < bestGap) {
			best, bestGap = &recs[i], gap
		}
	}
	return best
}

// at interpolates field f of the time series recs at t.
func at(recs []flow.Record, f flow.Field, t time.Time) (float64, bool) {
	for i := 1; i < len(recs); i++ {
		a, b := &recs[i-1], &recs[i]
		if a.Time.After(t) || b.Time.Before(t) {
			continue
		}
		va, oka := value(a, f)
		vb, okb := value(b, f)
		if !oka || !okb {
			return 0, false
		}
		span := b.Time.Sub(a.Time)
		if span == 0 {
			return va, true
		}
		frac := float64(t.Sub(a.Time)) / float64(span)
		return va + frac*(vb-va), true
	}
	return 0, false
}

func samples(recs []flow.Record) []flow.Record {
	var out []flow.Record
	for _, r := range recs {
		if r.Event == flow.EventSample {
			out = append(out, r)
		}
	}
	return out
}

func compareStream(st report.Stream, ef, nf *flows.Flow, totals iperf3.EndStream, ivs []iperf3.Stream, shaped bool, nstreams int) []report.Check {
	var checks []report.Check
	add := func(c report.Check) {
		c.Stream = st.Name
		checks = append(checks, c)
	}
	final := ef.Last()

	// Bytes.
	total := totals.Sender
	acked, _ := value(final, flow.FieldBytesAcked)
	sent, received := float64(total.Bytes), float64(totals.Receiver.Bytes)
	add(report.Check{Metric: "bytes", Compared: "ebpf final bytes_acked vs iperf3 sender bytes; must lie between iperf3's receiver and sender counts",
		Value: acked, Reference: sent, Diff: relDiff(acked, sent), Tolerance: TolBytes,
		Rule: fmt.Sprintf("receiver bytes (%.0f) - %g <= flowd <= sender bytes + %d", received, TolBytes, BytesSlack),
		Pass: acked >= received*(1-TolBytes) && acked <= sent+BytesSlack})
	// Retransmits.
	if total.Retransmits != nil {
		ref := float64(*total.Retransmits)
		readAt := st.Start.Add(secs(total.End))
		lo, hi := retransBracket(ef.Records, readAt, readAt.Add(StartSkew))
		retrans, _ := value(final, flow.FieldTotalRetrans)
		add(report.Check{Metric: "retransmits",
			Compared: "iperf3 sender retransmits vs ebpf total_retrans just before and after iperf3's last reading",
			Value:    retrans, Reference: ref, Diff: retrans - ref, Tolerance: TolRetransmits,
			Rule: fmt.Sprintf("flowd before (%.0f) - %d <= iperf3 <= flowd up to %v after (%.0f) + %d",
				lo, TolRetransmits, StartSkew, hi, TolRetransmits),
			Pass: lo-TolRetransmits <= ref && ref <= hi+TolRetransmits})
	}

	// Per-interval readings vs iperf3.
	esamples := samples(ef.Records)
	type perInterval struct {
		metric    string
		tolerance float64
		floor     float64
		ofMedians bool
		flowd     func(r *flow.Record) (float64, bool)
		iperf     func(s *iperf3.Stream) (float64, bool)
	}
	u := func(p *uint64) (float64, bool) {
		if p == nil {
			return 0, false
		}
		return float64(*p), true
	}
	for _, m := range []perInterval{
		{"rtt", TolPerInterval, RTTSlack, false, func(r *flow.Record) (float64, bool) { return value(r, flow.FieldRTT) },
			func(s *iperf3.Stream) (float64, bool) { return u(s.RTT) }},
		{"rttvar", TolRTTVar, RTTSlack, true, func(r *flow.Record) (float64, bool) { return value(r, flow.FieldRTTVar) },
			func(s *iperf3.Stream) (float64, bool) { return u(s.RTTVar) }},
		{"snd_cwnd", TolPerInterval, 0, false, cwndBytes, func(s *iperf3.Stream) (float64, bool) { return u(s.SndCwnd) }},
	} {
		var vals, refs []float64
		for i := range ivs {
			ref, ok := m.iperf(&ivs[i])
			if !ok {
				continue
			}
			r := nearest(esamples, st.Start.Add(secs(ivs[i].End)))
			if r == nil {
				continue
			}
			v, ok := m.flowd(r)
			if !ok {
				continue
			}
			vals, refs = append(vals, v), append(refs, ref)
		}
		c := pairedCheck(m.metric, "ebpf sample nearest to each iperf3 interval end vs iperf3 "+m.metric,
			vals, refs, m.tolerance, m.floor, m.ofMedians)
		if m.metric == "rttvar" && !shaped {
			rttvarUnshaped(&c)
		}
		if (m.metric == "rtt" || m.metric == "snd_cwnd") && !shaped {
			scaleUnshaped(&c, vals, refs)
		}
		add(c)
	}

	// eBPF vs netlink, sample-aligned.
	nsamples := samples(nf.Records)
	for _, m := range []struct {
		metric    string
		tolerance float64
		floor     float64
		ofMedians bool
		get       func(r *flow.Record) (float64, bool)
	}{
		{"rtt", TolBackends, RTTSlack, false, func(r *flow.Record) (float64, bool) { return value(r, flow.FieldRTT) }},
		{"rttvar", TolRTTVar, RTTSlack, true, func(r *flow.Record) (float64, bool) { return value(r, flow.FieldRTTVar) }},
		{"snd_cwnd", TolBackends, 0, false, func(r *flow.Record) (float64, bool) { return value(r, flow.FieldSndCwnd) }},
	} {
		var vals, refs []float64
		for i := range nsamples {
			ref, ok := m.get(&nsamples[i])
			if !ok {
				continue
			}
			r := nearest(esamples, nsamples[i].Time)
			if r == nil {
				continue
			}
			v, ok := m.get(r)
			if !ok {
				continue
			}
			vals, refs = append(vals, v), append(refs, ref)
		}
		c := pairedCheck(m.metric+" (netlink)", "ebpf sample nearest to each netlink sample vs netlink "+m.metric,
			vals, refs, m.tolerance, m.floor, m.ofMedians)
		if m.metric == "rttvar" && !shaped {
			rttvarUnshaped(&c)
		}
		if (m.metric == "rtt" || m.metric == "snd_cwnd") && !shaped {
			scaleUnshaped(&c, vals, refs)
		}
		add(c)
	}

	// Throughput. iperf3 counts bytes as its sender writes them, in 128 kB
	// blocks into a socket buffer, so one 0.2 s interval may hold half or
	// twice the next one's bytes; windows of ThroughputWindow intervals
	// smooth that out.
	slopeVals, slopeRefs := slopes(ef.Records, flow.FieldBytesAcked, st.Start, ivs)
	var drVals, drRefs []float64
	// delivery_rate is one round's estimate, and under competition it
	// swings by a factor of two from round to round: the median of every
	// sample taken during the test is compared with the median of iperf3's
	// intervals (one sample per interval end would leave 15 noisy points).
	if len(ivs) > 0 {
		from, to := st.Start.Add(secs(ivs[0].Start)), st.Start.Add(secs(ivs[len(ivs)-1].End))
		for i := range esamples {
			r := &esamples[i]
			if r.Time.Before(from) || r.Time.After(to) {
				continue
			}
			if v, ok := value(r, flow.FieldDeliveryRate); ok {
				drVals = append(drVals, v*8)
			}
		}
		for i := range ivs {
			drRefs = append(drRefs, ivs[i].BitsPerSecond)
		}
	}
	add(pairedCheck("throughput", fmt.Sprintf("ebpf bytes_acked slope vs iperf3 bits_per_second over windows of %d intervals", ThroughputWindow),
		slopeVals, slopeRefs, TolSlope, 0, false))
	c := report.Check{Metric: "delivery_rate", Compared: "median of ebpf delivery_rate samples during the test vs median iperf3 bits_per_second (bit/s)",
		Tolerance: TolDeliveryRate, Rule: "relative difference of medians", Samples: len(drVals)}
	if len(drVals) > 0 {
		c.Value, c.Reference = median(drVals), median(drRefs)
		c.Diff = relDiff(c.Value, c.Reference)
	}
	c.Pass = len(drVals) > 0 && c.Diff <= TolDeliveryRate
	if shaped && nstreams > 1 {
		c.Tolerance = TolDeliveryRateShare
		c.Rule = fmt.Sprintf("one of %d streams sharing the bottleneck: relative difference of medians (their sum is held to %g)", nstreams, TolDeliveryRate)
		c.Pass = len(drVals) > 0 && c.Diff <= TolDeliveryRateShare
	}
	if !shaped {
		c.Rule, c.Pass = "informational: no bottleneck sets the rate", len(drVals) > 0
	}
	add(c)
	return checks
}

// compareReceiver checks the receiving end's records: its final
// bytes_received against iperf3's counts, and the slope of bytes_received
// against iperf3's receiver over windows of ThroughputWindow intervals.
// They come from the walk that samples every flow that moved, also one
// that only receives.
func compareReceiver(st report.Stream, rf *flows.Flow, totals iperf3.EndStream, ivs []iperf3.Stream) []report.Check {
	got, _ := value(rf.Last(), flow.FieldBytesReceived)
	sent, received := float64(totals.Sender.Bytes), float64(totals.Receiver.Bytes)
	bytes := report.Check{Stream: st.Name, Metric: "bytes (receiver)",
		Compared: "receiving end's final bytes_received vs iperf3 receiver bytes; must lie between iperf3's receiver and sender counts",
		Value:    got, Reference: received, Diff: relDiff(got, received), Tolerance: TolBytes,
		Rule: fmt.Sprintf("receiver bytes - %g <= flowd <= sender bytes (%.0f) + %d", TolBytes, sent, BytesSlack),
		Pass: got >= received*(1-TolBytes) && got <= sent+BytesSlack}
	vals, refs := slopes(rf.Records, flow.FieldBytesReceived, rf.Records[0].Time, ivs)
	slope := pairedCheck("throughput (receiver)",
		fmt.Sprintf("receiving end's bytes_received slope vs iperf3 receiver bits_per_second over windows of %d intervals", ThroughputWindow),
		vals, refs, TolSlope, 0, false)
	slope.Stream = st.Name
	return []report.Check{bytes, slope}
}

// slopes returns, for each window of ThroughputWindow iperf3 intervals
// (whose times count from start), the slope of counter f of recs and the
// rate of the bytes iperf3 counted, both in bit/s.
func slopes(recs []flow.Record, f flow.Field, start time.Time, ivs []iperf3.Stream) (vals, refs []float64) {
	for i := 0; i+ThroughputWindow <= len(ivs); i++ {
		first, last := &ivs[i], &ivs[i+ThroughputWindow-1]
		seconds := last.End - first.Start
		if seconds <= 0 {
			continue
		}
		var bytes uint64
		for _, iv := range ivs[i : i+ThroughputWindow] {
			bytes += iv.Bytes
		}
		a, oka := at(recs, f, start.Add(secs(first.Start)))
		b, okb := at(recs, f, start.Add(secs(last.End)))
		if oka && okb {
			vals, refs = append(vals, (b-a)/seconds*8), append(refs, float64(bytes)/seconds*8)
		}
	}
	return vals, refs
}

// retransBracket returns total_retrans from the last record at or before
// from and from the first record at or after to (the final one when none is).
func retransBracket(recs []flow.Record, from, to time.Time) (before, after float64) {
	after = math.NaN()
	for i := range recs {
		v, ok := value(&recs[i], flow.FieldTotalRetrans)
		if !ok {
			continue
		}
		if !recs[i].Time.After(from) {
			before = v
		}
		if !recs[i].Time.Before(to) && math.IsNaN(after) {
			after = v
		}
	}
	if math.IsNaN(after) && len(recs) > 0 {
		after, _ = value(&recs[len(recs)-1], flow.FieldTotalRetrans)
	}
	return before, after
}

func cwndBytes(r *flow.Record) (float64, bool) {
	cwnd, ok1 := value(r, flow.FieldSndCwnd)
	mss, ok2 := value(r, flow.FieldSndMSS)
	return cwnd * mss, ok1 && ok2
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// scaleUnshaped makes an rtt or snd_cwnd check one of scale. On the
// unshaped link nothing sets either: the RTT is tens to hundreds of µs, set
// by when the CPUs run the two ends and by the queue a flow that does not
// lose builds, and a flow that loses moves its cwnd by a factor of two or
// three between readings hundreds of rounds apart. Neither pairs nor
// medians of readings milliseconds apart agree within a tolerance that
// means anything (medians were seen 2.0 apart for cwnd, 1.44 for rtt).
// Medians within a factor of MaxScaleUnshaped still catch a wrong unit
// (ms for µs, bytes for segments) or a shift (x8); the shaped scenarios
// check the values, and the backends' tests check the members exactly
// against TCP_INFO.
func scaleUnshaped(c *report.Check, vals, refs []float64) {
	if c.Samples < 3 {
		return // pairedCheck said: too few readings
	}
	c.Value, c.Reference = median(vals), median(refs)
	c.Diff = math.Max(c.Value/c.Reference, c.Reference/c.Value)
	c.Tolerance = MaxScaleUnshaped
	c.Rule = fmt.Sprintf("scale: no bottleneck sets it (the ratio of the medians is at most %g)", MaxScaleUnshaped)
	c.Pass = c.Diff <= MaxScaleUnshaped
}

// rttvarUnshaped makes an rttvar check informational. On the unshaped link
// the RTT is tens of µs and its deviation is set by when the CPUs get to
// run the two ends: a round's first ACK, the one the RTT callback (and so
// an eBPF sample) comes with, is often the one that waited for a CPU, and
// on a loaded machine the sampled median lies far above what timers read.
// The member itself is checked exactly against getsockopt(TCP_INFO) by the
// backends' tests, and against iperf3 and netlink where a bottleneck sets
// the RTT.
func rttvarUnshaped(c *report.Check) {
	c.Rule = "informational: no bottleneck sets the RTT (" + c.Rule + ")"
	c.Pass = c.Samples >= 3
}

// pairedCheck compares paired readings: by the median of the pairs'
// relative differences, or (ofMedians) by the relative difference of the
// two series' medians. With slack > 0 it also passes when the median
// absolute difference is at most slack. It needs at least three pairs.
func pairedCheck(metric, compared string, vals, refs []float64, tol, slack float64, ofMedians bool) report.Check {
	c := report.Check{Metric: metric, Compared: compared, Tolerance: tol, Rule: "median relative difference",
		Samples: len(vals)}
	if len(vals) < 3 {
		c.Rule = "too few readings to compare"
		return c
	}
	rel, abs := make([]float64, len(vals)), make([]float64, len(vals))
	for i := range vals {
		rel[i], abs[i] = relDiff(vals[i], refs[i]), math.Abs(vals[i]-refs[i])
	}
	c.Value, c.Reference, c.Diff = median(vals), median(refs), median(rel)
	absDiff := median(abs)
	if ofMedians {
		c.Rule = "relative difference of medians"
		c.Diff, absDiff = relDiff(c.Value, c.Reference), math.Abs(c.Value-c.Reference)
	}
	c.Pass = c.Diff <= tol
	if slack > 0 {
		c.Rule += fmt.Sprintf(", or absolute difference <= %g", slack)
		c.Pass = c.Pass || absDiff <= slack
	}
	return c
}
