package main

import (
	"cmp"
	"math"
	"slices"
	"time"

	"gonum.org/v1/plot/plotter"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/utils/flows"
)

// flowSeries is one backend's readings of one flow: x in seconds since the
// figure's origin, y in the member's unit (µs, segments, bytes, bit/s, %).
type flowSeries struct {
	RTT, RTTVar, MinRTT, RcvRTT plotter.XYs // µs
	Cwnd, Ssthresh              plotter.XYs // segments
	CwndBytes                   plotter.XYs // snd_cwnd × snd_mss
	SendRate, RecvRate          plotter.XYs // bit/s: bytes_acked and bytes_received slopes
	DeliveryRate, PacingRate    plotter.XYs // bit/s
	Retrans, RTOs               plotter.XYs // total_retrans segments, total_rto timeouts (cumulative)
	BytesAcked                  plotter.XYs // bytes (cumulative)
	Busy, Rwnd, Sndbuf          plotter.XYs // % of the time between readings
}

// Quantities a collector follows: gauges are drawn as read, counters
// (cumulative) as read or as their rate of change.
type gauge int

const (
	gRTT gauge = iota
	gRTTVar
	gMinRTT
	gRcvRTT
	gCwnd
	gSsthresh
	gCwndBytes
	gDeliveryRate
	gPacingRate
	numGauges
)

type counter int

const (
	kBytesAcked counter = iota
	kBytesReceived
	kRetrans
	kRTOs
	kBusy
	kRwnd
	kSndbuf
	numCounters
)

var counterFields = [numCounters]flow.Field{
	kBytesAcked:    flow.FieldBytesAcked,
	kBytesReceived: flow.FieldBytesReceived,
	kRetrans:       flow.FieldTotalRetrans,
	kRTOs:          flow.FieldTotalRTO,
	kBusy:          flow.FieldBusyTime,
	kRwnd:          flow.FieldRwndLimited,
	kSndbuf:        flow.FieldSndbufLimited,
}

// Values the kernel reports for "not measured" or "no limit".
const (
	minRTTUnmeasured  = math.MaxUint32 // min_rtt before the first RTT sample
	infiniteSsthresh  = math.MaxInt32  // TCP_INFINITE_SSTHRESH: before the first loss
	pacingUnlimited   = math.MaxUint64 // pacing_rate when nothing set one
	bucketsPerFlow    = 1000           // when decimating
	decimateFromCount = 2 * bucketsPerFlow
)

// collector gathers one backend's records of one flow into a flowSeries.
// A flow with more than decimateFromCount records is decimated into
// bucketsPerFlow time buckets: per bucket, a gauge keeps its lowest and
// highest points (so that spikes stay visible) and a counter its last one,
// which bounds the memory of a drawn flow whatever its length.
type collector struct {
	origin   time.Time
	width    float64 // bucket width in seconds; 0 keeps every point
	gauges   [numGauges]track
	counters [numCounters]track
}

// newCollector returns a collector for a flow whose records span
// [start, end] and number records.
func newCollector(origin, start, end time.Time, records int) *collector {
	c := &collector{origin: origin}
	if records > decimateFromCount && end.After(start) {
		c.width = end.Sub(start).Seconds() / bucketsPerFlow
	}
	return c
}

// track is one quantity's points: every one, or per bucket the extremes
// and the last.
type track struct {
	pts     plotter.XYs
	buckets map[int64]*bucket
	first   plotter.XY // the earliest point, so that a counter's first rate has its start
	seen    bool
}

type bucket struct{ lo, hi, last plotter.XY }

func (t *track) add(c *collector, pt plotter.XY) {
	if !t.seen || pt.X < t.first.X {
		t.first, t.seen = pt, true
	}
	if c.width == 0 {
		t.pts = append(t.pts, pt)
		return
	}
	if t.buckets == nil {
		t.buckets = make(map[int64]*bucket)
	}
	i := int64(math.Floor(pt.X / c.width))
	b := t.buckets[i]
	switch {
	case b == nil:
		t.buckets[i] = &bucket{pt, pt, pt}
		return
	case pt.Y < b.lo.Y:
		b.lo = pt
	case pt.Y > b.hi.Y:
		b.hi = pt
	}
	if pt.X >= b.last.X {
		b.last = pt
	}
}

