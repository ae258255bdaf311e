package main

import (
	"cmp"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg/draw"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/utils/flows"
)

// Okabe-Ito colours, told apart with colour blindness too.
var okabeIto = []color.Color{
	color.RGBA{R: 0x00, G: 0x72, B: 0xb2, A: 0xff}, // blue
	color.RGBA{R: 0xd5, G: 0x5e, B: 0x00, A: 0xff}, // vermillion
	color.RGBA{R: 0x00, G: 0x9e, B: 0x73, A: 0xff}, // bluish green
	color.RGBA{R: 0xcc, G: 0x79, B: 0xa7, A: 0xff}, // reddish purple
	color.RGBA{R: 0xe6, G: 0x9f, B: 0x00, A: 0xff}, // orange
	color.RGBA{R: 0x56, G: 0xb4, B: 0xe9, A: 0xff}, // sky blue
}

// outputOptions are the choices of a plot of flowd's output.
type outputOptions struct {
	Out string // directory for index.html and the flows' plots
	Top int    // how many of the busiest flows to draw
	Sel flows.Selection
}

// drawnFlow is one socket drawn: its summaries (one per backend that
// recorded it) and, while it is read, a collector per backend.
type drawnFlow struct {
	Cookie     uint64
	Summaries  []flows.Summary
	Origin     time.Time
	collectors map[string]*collector  // by backend, while the flow is read
	series     map[string]*flowSeries // by backend, once it is read
	Dir        string                 // its directory, relative to the output
	Plots      []plotFile
}

// bytes is the most any backend saw the flow move.
func (d *drawnFlow) bytes() uint64 {
	var b uint64
	for i := range d.Summaries {
		b = max(b, d.Summaries[i].Bytes())
	}
	return b
}

