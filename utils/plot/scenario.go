package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"time"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg/draw"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/utils/flows"
	"github.com/flowd/flowd/utils/iperf3"
	"github.com/flowd/flowd/utils/report"
)

// Files of a validation scenario directory.
const (
	ebpfFile    = "ebpf.jsonl"
	netlinkFile = "netlink.jsonl"
	iperfFile   = "iperf3.json"
	reportFile  = "report.json"
	plotsDir    = "plots"
)

// isScenario reports whether dir holds a file that flowd's output never
// has, report.json or iperf3.json; a scenario missing the other files is
// still one, so that the error names what is missing.
func isScenario(dir string) bool {
	for _, f := range []string{reportFile, iperfFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return true
		}
	}
	return false
}

// scenarioDirs returns dir when it is a scenario directory, else the
// scenario directories directly under it (none when it holds none).
func scenarioDirs(dir string) ([]string, error) {
	if isScenario(dir) {
		return []string{dir}, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, e := range entries {
		if d := filepath.Join(dir, e.Name()); e.IsDir() && isScenario(d) {
			dirs = append(dirs, d)
		}
	}
	return dirs, nil
}

// scenario is what one scenario directory holds.
type scenario struct {
	Dir           string
	Report        report.Report
	EBPF, Netlink map[uint64]*flows.Flow
	Intervals     map[int][]iperf3.Stream // iperf3's sender intervals by socket
}

func loadScenario(dir string) (*scenario, error) {
	sc := &scenario{Dir: dir}
	if err := loadReport(filepath.Join(dir, reportFile), &sc.Report); err != nil {
		return nil, err
	}
	ebpf, err := flows.Load(filepath.Join(dir, ebpfFile))
	if err != nil {
		return nil, err
	}
	netlink, err := flows.Load(filepath.Join(dir, netlinkFile))
	if err != nil {
		return nil, err
	}
	ip, err := iperf3.Load(filepath.Join(dir, iperfFile))
	if err != nil {
		return nil, err
	}
	sc.EBPF, sc.Netlink, sc.Intervals = flows.Group(ebpf), flows.Group(netlink), ip.SenderIntervals()
	return sc, nil
}

func loadReport(path string, r *report.Report) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, r); err != nil {
		return fmt.Errorf("%s: not a flowd validation report: %w", path, err)
	}
	if len(r.Streams) == 0 {
		return fmt.Errorf("%s: report has no streams", path)
	}
	for i, s := range r.Streams {
		if s.Start.IsZero() {
			return fmt.Errorf("%s: stream %d (%s) has no start time", path, i+1, s.Name)
		}
	}
	return nil
}

// streamData is the raw readings of one stream's sending end.
type streamData struct {
	Stream        report.Stream
	EBPF, Netlink []flow.Record
	Iperf         []iperf3.Stream
	noIperf       bool // iperf3 has no sender intervals for the stream's socket
}

// stream returns the readings of report stream i.
func (sc *scenario) stream(i int) (*streamData, error) {
	st := sc.Report.Streams[i]
	ef, nf := sc.EBPF[st.Cookie], sc.Netlink[st.Cookie]
	if ef == nil {
		return nil, fmt.Errorf("%s: no records with cookie %d (stream %d, %s, in %s)",
			filepath.Join(sc.Dir, ebpfFile), st.Cookie, i+1, st.Name, reportFile)
	}
	if nf == nil {
		return nil, fmt.Errorf("%s: no records with cookie %d (stream %d, %s, in %s)",
			filepath.Join(sc.Dir, netlinkFile), st.Cookie, i+1, st.Name, reportFile)
	}
	ivs := sc.Intervals[st.IperfSocket]
	return &streamData{Stream: st, EBPF: ef.Records, Netlink: nf.Records, Iperf: ivs, noIperf: len(ivs) == 0}, nil
}

// plotScenario writes dir/plots/ and returns the path of its index.html.
func plotScenario(dir string, warn io.Writer) (string, error) {
	sc, err := loadScenario(dir)
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, plotsDir)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	var pages []streamPage
	for i := range sc.Report.Streams {
		s, err := sc.stream(i)
		if err != nil {
			return "", err
		}
		if s.noIperf {
			fmt.Fprintf(warn, "%s: stream %d: %s has no sender intervals for socket %d; plotting flowd only\n",
				dir, i+1, iperfFile, s.Stream.IperfSocket)
		}
		ss := extract(s)
		var files []plotFile
		for _, m := range metrics {
			fig := figure{File: fmt.Sprintf("%s-s%d", m.File, i+1), Unit: m.Unit, YLabel: m.YLabel, YUnit: m.YUnit,
				Title:  fmt.Sprintf("%s, stream %d (%s): %s", sc.Report.Scenario, i+1, s.Stream.Name, m.Title),
				Series: m.Series(ss)}
			f, err := fig.save(out, timeAxis{Origin: s.Stream.Start})
			if err != nil {
				return "", fmt.Errorf("%s: stream %d: %w", dir, i+1, err)
			}
			files = append(files, f)
		}
		pages = append(pages, streamPage{N: i + 1, Stream: s.Stream, Plots: files})
	}
	index := filepath.Join(out, "index.html")
	if err := writeScenarioIndex(index, &sc.Report, pages); err != nil {
		return "", err
	}
	return index, nil
}