// points returns the track's points in time order: for a gauge every
// bucket's extremes, for a counter its first point and every bucket's last.
func (t *track) points(isGauge bool) plotter.XYs {
	pts := t.pts
	if t.buckets != nil {
		pts = make(plotter.XYs, 0, 2*len(t.buckets)+1)
		if !isGauge {
			pts = append(pts, t.first)
		}
		for _, b := range t.buckets {
			if isGauge {
				pts = append(pts, b.lo)
				if b.hi != b.lo {
					pts = append(pts, b.hi)
				}
			} else if b.last != t.first {
				pts = append(pts, b.last)
			}
		}
	}
	slices.SortStableFunc(pts, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
	return pts
}

// add takes one record's readings.
func (c *collector) add(r *flow.Record) {
	if !flows.ReadAtItsTime(r) {
		return
	}
	x := r.Time.Sub(c.origin).Seconds()
	g := func(q gauge, v float64) { c.gauges[q].add(c, plotter.XY{X: x, Y: v}) }
	info := &r.Info
	if v, ok := info.Get(flow.FieldRTT); ok && v > 0 {
		g(gRTT, float64(v))
	}
	if v, ok := info.Get(flow.FieldRTTVar); ok {
		g(gRTTVar, float64(v))
	}
	if v, ok := info.Get(flow.FieldMinRTT); ok && v > 0 && v < minRTTUnmeasured {
		g(gMinRTT, float64(v))
	}
	if v, ok := info.Get(flow.FieldRcvRTT); ok && v > 0 {
		g(gRcvRTT, float64(v))
	}
	cwnd, okCwnd := info.Get(flow.FieldSndCwnd)
	if okCwnd {
		g(gCwnd, float64(cwnd))
	}
	if v, ok := info.Get(flow.FieldSndSsthresh); ok && v < infiniteSsthresh {
		g(gSsthresh, float64(v))
	}
	if mss, ok := info.Get(flow.FieldSndMSS); ok && okCwnd {
		g(gCwndBytes, float64(cwnd*mss))
	}
	if v, ok := info.Get(flow.FieldDeliveryRate); ok {
		g(gDeliveryRate, float64(v)*8)
	}
	if v, ok := info.Get(flow.FieldPacingRate); ok && v != pacingUnlimited {
		g(gPacingRate, float64(v)*8)
	}
	for k, f := range counterFields {
		if v, ok := info.Get(f); ok {
			c.counters[k].add(c, plotter.XY{X: x, Y: float64(v)})
		}
	}
}

// series returns what the collector gathered.
func (c *collector) series() *flowSeries {
	g := func(q gauge) plotter.XYs { return c.gauges[q].points(true) }
	k := func(q counter) plotter.XYs { return c.counters[q].points(false) }
	return &flowSeries{
		RTT: g(gRTT), RTTVar: g(gRTTVar), MinRTT: g(gMinRTT), RcvRTT: g(gRcvRTT),
		Cwnd: g(gCwnd), Ssthresh: g(gSsthresh), CwndBytes: g(gCwndBytes),
		DeliveryRate: g(gDeliveryRate), PacingRate: g(gPacingRate),
		SendRate: rates(k(kBytesAcked), 8, 0), RecvRate: rates(k(kBytesReceived), 8, 0),
		Retrans: k(kRetrans), RTOs: k(kRTOs), BytesAcked: k(kBytesAcked),
		Busy: shares(k(kBusy)), Rwnd: shares(k(kRwnd)), Sndbuf: shares(k(kSndbuf)),
	}
}

// The kernel counts busy_time, rwnd_limited and sndbuf_limited in jiffies
// (4 ms at HZ=250), so a share over 50 ms is off by up to 8%: shares are
// taken over at least shareWindow, and over no less than a 200th of the
// flow, and held to 100%.
const shareWindow = 0.1 // seconds

// shares returns a time counter (µs) as the share of wall time, in %.
func shares(pts plotter.XYs) plotter.XYs {
	if len(pts) < 2 {
		return nil
	}
	out := rates(pts, 1e-4, max(shareWindow, (pts[len(pts)-1].X-pts[0].X)/200))
	for i := range out {
		out[i].Y = min(out[i].Y, 100)
	}
	return out
}

// rates returns a counter's rate of change times scale, drawn halfway
// between readings. Readings closer than minGap, and than a thousandth of
// the series' span, are merged, so that a burst of records does not draw
// noise; a counter that goes back (a reused cookie) restarts the series.
func rates(pts plotter.XYs, scale, minGap float64) plotter.XYs {
	if len(pts) < 2 {
		return nil
	}
	minGap = max(minGap, (pts[len(pts)-1].X-pts[0].X)/bucketsPerFlow)
	out := make(plotter.XYs, 0, len(pts)-1)
	from := pts[0]
	for _, p := range pts[1:] {
		dx := p.X - from.X
		switch {
		case p.Y < from.Y:
			from = p
		case dx > 0 && dx >= minGap:
			out = append(out, plotter.XY{X: (from.X + p.X) / 2, Y: (p.Y - from.Y) * scale / dx})
			from = p
		}
	}
	return out
}
