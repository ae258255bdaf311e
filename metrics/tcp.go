package metrics

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/flowd/flowd/metrics/tcpstats"
)

// Label names of the TCP metrics.
const (
	labelCgroup = "cgroup"
	labelCookie = "cookie"
	labelLAddr  = "laddr"
	labelLPort  = "lport"
	labelRAddr  = "raddr"
	labelRPort  = "rport"
)

// RegisterTCP has the metrics endpoint serve the TCP statistics of agg,
// whose second aggregation (tcpstats.Config.By) is by: per cgroup as
// flowd_tcp_*, per remote port or prefix as flowd_tcp_remote_*, and its
// busiest flows as flowd_flow_*. They are read from agg at each scrape.
func (m *Metrics) RegisterTCP(agg *tcpstats.Aggregator, by tcpstats.By) {
	fams := seriesFamilies(namespace+"_tcp_", labelCgroup, "cgroup", false)
	if by != tcpstats.ByNone {
		fams = append(fams, seriesFamilies(namespace+"_tcp_remote_", string(by), string(by), true)...)
	}
	for i := range flowFamilies {
		fams = append(fams, &flowFamilies[i])
	}
	fams = append(fams, ignoredFamily{})
	slices.SortFunc(fams, func(x, y textFamily) int { return strings.Compare(x.header().name, y.header().name) })
	m.tcpMu.Lock()
	defer m.tcpMu.Unlock()
	m.tcp = &tcpExporter{agg: agg, families: fams, remoteLabel: string(by)}
}

// tcpExporter writes an Aggregator's statistics in the Prometheus text
// format (version 0.0.4), as expfmt writes the same metrics (a test checks
// it byte for byte) but several times faster: the metrics of 1,000
// cgroups are some 70,000 lines.
type tcpExporter struct {
	agg         *tcpstats.Aggregator
	families    []textFamily // by name, the registry's order
	remoteLabel string       // the label of the second aggregation, if any

	mu  sync.Mutex // serializes scrapes: they share what follows
	sc  scrape
	buf []byte
}

// scrape is what one scrape writes: a snapshot, with the labels of its
// series and flows.
type scrape struct {
	tcpstats.Snapshot
	cgroupLabels []string       // `backend="…",cgroup="…"` of each of Cgroups, escaped
	remoteLabels []string       // the same of Remote
	flows        []labelledFlow // Flows with their label values
}

type labelledFlow struct {
	labels [len(flowLabelNames)]string
	flow   *tcpstats.Flow
}

var flowLabelNames = [...]string{labelBackend, labelCgroup, labelCookie, labelLAddr, labelLPort, labelRAddr, labelRPort}

// prepare puts the samples in the order the registry writes them (by
// label values, in the order of the label names) and makes their labels.
func (sc *scrape) prepare(remoteLabel string) {
	bySeries := func(x, y tcpstats.Series) int {
		return cmp.Or(strings.Compare(x.Backend, y.Backend), strings.Compare(x.Key, y.Key))
	}
	slices.SortFunc(sc.Cgroups, bySeries)
	slices.SortFunc(sc.Remote, bySeries)
	sc.cgroupLabels = labelPairs(sc.cgroupLabels, sc.Cgroups, labelCgroup)
	sc.remoteLabels = labelPairs(sc.remoteLabels, sc.Remote, remoteLabel)

	sc.flows = sc.flows[:0]
	for i := range sc.Flows {
		f := &sc.Flows[i]
		sc.flows = append(sc.flows, labelledFlow{flow: f, labels: [...]string{f.Backend, f.Cgroup, strconv.FormatUint(f.Cookie, 10),
			f.LocalAddr.String(), strconv.Itoa(int(f.LocalPort)), f.RemoteAddr.String(), strconv.Itoa(int(f.RemotePort))}})
	}
	slices.SortFunc(sc.flows, func(x, y labelledFlow) int { return slices.Compare(x.labels[:], y.labels[:]) })
}

// labelPairs returns the label pairs of each series, escaped: a series'
// samples share them.
func labelPairs(dst []string, series []tcpstats.Series, label string) []string {
	dst = dst[:0]
	var b []byte
	for i := range series {
		b = append(b[:0], `backend="`...)
		b = appendEscaped(b, series[i].Backend, true)
		b = append(b, `",`...)
		b = append(b, label...)
		b = append(b, `="`...)
		b = appendEscaped(b, series[i].Key, true)
		dst = append(dst, string(append(b, '"')))
	}
	return dst
}

