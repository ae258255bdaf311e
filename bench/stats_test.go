package main

import (
	"math"
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want Summary
	}{
		{"empty", nil, Summary{}},
		{"only NaN", []float64{math.NaN()}, Summary{}},
		{"one", []float64{2}, Summary{N: 1, Median: 2, P25: 2, P75: 2, Min: 2, Max: 2}},
		{"odd, unsorted", []float64{3, 1, 2}, Summary{N: 3, Median: 2, P25: 1.5, P75: 2.5, Min: 1, Max: 3}},
		{"even", []float64{4, 1, 3, 2}, Summary{N: 4, Median: 2.5, P25: 1.75, P75: 3.25, Min: 1, Max: 4}},
		{"NaN left out", []float64{1, math.NaN(), 3}, Summary{N: 2, Median: 2, P25: 1.5, P75: 2.5, Min: 1, Max: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Summarize(tt.in); got != tt.want {
				t.Errorf("Summarize(%v) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestSummarizeKeepsInput(t *testing.T) {
	in := []float64{3, 1, 2}
	Summarize(in)
	if in[0] != 3 || in[1] != 1 || in[2] != 2 {
		t.Errorf("Summarize reordered its input: %v", in)
	}
}

func TestQuantile(t *testing.T) {
	s := make([]float64, 1000)
	for i := range s {
		s[i] = float64(i + 1) // 1..1000
	}
	for _, tt := range []struct{ q, want float64 }{
		{0, 1}, {1, 1000}, {0.5, 500.5}, {0.99, 990.01}, {-1, 1}, {2, 1000},
	} {
		if got := Quantile(s, tt.q); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("Quantile(1..1000, %v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	if got := Quantile(nil, 0.5); !math.IsNaN(got) {
		t.Errorf("Quantile(nil) = %v, want NaN", got)
	}
}

func TestRatios(t *testing.T) {
	got := Ratios([]float64{10, 0, 4, 5}, []float64{9, 1, 4})
	if len(got) != 3 || got[0] != 0.9 || !math.IsNaN(got[1]) || got[2] != 1 {
		t.Errorf("Ratios = %v, want [0.9 NaN 1]", got)
	}
	if s := Summarize(got); s.N != 2 || s.Median != 0.95 {
		t.Errorf("Summarize(Ratios) = %+v, want N 2, median 0.95", s)
	}
}

func TestMillis(t *testing.T) {
	got := Millis([]time.Duration{1500 * time.Microsecond, time.Second})
	if got[0] != 1.5 || got[1] != 1000 {
		t.Errorf("Millis = %v", got)
	}
}

func TestMedianCI(t *testing.T) {
	seq := func(n int) []float64 {
		s := make([]float64, n)
		for i := range s {
			s[i] = float64(i + 1)
		}
		return s
	}
	for _, tt := range []struct {
		n      int
		lo, hi float64
		cov    float64
	}{
		{1, 1, 1, 0},
		{5, 1, 5, 1 - 2.0/32},          // [min, max]
		{8, 1, 8, 1 - 2.0/256},         // P(X≤1) = 9/256 > 2.5%
		{10, 2, 9, 1 - 2*11.0/1024},    // P(X≤1) = 11/1024
		{12, 3, 10, 1 - 2*79.0/4096},   // P(X≤2) = 79/4096
		{20, 6, 15, 1 - 2*0.020694732}, // P(X≤5) for n=20
	} {
		lo, hi, cov := MedianCI(seq(tt.n), 0.95)
		if lo != tt.lo || hi != tt.hi || math.Abs(cov-tt.cov) > 1e-6 {
			t.Errorf("MedianCI(1..%d) = [%v, %v] coverage %.6f, want [%v, %v] %.6f", tt.n, lo, hi, cov, tt.lo, tt.hi, tt.cov)
		}
	}
	if lo, hi, _ := MedianCI(nil, 0.95); !math.IsNaN(lo) || !math.IsNaN(hi) {
		t.Error("MedianCI(nil) is not NaN")
	}
}
