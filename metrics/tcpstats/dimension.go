package tcpstats

import "time"

// dimension holds one backend's series of one aggregation (by cgroup, by
// remote port, by remote prefix), keyed by K. At most max keys have a
// series of their own; the others share the series of the key other. A
// key whose series has had no open flow and no record for StaleAfter
// gives its place to a new key.
type dimension[K comparable] struct {
	backend        string
	max            int
	other, unknown K // keys that are not counted against max
	name           func(K) string

	series      map[K]*Series
	named       int   // series of keys other than other and unknown
	nextReclaim int64 // the earliest time (ns) to look for a place again
}

func newDimension[K comparable](backend string, max int, other, unknown K, name func(K) string) *dimension[K] {
	return &dimension[K]{backend: backend, max: max, other: other, unknown: unknown, name: name, series: make(map[K]*Series)}
}

// get returns k's series, made if need be, or the other series when k
// has none and there is no place for it. now is the time of the record
// that asks, in ns.
func (d *dimension[K]) get(k K, now int64) *Series {
	if s := d.series[k]; s != nil {
		return s
	}
	special := k == d.other || k == d.unknown
	if !special && d.named >= d.max && !d.reclaim(now) {
		return d.get(d.other, now)
	}
	s := &Series{Backend: d.backend, Key: d.name(k), Start: now, last: now}
	d.series[k] = s
	if !special {
		d.named++
	}
	return s
}

// reclaim removes a series that has had no open flow and no record for
// StaleAfter, looking at most once a second, and reports whether it did.
func (d *dimension[K]) reclaim(now int64) bool {
	if now < d.nextReclaim {
		return false
	}
	for k, s := range d.series {
		if k != d.other && k != d.unknown && s.Open == 0 && now-s.last >= int64(StaleAfter) {
			delete(d.series, k)
			d.named--
			return true
		}
	}
	d.nextReclaim = now + int64(time.Second)
	return false
}

// appendTo appends a copy of every series to dst.
func (d *dimension[K]) appendTo(dst []Series) []Series {
	for _, s := range d.series {
		dst = append(dst, *s)
	}
	return dst
}
