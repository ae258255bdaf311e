package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// This file is the one drawing path: the plots of flowd's output and those
// of a validation scenario are figures drawn by draw.

// series is one line of a figure, in raw units (µs, bit/s, bytes...) and x
// in seconds since the figure's origin.
type series struct {
	Label  string
	Color  color.Color
	Glyph  draw.GlyphDrawer // drawn at each point when the series is short; nil: none
	Dashed bool
	Step   bool // a value held over an interval (iperf3 throughput)
	// Unscaled: the series does not widen the y axis (pacing_rate and
	// delivery_rate, estimates that run far above the measured throughput
	// on fast paths); what it draws above is cut, and its label says so.
	Unscaled bool
	XY       plotter.XYs
}

// unit is how a figure's y values are shown.
type unit int

const (
	unitPlain    unit = iota // as they are
	unitDuration             // µs, shown in µs, ms or s
	unitBitRate              // bit/s, shown in bit/s ... Gbit/s
	unitBytes                // bytes, shown in B ... GB (SI)
	unitPercent              // 0..100
)

// scale returns the divisor and name of the display unit for values up to
// max.
func (u unit) scale(max float64) (float64, string) {
	type step struct {
		div  float64
		name string
	}
	var steps []step
	switch u {
	case unitDuration:
		steps = []step{{1, "µs"}, {1e3, "ms"}, {1e6, "s"}}
	case unitBitRate:
		steps = []step{{1, "bit/s"}, {1e3, "kbit/s"}, {1e6, "Mbit/s"}, {1e9, "Gbit/s"}}
	case unitBytes:
		steps = []step{{1, "B"}, {1e3, "kB"}, {1e6, "MB"}, {1e9, "GB"}, {1e12, "TB"}}
	case unitPercent:
		return 1, "%"
	default:
		return 1, ""
	}
	s := steps[0]
	for _, c := range steps[1:] {
		if max >= 2*c.div {
			s = c
		}
	}
	return s.div, s.name
}

// timeAxis says how x is labelled: seconds since the origin, or the wall
// clock (UTC) at origin + x.
type timeAxis struct {
	Origin    time.Time
	WallClock bool
}

// figure is one plot: a title, what y is, and its series.
type figure struct {
	File   string // base name of its files (.png and .svg)
	Title  string
	YLabel string // without the unit
	Unit   unit
	// YUnit names the unit of unitPlain values ("segments").
	YUnit  string
	Series []series
}

// plotFile is one figure written in both formats, named relative to the
// directory they are in.
type plotFile struct {
	Title, PNG, SVG string
}

const (
	figWidth, figHeight = 12 * vg.Inch, 5 * vg.Inch
	// glyphsUpTo: series longer than this are drawn as lines only, where
	// glyphs would hide each other.
	glyphsUpTo = 300
	pngDPI     = 96
)

// hasData reports whether any series of f has a point.
func (f *figure) hasData() bool {
	for _, s := range f.Series {
		if len(s.XY) > 0 {
			return true
		}
	}
	return false
}

// save draws f into dir as f.File.png and f.File.svg.
func (f *figure) save(dir string, x timeAxis) (plotFile, error) {
	out := plotFile{Title: f.Title, PNG: f.File + ".png", SVG: f.File + ".svg"}
	p, legend, err := f.build(x)
	if err != nil {
		return out, fmt.Errorf("plotting %s: %w", f.File, err)
	}
	png := vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(figWidth, figHeight), vgimg.UseDPI(pngDPI))}
	svg := vgsvg.New(figWidth, figHeight)
	for _, c := range []struct {
		name string
		vg.CanvasWriterTo
	}{{out.PNG, png}, {out.SVG, svg}} {
		drawWithLegend(draw.New(c.CanvasWriterTo), p, legend)
		path := filepath.Join(dir, c.name)
		if err := writeTo(path, c.CanvasWriterTo); err != nil {
			return out, err
		}
	}
	return out, nil
}

