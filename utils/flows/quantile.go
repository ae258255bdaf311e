package flows

import (
	"math"
	"slices"
)

// sketchGamma is the ratio between the bounds of a sketch bucket: a
// quantile read from the sketch is within 1% of the true one.
const sketchGamma = 1.02

var logGamma = math.Log(sketchGamma)

// sketch holds a distribution of positive values in logarithmic buckets,
// stored sparsely: a flow's RTTs fall in a few dozen buckets, so a summary
// of 100,000 flows stays small however many samples each had.
type sketch struct {
	idx []uint16 // bucket indexes, ascending
	cnt []uint32 // samples in each
	n   uint64
}

func bucketOf(v float64) uint16 {
	i := math.Floor(math.Log(v) / logGamma)
	return uint16(max(0, min(i, math.MaxUint16)))
}

// add counts v (v < 1 counts as 1).
func (s *sketch) add(v float64) {
	b := bucketOf(max(v, 1))
	i, found := slices.BinarySearch(s.idx, b)
	if found {
		s.cnt[i]++
	} else {
		s.idx = slices.Insert(s.idx, i, b)
		s.cnt = slices.Insert(s.cnt, i, 1)
	}
	s.n++
}

// quantile returns the q-quantile (0 <= q <= 1) by nearest rank: the
// geometric middle of the bucket holding the ceil(q*n)-th smallest value.
func (s *sketch) quantile(q float64) (float64, bool) {
	if s.n == 0 {
		return 0, false
	}
	rank := uint64(math.Ceil(q * float64(s.n)))
	rank = max(1, min(rank, s.n))
	var seen uint64
	for i, c := range s.cnt {
		seen += uint64(c)
		if seen >= rank {
			return math.Pow(sketchGamma, float64(s.idx[i])+0.5), true
		}
	}
	return 0, false // not reached
}
