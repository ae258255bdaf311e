package main

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// source is where a series comes from; it sets the series' colour and glyph.
type source int

const (
	fromEBPF source = iota
	fromNetlink
	fromIperf3
)

// series is one line of a plot.
type series struct {
	Label  string
	Source source
	Dashed bool // a second quantity of the same source
	Step   bool // a value held over an interval (iperf3 throughput)
	XY     plotter.XYs
}

// both returns the eBPF and netlink series of one tcp_info quantity.
func both(label string, ebpf, netlink plotter.XYs) []series {
	return []series{
		{Label: "eBPF " + label, Source: fromEBPF, XY: ebpf},
		{Label: "netlink " + label, Source: fromNetlink, XY: netlink},
	}
}

func iperf(label string, xy plotter.XYs) series {
	return series{Label: "iperf3 " + label, Source: fromIperf3, XY: xy}
}

// metric is one kind of plot: its file name, title, y axis and series.
type metric struct {
	File, Title, YLabel string
	Series              func(s *streamSeries) []series
}

var metrics = []metric{
	{"rtt", "smoothed RTT", "rtt (µs)", func(s *streamSeries) []series {
		return append(both("rtt", s.EBPF.RTT, s.Netlink.RTT), iperf("rtt at interval end", s.Iperf.RTT))
	}},
	{"rttvar", "RTT mean deviation", "rttvar (µs)", func(s *streamSeries) []series {
		return append(both("rttvar", s.EBPF.RTTVar, s.Netlink.RTTVar), iperf("rttvar at interval end", s.Iperf.RTTVar))
	}},
	{"cwnd-bytes", "congestion window in bytes", "snd_cwnd (bytes)", func(s *streamSeries) []series {
		return append(both("snd_cwnd × snd_mss", s.EBPF.CwndBytes, s.Netlink.CwndBytes),
			iperf("snd_cwnd at interval end", s.Iperf.CwndBytes))
	}},
	{"cwnd-segments", "congestion window in segments", "snd_cwnd (segments)", func(s *streamSeries) []series {
		return append(both("snd_cwnd", s.EBPF.CwndSegs, s.Netlink.CwndSegs),
			iperf("snd_cwnd bytes / "+s.Iperf.MSS, s.Iperf.CwndSegs))
	}},
	{"throughput", "throughput", "throughput (Mbit/s)", func(s *streamSeries) []series {
		ss := both("bytes_acked slope between samples", s.EBPF.Slope, s.Netlink.Slope)
		for _, dr := range both("delivery_rate", s.EBPF.DeliveryRate, s.Netlink.DeliveryRate) {
			dr.Dashed = true
			ss = append(ss, dr)
		}
		tp := iperf("bits_per_second over each interval", s.Iperf.Throughput)
		tp.Step = true
		return append(ss, tp)
	}},
	{"retransmits", "cumulative retransmits", "retransmitted segments (cumulative)", func(s *streamSeries) []series {
		return append(both("total_retrans", s.EBPF.Retrans, s.Netlink.Retrans), iperf("retransmits summed", s.Iperf.Retrans))
	}},
	{"bytes-acked", "bytes acknowledged", "bytes (MB = 10⁶ bytes)", func(s *streamSeries) []series {
		return append(both("bytes_acked", s.EBPF.BytesAcked, s.Netlink.BytesAcked), iperf("bytes written, summed", s.Iperf.Bytes))
	}},
}

// plotFile is one plot written in both formats, named relative to plots/.
type plotFile struct {
	Title, PNG, SVG string
}

const plotWidth, plotHeight = 10 * vg.Inch, 5 * vg.Inch

