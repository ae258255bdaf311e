package main

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

// labels returns the labelled ticks' texts and their x values.
func labels(c clockTicks, min, max float64) ([]string, []float64) {
	var texts []string
	var xs []float64
	for _, t := range c.Ticks(min, max) {
		if t.Label != "" {
			texts = append(texts, t.Label)
			xs = append(xs, t.Value)
		}
	}
	return texts, xs
}

func TestClockTicksRound(t *testing.T) {
	// A flow that opened at 07:08:09.1, drawn over a minute: labels every
	// 10 s at round seconds of the clock, not 10 s after the origin's second.
	origin := time.Date(2026, 12, 6, 7, 8, 9, 100_000_000, time.UTC)
	got, _ := labels(clockTicks{origin: origin}, 0, 60)
	want := []string{"07:08:10", "07:08:20", "07:08:30", "07:08:40", "07:08:50", "07:09:00"}
	if !slices.Equal(got, want) {
		t.Errorf("labels of a minute from 07:08:09.1 = %q, want %q", got, want)
	}

	// Every step, from origins off any round value and over windows that
	// start at the origin or later: each labelled tick is at a multiple of
	// the step since UTC midnight, a step from the one before, and its
	// label is that time of day.
	origins := []time.Time{
		origin.Add(23_456_789),
		time.Date(2026, 12, 6, 23, 59, 58, 987_654_321, time.UTC),
		time.Date(2026, 12, 6, 13, 47, 3, 1, time.FixedZone("CET", 3600)),
	}
	for _, step := range clockSteps {
		for _, o := range origins {
			for _, later := range []float64{0, 1, 1000} {
				checkClockStep(t, o, step, later+0.3*step)
			}
		}
	}
}

// checkClockStep checks the labelled ticks of a window of 6.5 steps from
// min (the ticks choose step for it: a seventh of it is just under step).
func checkClockStep(t *testing.T, o time.Time, step, min float64) {
	t.Helper()
	texts, xs := labels(clockTicks{origin: o}, min, min+6.5*step)
	if len(texts) < 5 {
		t.Errorf("step %gs from %s at +%gs: %d labels %q, want at least 5", step, o, min, len(texts), texts)
		return
	}
	stepNs := int64(math.Round(step * 1e9))
	midnight := o.UTC().Truncate(24 * time.Hour)
	for i, x := range xs {
		at := o.Add(time.Duration(math.Round(x * 1e9)))
		ns := at.Sub(midnight).Nanoseconds()
		rounded := (ns + stepNs/2) / stepNs * stepNs
		if d := ns - rounded; d < -1000 || d > 1000 {
			t.Errorf("step %gs from %s: tick at %s is not at a multiple of the step", step, o, at.Format(time.RFC3339Nano))
		}
		full := midnight.Add(time.Duration(rounded)).Format("15:04:05.000")
		if len(texts[i]) < len("15:04") || !strings.HasPrefix(full, texts[i]) {
			t.Errorf("step %gs from %s: label %q of the tick at %s", step, o, texts[i], full)
		}
		if i == 0 {
			continue
		}
		if d := x - xs[i-1]; math.Abs(d-step) > 1e-6*step {
			t.Errorf("step %gs from %s: labels %q and %q are %gs apart", step, o, texts[i-1], texts[i], d)
		}
	}
}

// TestWholeTicks checks that a count axis (retransmissions, segments) has
// no tick between whole numbers, whatever its range, and that other axes
// keep their decimals.
func TestWholeTicks(t *testing.T) {
	for _, max := range []float64{1.04, 3.12, 5.2, 12.48, 19.8, 26, 41.6, 1040} {
		ticks := niceTicks{whole: true}.Ticks(0, max)
		labelled := 0
		for _, tk := range ticks {
			if tk.Value != math.Trunc(tk.Value) {
				t.Errorf("0..%g: tick at %g", max, tk.Value)
			}
			if tk.Label != "" {
				labelled++
			}
		}
		if labelled < 2 {
			t.Errorf("0..%g: %d labelled ticks, want 2 or more", max, labelled)
		}
	}
	if ticks := (niceTicks{}).Ticks(0, 1.04); len(ticks) < 6 || ticks[5].Label != "0.2" {
		t.Errorf("0..1.04 of a rate: ticks %v, want 0.2 labelled", ticks)
	}
}
