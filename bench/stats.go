package main

import (
	"math"
	"slices"
	"time"
)

// Summary describes repeated measurements of one figure: the median, which
// is what the report compares with a target, and the spread around it.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	P25    float64 `json:"p25"`
	P75    float64 `json:"p75"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Summarize returns the summary of xs (NaNs are left out). The zero Summary
// (N = 0) stands for no measurement.
func Summarize(xs []float64) Summary {
	s := Sorted(xs)
	if len(s) == 0 {
		return Summary{}
	}
	return Summary{
		N:      len(s),
		Median: Quantile(s, 0.5),
		P25:    Quantile(s, 0.25),
		P75:    Quantile(s, 0.75),
		Min:    s[0],
		Max:    s[len(s)-1],
	}
}

// Quantile returns the q-quantile (0 ≤ q ≤ 1) of sorted, interpolating
// linearly between the two nearest ranks (R's and NumPy's default), or NaN
// when sorted is empty.
func Quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	q = min(max(q, 0), 1)
	pos := q * float64(len(sorted)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return sorted[lo] + (sorted[hi]-sorted[lo])*(pos-float64(lo))
}

// Ratios returns with[i]/base[i] for each pair; pairs whose base is zero
// give NaN (which Summarize leaves out).
func Ratios(base, with []float64) []float64 {
	n := min(len(base), len(with))
	out := make([]float64, n)
	for i := range n {
		if base[i] == 0 {
			out[i] = math.NaN()
			continue
		}
		out[i] = with[i] / base[i]
	}
	return out
}

// Millis converts durations to float milliseconds.
func Millis(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Millisecond)
	}
	return out
}

// MedianCI returns a distribution-free confidence interval for the median
// of sorted (ascending): the order statistics x(k) and x(n+1-k) for the
// largest k with P(Binomial(n, 1/2) < k) ≤ (1-conf)/2, and the coverage it
// actually has. With few values (n < 6 for 95%) it is [min, max], whose
// coverage, 1 - 2^(1-n), is below conf.
func MedianCI(sorted []float64, conf float64) (lo, hi, coverage float64) {
	n := len(sorted)
	if n == 0 {
		return math.NaN(), math.NaN(), 0
	}
	tail := (1 - conf) / 2
	k := 1
	cdf := math.Pow(0.5, float64(n)) // P(X ≤ 0)
	term := cdf
	for j := 1; j < n/2; j++ {
		term *= float64(n-j+1) / float64(j) // C(n, j) / 2^n
		if cdf+term > tail {
			break
		}
		cdf += term
		k = j + 1
	}
	// cdf is P(X ≤ k-1).
	return sorted[k-1], sorted[n-k], 1 - 2*cdf
}

// Sorted returns the values of xs that are not NaN, in ascending order.
func Sorted(xs []float64) []float64 {
	s := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) {
			s = append(s, x)
		}
	}
	slices.Sort(s)
	return s
}