// writePlots writes every metric's plot of stream n into dir.
func writePlots(dir, scenario string, n int, name string, ss *streamSeries) ([]plotFile, error) {
	var files []plotFile
	for _, m := range metrics {
		p, err := build(fmt.Sprintf("%s, stream %d (%s): %s", scenario, n, name, m.Title), m.YLabel, m.Series(ss))
		if err != nil {
			return nil, fmt.Errorf("plotting %s: %w", m.File, err)
		}
		base := fmt.Sprintf("%s-s%d", m.File, n)
		f := plotFile{Title: m.Title, PNG: base + ".png", SVG: base + ".svg"}
		for _, name := range []string{f.PNG, f.SVG} {
			if err := p.Save(plotWidth, plotHeight, filepath.Join(dir, name)); err != nil {
				return nil, fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
			}
		}
		files = append(files, f)
	}
	return files, nil
}

// Okabe-Ito colours, told apart with colour blindness too.
var colors = [...]color.Color{
	fromEBPF:    color.RGBA{R: 0x00, G: 0x72, B: 0xb2, A: 0xff}, // blue
	fromNetlink: color.RGBA{R: 0xd5, G: 0x5e, B: 0x00, A: 0xff}, // vermillion
	fromIperf3:  color.Black,
}

var glyphs = [...]draw.GlyphDrawer{
	fromEBPF:    draw.CircleGlyph{},
	fromNetlink: draw.TriangleGlyph{},
	fromIperf3:  draw.BoxGlyph{},
}

// build draws the series that have points; the legend sits at the top left,
// in headroom added above the data.
func build(title, ylabel string, ss []series) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.Title.Padding = vg.Points(8)
	p.X.Label.Text = "time since the flow opened (s)"
	p.Y.Label.Text = ylabel
	p.X.Tick.Marker = niceTicks{}
	p.Y.Tick.Marker = niceTicks{}
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(8), -vg.Points(4)
	entries := 0
	for _, s := range ss {
		if len(s.XY) == 0 {
			continue
		}
		l, err := plotter.NewLine(s.XY)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Label, err)
		}
		l.Color = colors[s.Source]
		if s.Dashed {
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		}
		if s.Step {
			l.StepStyle = plotter.PostStep
			l.Width = vg.Points(1.5)
		}
		thumbs := []plot.Thumbnailer{l}
		p.Add(l)
		if !s.Dashed && !s.Step {
			sc, err := plotter.NewScatter(s.XY)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.Label, err)
			}
			sc.GlyphStyle = draw.GlyphStyle{Color: colors[s.Source], Radius: vg.Points(2), Shape: glyphs[s.Source]}
			p.Add(sc)
			thumbs = append(thumbs, sc)
		}
		p.Legend.Add(s.Label, thumbs...)
		entries++
	}
	// Every quantity is >= 0: start at 0, and leave the top for the legend
	// (each entry takes about 6% of the height).
	legend := 0.06*float64(entries) + 0.04
	p.Y.Min = 0
	if p.Y.Max <= 0 {
		p.Y.Max = 1
	}
	p.Y.Max /= 1 - legend
	p.X.Max += (p.X.Max - p.X.Min) / 100 // keep the last points off the border
	return p, nil
}

// niceTicks labels four to eight round values (1, 2, 2.5 or 5 times a power of
// ten apart) in plain decimals, with four minor ticks between labels.
type niceTicks struct{}

func (niceTicks) Ticks(min, max float64) []plot.Tick {
	if !(max > min) || math.IsInf(max-min, 0) {
		return nil
	}
	raw := (max - min) / 8
	mag := math.Pow10(int(math.Floor(math.Log10(raw))))
	step := 10 * mag
	for _, m := range []float64{1, 2, 2.5, 5} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	minor := step / 5
	var ticks []plot.Tick
	for i := math.Ceil(min / minor); i*minor <= max; i++ {
		v := i * minor
		t := plot.Tick{Value: v}
		if labelled := math.Round(v / step); math.Abs(v/step-labelled) < 1e-9 {
			t.Label = strconv.FormatFloat(labelled*step, 'f', -1, 64)
			if len(t.Label) > 12 { // float noise, e.g. 0.30000000000000004
				t.Label = strconv.FormatFloat(labelled*step, 'g', 6, 64)
			}
		}
		ticks = append(ticks, t)
	}
	return ticks
}