func writeTo(path string, w vg.CanvasWriterTo) error {
	file, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := w.WriteTo(file); err != nil {
		file.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return file.Close()
}

// drawWithLegend draws the plot on the left and its legend in a strip on
// the right, outside the data, so that no entry hides a point.
func drawWithLegend(dc draw.Canvas, p *plot.Plot, l *plot.Legend) {
	r := l.Rectangle(dc) // as wide as the thumbnail and the widest entry
	strip := r.Max.X - r.Min.X + vg.Points(24)
	p.Draw(draw.Crop(dc, 0, -strip, 0, 0))
	// Start the entries level with the top of the data area, below the title.
	top := p.Title.TextStyle.Rectangle(p.Title.Text).Size().Y + p.Title.Padding + vg.Points(6)
	l.Draw(draw.Crop(dc, dc.Max.X-dc.Min.X-strip+vg.Points(12), 0, 0, -top))
}

// build makes the plot of f and its legend (drawn apart).
func (f *figure) build(x timeAxis) (*plot.Plot, *plot.Legend, error) {
	maxY := 0.0
	for _, s := range f.Series {
		if !s.Unscaled {
			maxY = max(maxY, highest(s.XY))
		}
	}
	if maxY == 0 { // nothing else to scale by
		for _, s := range f.Series {
			maxY = max(maxY, highest(s.XY))
		}
	}
	div, unitName := f.Unit.scale(maxY)
	if f.Unit == unitPlain {
		unitName = f.YUnit
	}

	p := plot.New()
	p.Title.Text = f.Title
	p.Title.Padding = vg.Points(8)
	p.Y.Label.Text = f.YLabel
	if unitName != "" {
		p.Y.Label.Text += " (" + unitName + ")"
	}
	// Plain values are counts (segments, retransmissions): whole ticks only.
	p.Y.Tick.Marker = niceTicks{whole: f.Unit == unitPlain}
	if x.WallClock {
		p.X.Label.Text = "time (UTC), " + x.Origin.UTC().Format("2006-01-02")
		p.X.Tick.Marker = clockTicks{origin: x.Origin}
	} else {
		p.X.Label.Text = "time since the flow opened (s)"
		p.X.Tick.Marker = niceTicks{}
	}
	p.Add(plotter.NewGrid())
	legend := plot.NewLegend()
	legend.TextStyle.Font.Size = vg.Points(11)
	legend.Top, legend.Left = true, true
	for _, s := range f.Series {
		if len(s.XY) == 0 {
			continue
		}
		label := s.Label
		if s.Unscaled && highest(s.XY) > maxY*1.04 {
			label += " (cut at the top)"
		}
		xy := make(plotter.XYs, len(s.XY))
		for i, pt := range s.XY {
			xy[i] = plotter.XY{X: pt.X, Y: pt.Y / div}
		}
		l, err := plotter.NewLine(xy)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", s.Label, err)
		}
		l.Color = s.Color
		if s.Dashed {
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		}
		if s.Step {
			l.StepStyle = plotter.PostStep
			l.Width = vg.Points(1.5)
		}
		thumbs := []plot.Thumbnailer{l}
		p.Add(l)
		if s.Glyph != nil && !s.Step && len(xy) <= glyphsUpTo {
			sc, err := plotter.NewScatter(xy)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", s.Label, err)
			}
			sc.GlyphStyle = draw.GlyphStyle{Color: s.Color, Radius: vg.Points(2), Shape: s.Glyph}
			p.Add(sc)
			thumbs = append(thumbs, sc)
		}
		legend.Add(label, thumbs...)
	}
	// Every quantity is >= 0: start at 0.
	p.Y.Min, p.Y.Max = 0, maxY/div
	if p.Y.Max <= 0 {
		p.Y.Max = 1
	}
	if f.Unit == unitPercent {
		p.Y.Max = 100
	}
	p.Y.Max *= 1.04                      // keep the highest points off the border
	p.X.Max += (p.X.Max - p.X.Min) / 100 // and the last ones
	return p, &legend, nil
}

// highest returns the largest finite y of xy, or 0.
func highest(xy plotter.XYs) float64 {
	m := 0.0
	for _, pt := range xy {
		if !math.IsInf(pt.Y, 0) && !math.IsNaN(pt.Y) {
			m = max(m, pt.Y)
		}
	}
	return m
}

// niceTicks labels four to eight round values (1, 2, 2.5 or 5 times a power of
// ten apart) in plain decimals, with four minor ticks between labels; whole
// puts every tick, and so every label, on a whole number.
type niceTicks struct{ whole bool }

func (t niceTicks) Ticks(min, max float64) []plot.Tick {
	step, ok := niceStep(min, max)
	if !ok {
		return nil
	}
	minor := step / 5
	if t.whole {
		step = math.Max(1, math.Floor(step)) // 0.5 is 1, 2.5 is 2
		if minor = step / 5; minor != math.Trunc(minor) {
			minor = 1
		}
	}
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

// niceStep returns the distance between labelled ticks of [min, max].
func niceStep(min, max float64) (float64, bool) {
	if !(max > min) || math.IsInf(max-min, 0) {
		return 0, false
	}
	raw := (max - min) / 8
	mag := math.Pow10(int(math.Floor(math.Log10(raw))))
	for _, m := range []float64{1, 2, 2.5, 5} {
		if m*mag >= raw {
			return m * mag, true
		}
	}
	return 10 * mag, true
}

// clockTicks labels x (seconds since origin) with the UTC time of day, at
// round seconds, minutes or hours, with fractions of a second when the
// span is short.
type clockTicks struct{ origin time.Time }

// clockSteps are the distances between labelled ticks, in seconds.
var clockSteps = []float64{0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
	1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400}

func (c clockTicks) Ticks(min, max float64) []plot.Tick {
	if !(max > min) || math.IsInf(max-min, 0) {
		return nil
	}
	raw := (max - min) / 7
	step := clockSteps[len(clockSteps)-1]
	for _, s := range clockSteps {
		if s >= raw {
			step = s
			break
		}
	}
	layout := "15:04:05"
	switch {
	case step < 0.01:
		layout = "15:04:05.000"
	case step < 0.1:
		layout = "15:04:05.00"
	case step < 1:
		layout = "15:04:05.0"
	case step >= 60:
		layout = "15:04"
	}
	// Ticks at round wall-clock values: count from the origin's UTC
	// midnight, of which every step of a second or more is a divisor, or
	// from its second, of which every shorter step is.
	base := c.origin.UTC().Truncate(24 * time.Hour)
	if step < 1 {
		base = c.origin.UTC().Truncate(time.Second)
	}
	off := c.origin.Sub(base).Seconds() // origin's x is 0, base's is -off
	minor := step / 5
	var ticks []plot.Tick
	for i := math.Ceil((min + off) / minor); i*minor-off <= max; i++ {
		v := i*minor - off
		t := plot.Tick{Value: v}
		if labelled := math.Round(i / 5); math.Abs(i/5-labelled) < 1e-9 {
			// Rounded to the nanosecond: a product a hair under the
			// round value would be formatted as the one before it.
			t.Label = base.Add(time.Duration(math.Round(labelled * step * float64(time.Second)))).Format(layout)
		}
		ticks = append(ticks, t)
	}
	return ticks
}