// flushAt is how much text the exporter holds before writing it out.
const flushAt = 32 << 10

// writeText writes the TCP metrics to w. Families without samples are left
// out, as the registry leaves them out.
func (e *tcpExporter) writeText(w io.Writer) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := &e.sc
	e.agg.Snapshot(&s.Snapshot)
	s.prepare(e.remoteLabel)

	b := e.buf[:0]
	defer func() { e.buf = b[:0] }()
	for _, f := range e.families {
		n := f.samples(s)
		if n == 0 {
			continue
		}
		b = f.header().append(b)
		for i := range n {
			b = f.appendSample(b, s, i)
			if len(b) >= flushAt {
				if _, err := w.Write(b); err != nil {
					return err
				}
				b = b[:0]
			}
		}
	}
	_, err := w.Write(b)
	return err
}

// A textFamily writes one metric family of a snapshot: its samples,
// counted by samples, are written one (histograms: one series) at a time.
type textFamily interface {
	header() familyHeader
	samples(s *scrape) int
	appendSample(b []byte, s *scrape, i int) []byte
}

type familyHeader struct{ name, help, typ string }

func (h familyHeader) append(b []byte) []byte {
	b = append(b, "# HELP "...)
	b = append(b, h.name...)
	b = append(b, ' ')
	b = appendEscaped(b, h.help, false)
	b = append(b, "\n# TYPE "...)
	b = append(b, h.name...)
	b = append(b, ' ')
	b = append(b, h.typ...)
	return append(b, '\n')
}

// seriesFamily is one metric of every series of an aggregation: a counter
// or gauge (value), or a histogram.
type seriesFamily struct {
	familyHeader
	label     string // the label besides backend
	remote    bool   // of the Remote series, not the Cgroups
	value     func(*tcpstats.Series) uint64
	histogram func(*tcpstats.Series) *tcpstats.Histogram
	les       []string // the histogram's bucket bounds, as le label values
	perBase   float64  // the histogram's unit per base unit (µs: 1e6)
}

// seriesFamilies are the metrics of one aggregation (tcpstats.Instruments),
// named prefix+..., labelled by label and backend; what names what label is
// in the help.
func seriesFamilies(prefix, label, what string, remote bool) []textFamily {
	per := " (per " + what + " and backend)."
	families := make([]textFamily, 0, len(tcpstats.Instruments))
	for _, in := range tcpstats.Instruments {
		f := &seriesFamily{familyHeader: familyHeader{prefix + in.Prometheus, in.Help + per, promType[in.Kind]},
			label: label, remote: remote, value: in.Value, histogram: in.Histogram, perBase: in.PerUnit}
		for _, b := range in.Bounds {
			f.les = append(f.les, string(appendFloat(nil, float64(b)/in.PerUnit)))
		}
		families = append(families, f)
	}
	return families
}

// promType is the TYPE of each kind of instrument.
var promType = map[tcpstats.Kind]string{
	tcpstats.KindCounter:   "counter",
	tcpstats.KindGauge:     "gauge",
	tcpstats.KindHistogram: "histogram",
}

func (f *seriesFamily) header() familyHeader { return f.familyHeader }

func (f *seriesFamily) series(s *scrape) []tcpstats.Series {
	if f.remote {
		return s.Remote
	}
	return s.Cgroups
}

func (f *seriesFamily) samples(s *scrape) int { return len(f.series(s)) }