// plotOutput draws the busiest flows of flowd's output and writes
// o.Out/index.html, whose path it returns. It reads the sources twice:
// once to summarise every flow, once to collect the points of the flows
// drawn, so that memory grows with the number of flows, not of records.
// Standard input is copied to a temporary file for the second reading.
func plotOutput(srcs []flows.Source, o outputOptions, warn io.Writer) (string, error) {
	names := make([]string, len(srcs))
	for i, s := range srcs {
		names[i] = s.Name
	}
	srcs, cleanup, err := spoolStdin(srcs)
	if err != nil {
		return "", err
	}
	defer cleanup()

	var z flows.Summarizer
	st, err := flows.Each(srcs, &o.Sel, func(r *flow.Record) error {
		z.Add(r)
		return nil
	})
	if err != nil {
		return "", err
	}
	if w := st.Warning(); w != "" {
		fmt.Fprintln(warn, w)
	}
	sums := z.Summaries()
	if len(sums) == 0 {
		return "", fmt.Errorf("no flow selected (%d records read)", st.Records)
	}
	drawn, total := busiest(sums, o.Top)
	byCookie := make(map[uint64]*drawnFlow, len(drawn))
	for _, d := range drawn {
		byCookie[d.Cookie] = d
	}
	if _, err := flows.Each(srcs, &o.Sel, func(r *flow.Record) error {
		if d := byCookie[r.Cookie]; d != nil {
			if c := d.collectors[r.Backend]; c != nil {
				c.add(r)
			}
		}
		return nil
	}); err != nil {
		return "", err
	}

	for _, d := range drawn {
		d.series = map[string]*flowSeries{}
		for b, c := range d.collectors {
			d.series[b] = c.series()
		}
		d.collectors = nil
		dir := filepath.Join(o.Out, d.Dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		for _, fig := range flowFigures(d) {
			if !fig.hasData() {
				continue
			}
			f, err := fig.save(dir, timeAxis{Origin: d.Origin, WallClock: true})
			if err != nil {
				return "", fmt.Errorf("flow %d: %w", d.Cookie, err)
			}
			d.Plots = append(d.Plots, f)
		}
		d.series = nil
		if err := writeFlowPage(filepath.Join(dir, "index.html"), d); err != nil {
			return "", err
		}
	}
	index := filepath.Join(o.Out, "index.html")
	return index, writeOutputIndex(index, names, drawn, total)
}

// busiest groups summaries by socket (both backends' rows of one cookie
// together) and returns the top ones by bytes moved, and how many sockets
// there were.
func busiest(sums []flows.Summary, top int) ([]*drawnFlow, int) {
	byCookie := map[uint64]*drawnFlow{}
	var all []*drawnFlow
	for _, s := range sums {
		d := byCookie[s.Cookie]
		if d == nil {
			d = &drawnFlow{Cookie: s.Cookie, Origin: s.Start, Dir: "flow-" + strconv.FormatUint(s.Cookie, 10)}
			byCookie[s.Cookie] = d
			all = append(all, d)
		}
		d.Summaries = append(d.Summaries, s)
		if s.Start.Before(d.Origin) {
			d.Origin = s.Start
		}
	}
	slices.SortStableFunc(all, func(a, b *drawnFlow) int {
		return cmp.Or(cmp.Compare(b.bytes(), a.bytes()), cmp.Compare(a.Cookie, b.Cookie))
	})
	if top > 0 && len(all) > top {
		all = all[:top]
	}
	for _, d := range all {
		d.collectors = map[string]*collector{}
		for _, s := range d.Summaries {
			d.collectors[s.Backend] = newCollector(d.Origin, s.Start, s.End, s.Records)
		}
	}
	return all, len(byCookie)
}

// spoolStdin copies standard input, when it is a source, to a temporary
// file, so that it can be read twice.
func spoolStdin(srcs []flows.Source) ([]flows.Source, func(), error) {
	out := slices.Clone(srcs)
	var tmp string
	cleanup := func() {
		if tmp != "" {
			os.Remove(tmp)
		}
	}
	for i, s := range srcs {
		if !s.IsStdin() {
			continue
		}
		f, err := os.CreateTemp("", "flowd-plot-stdin-*")
		if err != nil {
			return nil, cleanup, err
		}
		tmp = f.Name()
		_, err = s.WriteTo(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, cleanup, fmt.Errorf("copying standard input to %s: %w", tmp, err)
		}
		out[i] = flows.File(tmp)
	}
	return out, cleanup, nil
}

// backendStyles: each backend has its line style and glyph; colour tells
// the quantities apart.
var backendStyles = map[string]struct {
	dashed bool
	glyph  draw.GlyphDrawer
}{
	"ebpf":    {false, draw.CircleGlyph{}},
	"netlink": {true, draw.TriangleGlyph{}},
}

// q is one quantity of a flow figure.
type q struct {
	label    string
	get      func(*flowSeries) plotter.XYs
	unscaled bool
}

func line(label string, get func(*flowSeries) plotter.XYs) q { return q{label: label, get: get} }

// cut marks a quantity that does not widen the y axis.
func cut(x q) q {
	x.unscaled = true
	return x
}

// flowFigures returns the figures of one flow: each quantity of each
// backend that recorded it.
func flowFigures(d *drawnFlow) []figure {
	// Partial samples do not name the 4-tuple: a flow read only from them
	// is named by its cookie.
	name := fmt.Sprintf("flow %d", d.Cookie)
	for _, s := range d.Summaries {
		if s.Local.IsValid() {
			name += fmt.Sprintf(", %s → %s", s.Local, s.Remote)
			break
		}
	}
	defs := []struct {
		file, title, ylabel string
		unit                unit
		yunit               string
		qs                  []q
	}{
		{"rtt", "round-trip time", "RTT", unitDuration, "", []q{
			// min_rtt first, so that the smoothed rtt is drawn over it
			// where they are equal.
			line("min_rtt", func(f *flowSeries) plotter.XYs { return f.MinRTT }),
			line("rtt (smoothed)", func(f *flowSeries) plotter.XYs { return f.RTT }),
			line("rttvar", func(f *flowSeries) plotter.XYs { return f.RTTVar }),
			line("rcv_rtt (receiver's estimate)", func(f *flowSeries) plotter.XYs { return f.RcvRTT }),
		}},
		{"cwnd", "congestion window and slow-start threshold", "window", unitPlain, "segments", []q{
			line("snd_cwnd", func(f *flowSeries) plotter.XYs { return f.Cwnd }),
			line("snd_ssthresh", func(f *flowSeries) plotter.XYs { return f.Ssthresh }),
		}},
		{"throughput", "throughput", "rate", unitBitRate, "", []q{
			line("sent (bytes_acked slope)", func(f *flowSeries) plotter.XYs { return f.SendRate }),
			line("received (bytes_received slope)", func(f *flowSeries) plotter.XYs { return f.RecvRate }),
			cut(line("delivery_rate", func(f *flowSeries) plotter.XYs { return f.DeliveryRate })),
			cut(line("pacing_rate", func(f *flowSeries) plotter.XYs { return f.PacingRate })),
		}},
		{"retransmits", "retransmissions and timeouts (since the connection opened)", "count", unitPlain, "", []q{
			line("total_retrans (segments)", func(f *flowSeries) plotter.XYs { return f.Retrans }),
			line("total_rto (timeouts)", func(f *flowSeries) plotter.XYs { return f.RTOs }),
		}},
		{"limited", "what the sender was doing: share of the time between readings", "time", unitPercent, "", []q{
			line("busy (data to send)", func(f *flowSeries) plotter.XYs { return f.Busy }),
			line("rwnd_limited (receive window)", func(f *flowSeries) plotter.XYs { return f.Rwnd }),
			line("sndbuf_limited (send buffer)", func(f *flowSeries) plotter.XYs { return f.Sndbuf }),
		}},
	}
	backends := make([]string, 0, len(d.Summaries))
	for _, s := range d.Summaries {
		backends = append(backends, s.Backend)
	}
	slices.Sort(backends)
	figs := make([]figure, 0, len(defs))
	for _, def := range defs {
		fig := figure{File: def.file, Title: name + ": " + def.title, YLabel: def.ylabel, Unit: def.unit, YUnit: def.yunit}
		for i, qd := range def.qs {
			for _, b := range backends {
				fs := d.series[b]
				label := qd.label
				if len(backends) > 1 {
					label += ", " + b
				}
				st := backendStyles[b]
				fig.Series = append(fig.Series, series{Label: label, Color: okabeIto[i%len(okabeIto)],
					Glyph: st.glyph, Dashed: st.dashed, Unscaled: qd.unscaled, XY: qd.get(fs)})
			}
		}
		figs = append(figs, fig)
	}
	return figs
}
