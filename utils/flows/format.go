package flows

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"time"
)

// Columns are the headers of a summary's Row.
var Columns = []string{"COOKIE", "BACKEND", "LOCAL", "REMOTE", "CGROUP", "START (UTC)", "DURATION",
	"SENT", "RECEIVED", "RATE", "RETRANS", "RTT MIN/MED/P95", "LIMITED BY"}

// Row formats a summary for a table: one cell per column of Columns.
// Times of day are shown when every summary of the table starts on the
// same day (sameDay), dates too otherwise.
func (s *Summary) Row(sameDay bool) []string {
	start := s.Start.Format("2006-01-02 15:04:05.000")
	if sameDay {
		start = s.Start.Format("15:04:05.000")
	}
	// A flow read only from partial samples (input that starts in the
	// middle of an output) has no 4-tuple or cgroup: they show as "-".
	cg := s.Cgroup
	switch {
	case cg != "":
	case s.CgroupID != 0:
		cg = strconv.FormatUint(s.CgroupID, 10)
	default:
		cg = "-"
	}
	retrans := strconv.FormatUint(s.Retransmits, 10)
	if s.RetransShare != nil && s.Retransmits > 0 {
		retrans += " (" + Percent(*s.RetransShare) + ")"
	}
	return []string{
		strconv.FormatUint(s.Cookie, 10), s.Backend, endpoint(s.Local), endpoint(s.Remote), cg, start,
		Seconds(s.Duration), byteCount(s.BytesAcked, s.noAcked), byteCount(s.BytesReceived, s.noReceived), BitRate(s.Rate()), retrans,
		RTTs(s.RTTMin, s.RTTMedian, s.RTTP95), s.LimitedBy(),
	}
}

// byteCount formats a byte count: "-" when the records did not have it.
func byteCount(n uint64, unknown bool) string {
	if unknown {
		return "-"
	}
	return Bytes(n)
}

// endpoint formats one end of a flow: "-" when its records did not say.
func endpoint(a netip.AddrPort) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

// SameDay reports whether every summary starts on the same UTC day.
func SameDay(sums []Summary) bool {
	for i := range sums {
		if sums[i].Start.YearDay() != sums[0].Start.YearDay() || sums[i].Start.Year() != sums[0].Start.Year() {
			return false
		}
	}
	return true
}

// LimitedBy is the verdict with the share of time of its cause (and the
// next cause's when the verdict's is under half; congestion says whether
// segments were retransmitted), or, for a flow that mostly received, its
// peer's verdict.
func (s *Summary) LimitedBy() string {
	switch {
	case s.Limits != nil:
		share := s.Limits.Share(s.Verdict)
		out := s.Verdict.Describe() + " " + Percent(share)
		if s.Verdict == VerdictCongestion && s.Retransmits > 0 {
			out = s.Verdict.Describe() + " with loss " + Percent(share)
		}
		if next, nextShare := s.Limits.runnerUp(s.Verdict); share < 0.5 && nextShare > 0 {
			out += ", " + next.Describe() + " " + Percent(nextShare)
		}
		return out
	case s.Verdict == VerdictReceiver && s.PeerVerdict != "":
		return "receiver (peer: " + s.PeerVerdict.Describe() + ")"
	}
	return s.Verdict.Describe()
}

// Bytes formats a byte count in SI units (1 MB = 10⁶ bytes).
func Bytes(n uint64) string {
	if n < 1000 {
		return strconv.FormatUint(n, 10) + " B"
	}
	return si(float64(n), "B")
}

// BitRate formats bit/s in SI units.
func BitRate(bps float64) string {
	if bps == 0 {
		return "0"
	}
	return si(bps, "bit/s")
}

func si(v float64, unit string) string {
	prefixes := []string{"", "k", "M", "G", "T", "P"}
	i := 0
	for v >= 999.5 && i < len(prefixes)-1 {
		v /= 1000
		i++
	}
	return strconv.FormatFloat(v, 'f', digitsFor(v), 64) + " " + prefixes[i] + unit
}

// digitsFor returns the decimals that show v with three significant digits.
func digitsFor(v float64) int {
	switch {
	case v >= 99.95:
		return 0
	case v >= 9.995:
		return 1
	}
	return 2
}

// Seconds formats a duration given in seconds: in ms below a second, so
// that a short connection does not read 0.00s.
func Seconds(s float64) string {
	if ms := s * 1000; ms > 0 && ms < 999.5 {
		return strconv.FormatFloat(ms, 'f', digitsFor(ms), 64) + "ms"
	}
	if s < 60 {
		return strconv.FormatFloat(s, 'f', digitsFor(s), 64) + "s"
	}
	return time.Duration(s * float64(time.Second)).Round(time.Second).String()
}

// RTTs formats min/median/p95 RTTs given in µs, in one unit: ms when the
// median reaches 1 ms.
func RTTs(minRTT, median, p95 float64) string {
	if median == 0 {
		return "-"
	}
	unit, scale := "µs", 1.0
	if median >= 1000 {
		unit, scale = "ms", 1000
	}
	f := func(v float64) string {
		if v == 0 {
			return "-"
		}
		v /= scale
		return strconv.FormatFloat(v, 'f', digitsFor(v), 64)
	}
	return f(minRTT) + "/" + f(median) + "/" + f(p95) + " " + unit
}

// Percent formats a share (0..1) as a percentage.
func Percent(share float64) string {
	p := share * 100
	switch {
	case p == 0 || p >= 10:
		return fmt.Sprintf("%.0f%%", math.Round(p))
	case p >= 1:
		return fmt.Sprintf("%.1f%%", p)
	}
	return fmt.Sprintf("%.2f%%", p)
}