func (f *seriesFamily) appendSample(b []byte, s *scrape, i int) []byte {
	x := &f.series(s)[i]
	labels := s.cgroupLabels
	if f.remote {
		labels = s.remoteLabels
	}
	start := func(b []byte, suffix string) []byte {
		b = append(b, f.name...)
		b = append(b, suffix...)
		b = append(b, '{')
		return append(b, labels[i]...)
	}
	if f.histogram == nil {
		b = start(b, "")
		b = append(b, "} "...)
		b = appendCount(b, f.value(x))
		return append(b, '\n')
	}
	h := f.histogram(x)
	var n uint64
	for j, le := range f.les {
		n += h.Counts[j]
		b = start(b, "_bucket")
		b = append(b, `,le="`...)
		b = append(b, le...)
		b = append(b, `"} `...)
		b = appendCount(b, n)
		b = append(b, '\n')
	}
	b = start(b, "_bucket")
	b = append(b, `,le="+Inf"} `...)
	b = appendCount(b, h.Count)
	b = append(b, '\n')
	b = start(b, "_sum")
	b = append(b, "} "...)
	b = appendFloat(b, h.Sum/f.perBase)
	b = append(b, '\n')
	b = start(b, "_count")
	b = append(b, "} "...)
	b = appendCount(b, h.Count)
	return append(b, '\n')
}

// flowFamily is one metric of the busiest flows.
type flowFamily struct {
	familyHeader
	value func(*tcpstats.Flow) float64
}

var flowFamilies = [...]flowFamily{
	{familyHeader{namespace + "_flow_srtt_seconds", "Smoothed RTT (tcpi_rtt) of one of the busiest flows (metrics.per_flow).", "gauge"},
		func(f *tcpstats.Flow) float64 { return micros(f.SRTT) }},
	{familyHeader{namespace + "_flow_snd_cwnd_segments", "Congestion window (tcpi_snd_cwnd) of one of the busiest flows (metrics.per_flow).", "gauge"},
		func(f *tcpstats.Flow) float64 { return float64(f.SndCwnd) }},
	{familyHeader{namespace + "_flow_delivery_rate_bytes_per_second", "Delivery rate (tcpi_delivery_rate) of one of the busiest flows (metrics.per_flow).", "gauge"},
		func(f *tcpstats.Flow) float64 { return float64(f.DeliveryRate) }},
	{familyHeader{namespace + "_flow_segments_retransmitted_total", "Segments one of the busiest flows retransmitted in its life (tcpi_total_retrans; metrics.per_flow).", "counter"},
		func(f *tcpstats.Flow) float64 { return float64(f.TotalRetrans) }},
}

func (f *flowFamily) header() familyHeader  { return f.familyHeader }
func (f *flowFamily) samples(s *scrape) int { return len(s.flows) }

func (f *flowFamily) appendSample(b []byte, s *scrape, i int) []byte {
	b = append(b, f.name...)
	sep := byte('{')
	for j, value := range s.flows[i].labels {
		b = append(b, sep)
		sep = ','
		b = append(b, flowLabelNames[j]...)
		b = append(b, `="`...)
		b = appendEscaped(b, value, true)
		b = append(b, '"')
	}
	b = append(b, "} "...)
	b = appendFloat(b, f.value(s.flows[i].flow))
	return append(b, '\n')
}

// ignoredFamily is the count of records of flows not followed.
type ignoredFamily struct{}

func (ignoredFamily) header() familyHeader {
	return familyHeader{namespace + "_tcp_records_ignored_total",
		fmt.Sprintf("Records of flows the TCP metrics did not follow: more than %d flows at once.", tcpstats.MaxTracked), "counter"}
}

func (ignoredFamily) samples(*scrape) int { return 1 }

func (f ignoredFamily) appendSample(b []byte, s *scrape, _ int) []byte {
	b = append(b, f.header().name...)
	b = append(b, ' ')
	b = appendFloat(b, float64(s.Ignored))
	return append(b, '\n')
}

// appendCount appends n as appendFloat appends float64(n): below 10^6 the
// shortest form of an integer has no exponent, and strconv need not
// format a float.
func appendCount(b []byte, n uint64) []byte {
	if n < 1e6 {
		return strconv.AppendUint(b, n, 10)
	}
	return appendFloat(b, float64(n))
}

// appendFloat appends v as expfmt writes a sample value.
func appendFloat(b []byte, v float64) []byte {
	switch v {
	case 0:
		return append(b, '0')
	case 1:
		return append(b, '1')
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

// appendEscaped appends s escaped as expfmt escapes help texts and, with
// quoted, label values.
func appendEscaped(b []byte, s string, quoted bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quoted:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// micros converts µs to seconds; a division, so that 25 µs is 2.5e-05.
func micros(us uint64) float64 { return float64(us) / 1e6 }