// iperfSeries is iperf3's sender readings of a stream: rtt, rttvar and
// snd_cwnd are read at each interval's end; throughput is the interval's
// average, drawn held over the interval; retransmits and bytes are summed.
type iperfSeries struct {
	RTT, RTTVar         plotter.XYs // µs
	CwndBytes, CwndSegs plotter.XYs // bytes; bytes / the flow's snd_mss
	Throughput          plotter.XYs // bit/s, one point at each interval's start and one at the last end
	Retrans, Bytes      plotter.XYs // cumulative retransmits; cumulative bytes written
	MSS                 string      // how CwndSegs was converted, for its legend
}

// streamSeries is every series of one stream, extracted once for all plots.
type streamSeries struct {
	EBPF, Netlink *flowSeries
	Iperf         iperfSeries
}

func extract(s *streamData) *streamSeries {
	start := s.Stream.Start
	from := func(recs []flow.Record) *flowSeries {
		c := newCollector(start, start, start, 0) // validation runs are short: every point
		for i := range recs {
			c.add(&recs[i])
		}
		return c.series()
	}
	return &streamSeries{EBPF: from(s.EBPF), Netlink: from(s.Netlink), Iperf: fromIperf(s.Iperf, s.EBPF, start)}
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
		is.Throughput = append(is.Throughput, plotter.XY{X: iv.Start, Y: iv.BitsPerSecond})
		if iv.Retransmits != nil {
			if !hasRetrans {
				is.Retrans = plotter.XYs{{X: ivs[0].Start}}
				hasRetrans = true
			}
			retrans += float64(*iv.Retransmits)
			is.Retrans = append(is.Retrans, plotter.XY{X: t, Y: retrans})
		}
		bytes += float64(iv.Bytes)
		is.Bytes = append(is.Bytes, plotter.XY{X: t, Y: bytes})
	}
	last := ivs[len(ivs)-1]
	is.Throughput = append(is.Throughput, plotter.XY{X: last.End, Y: last.BitsPerSecond})
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

// Sources of a validation plot's series: each has its colour and glyph.
var (
	ebpfColor    = okabeIto[0] // blue
	netlinkColor = okabeIto[1] // vermillion
	iperfColor   = color.Color(color.Black)
)

// both returns the eBPF and netlink series of one tcp_info quantity.
func both(label string, ebpf, netlink plotter.XYs) []series {
	return []series{
		{Label: "eBPF " + label, Color: ebpfColor, Glyph: draw.CircleGlyph{}, XY: ebpf},
		{Label: "netlink " + label, Color: netlinkColor, Glyph: draw.TriangleGlyph{}, XY: netlink},
	}
}

func iperf(label string, xy plotter.XYs) series {
	return series{Label: "iperf3 " + label, Color: iperfColor, Glyph: draw.BoxGlyph{}, XY: xy}
}

// metric is one kind of validation plot.
type metric struct {
	File, Title, YLabel string
	Unit                unit
	YUnit               string
	Series              func(s *streamSeries) []series
}

var metrics = []metric{
	{"rtt", "smoothed RTT", "rtt", unitDuration, "", func(s *streamSeries) []series {
		return append(both("rtt", s.EBPF.RTT, s.Netlink.RTT), iperf("rtt at interval end", s.Iperf.RTT))
	}},
	{"rttvar", "RTT mean deviation", "rttvar", unitDuration, "", func(s *streamSeries) []series {
		return append(both("rttvar", s.EBPF.RTTVar, s.Netlink.RTTVar), iperf("rttvar at interval end", s.Iperf.RTTVar))
	}},
	{"cwnd-bytes", "congestion window in bytes", "snd_cwnd", unitBytes, "", func(s *streamSeries) []series {
		return append(both("snd_cwnd × snd_mss", s.EBPF.CwndBytes, s.Netlink.CwndBytes),
			iperf("snd_cwnd at interval end", s.Iperf.CwndBytes))
	}},
	{"cwnd-segments", "congestion window in segments", "snd_cwnd", unitPlain, "segments", func(s *streamSeries) []series {
		return append(both("snd_cwnd", s.EBPF.Cwnd, s.Netlink.Cwnd),
			iperf("snd_cwnd bytes / "+s.Iperf.MSS, s.Iperf.CwndSegs))
	}},
	{"throughput", "throughput", "throughput", unitBitRate, "", func(s *streamSeries) []series {
		ss := both("bytes_acked slope between samples", s.EBPF.SendRate, s.Netlink.SendRate)
		for _, dr := range both("delivery_rate", s.EBPF.DeliveryRate, s.Netlink.DeliveryRate) {
			dr.Dashed, dr.Glyph = true, nil
			ss = append(ss, dr)
		}
		tp := iperf("bits_per_second over each interval", s.Iperf.Throughput)
		tp.Step = true
		return append(ss, tp)
	}},
	{"retransmits", "cumulative retransmits", "retransmitted (cumulative)", unitPlain, "segments", func(s *streamSeries) []series {
		return append(both("total_retrans", s.EBPF.Retrans, s.Netlink.Retrans), iperf("retransmits summed", s.Iperf.Retrans))
	}},
	{"bytes-acked", "bytes acknowledged", "bytes", unitBytes, "", func(s *streamSeries) []series {
		return append(both("bytes_acked", s.EBPF.BytesAcked, s.Netlink.BytesAcked), iperf("bytes written, summed", s.Iperf.Bytes))
	}},
}
