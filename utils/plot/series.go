package main

import (
	"fmt"
	"math"
	"time"

	"gonum.org/v1/plot/plotter"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/utils/iperf3"
)

// Every series is in plot units: x in seconds since the flow opened, y in
// the unit of its plot's axis (µs, bytes, segments, Mbit/s, MB).
const (
	mbit = 1e6 // bits per Mbit
	mb   = 1e6 // bytes per MB
)

// flowdSeries is one backend's readings of a stream.
type flowdSeries struct {
	RTT, RTTVar         plotter.XYs // µs
	CwndBytes, CwndSegs plotter.XYs // snd_cwnd*snd_mss bytes; snd_cwnd segments
	Slope, DeliveryRate plotter.XYs // Mbit/s: bytes_acked between consecutive records; delivery_rate
	Retrans, BytesAcked plotter.XYs // total_retrans segments; bytes_acked MB
}

// iperfSeries is iperf3's sender readings of a stream: rtt, rttvar and
// snd_cwnd are read at each interval's end; throughput is the interval's
// average, drawn held over the interval; retransmits and bytes are summed.
type iperfSeries struct {
	RTT, RTTVar         plotter.XYs // µs
	CwndBytes, CwndSegs plotter.XYs // bytes; bytes / the flow's snd_mss
	Throughput          plotter.XYs // Mbit/s, one point at each interval's start and one at the last end
	Retrans, Bytes      plotter.XYs // cumulative retransmits; cumulative bytes written, MB
	MSS                 string      // how CwndSegs was converted, for its legend
}

// streamSeries is every series of one stream, extracted once for all plots.
type streamSeries struct {
	EBPF, Netlink flowdSeries
	Iperf         iperfSeries
}

func extract(s *streamData) *streamSeries {
	start := s.Stream.Start
	return &streamSeries{
		EBPF:    fromFlowd(s.EBPF, start),
		Netlink: fromFlowd(s.Netlink, start),
		Iperf:   fromIperf(s.Iperf, s.EBPF, start),
	}
}

func fromFlowd(recs []flow.Record, start time.Time) flowdSeries {
	var fs flowdSeries
	prevT, prevAcked := math.NaN(), 0.0 // the last record with bytes_acked
	for i := range recs {
		r := &recs[i]
		t := r.Time.Sub(start).Seconds()
		add := func(xys *plotter.XYs, f flow.Field, scale float64) {
			if v, ok := r.Info.Get(f); ok {
				*xys = append(*xys, plotter.XY{X: t, Y: float64(v) * scale})
			}
		}
		add(&fs.RTT, flow.FieldRTT, 1)
		add(&fs.RTTVar, flow.FieldRTTVar, 1)
		add(&fs.CwndSegs, flow.FieldSndCwnd, 1)
		add(&fs.DeliveryRate, flow.FieldDeliveryRate, 8/mbit)
		add(&fs.Retrans, flow.FieldTotalRetrans, 1)
		add(&fs.BytesAcked, flow.FieldBytesAcked, 1/mb)
		cwnd, ok1 := r.Info.Get(flow.FieldSndCwnd)
		mss, ok2 := r.Info.Get(flow.FieldSndMSS)
		if ok1 && ok2 {
			fs.CwndBytes = append(fs.CwndBytes, plotter.XY{X: t, Y: float64(cwnd * mss)})
		}
		if acked, ok := r.Info.Get(flow.FieldBytesAcked); ok {
			if t > prevT { // false for the first record (NaN) and for one at the same instant
				rate := (float64(acked) - prevAcked) * 8 / mbit / (t - prevT)
				fs.Slope = append(fs.Slope, plotter.XY{X: (prevT + t) / 2, Y: rate})
			}
			prevT, prevAcked = t, float64(acked)
		}
	}
	return fs
}

func fromIperf(ivs []iperf3.Stream, ebpf []flow.Record, start time.Time) iperfSeries {
	var is iperfSeries
	if len(ivs) == 0 {
		return is
	}
	var retrans, bytes float64
	hasRetrans := false
	is.Bytes = plotter.XYs{{X: ivs[0].Start}}
	mssSeen := map[uint64]bool{}
	for _, iv := range ivs {
		t := iv.End
		if iv.RTT != nil {
			is.RTT = append(is.RTT, plotter.XY{X: t, Y: float64(*iv.RTT)})
		}
		if iv.RTTVar != nil {
			is.RTTVar = append(is.RTTVar, plotter.XY{X: t, Y: float64(*iv.RTTVar)})
		}
		if iv.SndCwnd != nil {
			is.CwndBytes = append(is.CwndBytes, plotter.XY{X: t, Y: float64(*iv.SndCwnd)})
			if mss, ok := mssAt(ebpf, start.Add(time.Duration(t*float64(time.Second)))); ok {
				is.CwndSegs = append(is.CwndSegs, plotter.XY{X: t, Y: float64(*iv.SndCwnd) / float64(mss)})
				mssSeen[mss] = true
			}
		}
		is.Throughput = append(is.Throughput, plotter.XY{X: iv.Start, Y: iv.BitsPerSecond / mbit})
		if iv.Retransmits != nil {
			if !hasRetrans {
				is.Retrans = plotter.XYs{{X: ivs[0].Start}}
				hasRetrans = true
			}
			retrans += float64(*iv.Retransmits)
			is.Retrans = append(is.Retrans, plotter.XY{X: t, Y: retrans})
		}
		bytes += float64(iv.Bytes)
		is.Bytes = append(is.Bytes, plotter.XY{X: t, Y: bytes / mb})
	}
	last := ivs[len(ivs)-1]
	is.Throughput = append(is.Throughput, plotter.XY{X: last.End, Y: last.BitsPerSecond / mbit})
	is.MSS = "the flow's snd_mss at that time"
	if len(mssSeen) == 1 {
		for mss := range mssSeen {
			is.MSS = fmt.Sprintf("snd_mss %d bytes", mss)
		}
	}
	return is
}

// mssAt returns the snd_mss of the last record at or before t (of the
// first record when none is).
func mssAt(recs []flow.Record, t time.Time) (uint64, bool) {
	var mss uint64
	found := false
	for i := range recs {
		v, ok := recs[i].Info.Get(flow.FieldSndMSS)
		if !ok {
			continue
		}
		if found && recs[i].Time.After(t) {
			break
		}
		mss, found = v, true
	}
	return mss, found
}
