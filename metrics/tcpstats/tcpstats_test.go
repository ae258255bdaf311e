package tcpstats

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowd/flowd/flow"
)

// names is a CgroupNames of fixed paths.
type names map[uint64]string

func (n names) Path(id uint64) (string, bool) {
	p, ok := n[id]
	return p, ok
}

var t0 = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// rec is a record of flow cookie in cgroup cg at t0+sec seconds, with the
// counters acked, received, bytes_retrans and total_retrans.
func rec(backend string, ev flow.Event, cookie, cg uint64, sec int, acked, received, retrans, segs uint64) *flow.Record {
	r := &flow.Record{
		Time: t0.Add(time.Duration(sec) * time.Second), Backend: backend, Event: ev, Cookie: cookie, CgroupID: cg,
		Family: 4, LocalAddr: netip.MustParseAddr("10.0.0.1"), LocalPort: 40000 + uint16(cookie),
		RemoteAddr: netip.MustParseAddr("192.0.2.7"), RemotePort: 443,
	}
	r.Info.Set(flow.FieldBytesAcked, acked)
	r.Info.Set(flow.FieldBytesReceived, received)
	r.Info.Set(flow.FieldBytesRetrans, retrans)
	r.Info.Set(flow.FieldTotalRetrans, segs)
	return r
}

func write(t *testing.T, a *Aggregator, rs ...*flow.Record) {
	t.Helper()
	for _, r := range rs {
		if err := a.Write(r); err != nil {
			t.Fatal(err)
		}
	}
}

// series returns the series of backend and key in s.
func series(t *testing.T, s []Series, backend, key string) Series {
	t.Helper()
	for _, x := range s {
		if x.Backend == backend && x.Key == key {
			return x
		}
	}
	var have []string
	for _, x := range s {
		have = append(have, x.Backend+"/"+x.Key)
	}
	t.Fatalf("no series %s/%s; have %v", backend, key, have)
	return Series{}
}

func snapshot(a *Aggregator) *Snapshot {
	var s Snapshot
	a.Snapshot(&s)
	return &s
}

// counters returns the counters of a series as one comparable value.
func counters(s Series) [7]uint64 {
	return [7]uint64{s.BytesAcked, s.BytesReceived, s.BytesRetrans, s.SegsRetrans, s.Opened, s.Closed, s.Open}
}

// TestCounters: a flow's first record is its baseline, later records add
// what its counters grew by, its close record the last growth; closed
// flows' totals stay, and nothing goes backwards.
func TestCounters(t *testing.T) {
	a := New(Config{Names: names{7: "system.slice/a.service", 8: "b"}, MaxCgroups: 10})
	steps := []struct {
		r    *flow.Record
		want [7]uint64 // of system.slice/a.service, ebpf
	}{
		{rec("ebpf", flow.EventOpen, 1, 7, 0, 1, 0, 0, 0), [7]uint64{0, 0, 0, 0, 1, 0, 1}},
		{rec("ebpf", flow.EventSample, 1, 7, 1, 1001, 10, 0, 0), [7]uint64{1000, 10, 0, 0, 1, 0, 1}},
		// A flow flowd adopted: its past is its baseline.
		{rec("ebpf", flow.EventSample, 2, 7, 1, 1<<40, 1<<30, 5000, 5), [7]uint64{1000, 10, 0, 0, 1, 0, 2}},
		{rec("ebpf", flow.EventSample, 2, 7, 2, 1<<40+500, 1<<30+1, 6000, 6), [7]uint64{1500, 11, 1000, 1, 1, 0, 2}},
		{rec("ebpf", flow.EventState, 1, 7, 2, 3001, 10, 1448, 1), [7]uint64{3500, 11, 2448, 2, 1, 0, 2}},
		{rec("ebpf", flow.EventClose, 1, 7, 3, 4001, 20, 1448, 1), [7]uint64{4500, 21, 2448, 2, 1, 1, 1}},
		// The other backend's records of the same cookie are its own.
		{rec("netlink", flow.EventOpen, 2, 7, 3, 1<<40, 0, 0, 0), [7]uint64{4500, 21, 2448, 2, 1, 1, 1}},
		{rec("ebpf", flow.EventClose, 2, 7, 4, 1<<40+1500, 1<<30+1, 6000, 6), [7]uint64{5500, 21, 2448, 2, 1, 2, 0}},
		// A record after the close is a new flow, with a new baseline.
		{rec("ebpf", flow.EventSample, 1, 7, 5, 9001, 20, 1448, 1), [7]uint64{5500, 21, 2448, 2, 1, 2, 1}},
		// Counters that went down (they never do) add nothing.
		{rec("ebpf", flow.EventSample, 1, 7, 6, 9000, 20, 1448, 1), [7]uint64{5500, 21, 2448, 2, 1, 2, 1}},
		{rec("ebpf", flow.EventSample, 1, 7, 7, 9002, 20, 1448, 1), [7]uint64{5502, 21, 2448, 2, 1, 2, 1}},
	}
	for i, st := range steps {
		write(t, a, st.r)
		if got := counters(series(t, snapshot(a).Cgroups, "ebpf", "system.slice/a.service")); got != st.want {
			t.Fatalf("after record %d (%s of flow %d): counters %v, want %v", i, st.r.Event, st.r.Cookie, got, st.want)
		}
	}
	s := snapshot(a)
	if got := counters(series(t, s.Cgroups, "netlink", "system.slice/a.service")); got != [7]uint64{0, 0, 0, 0, 1, 0, 1} {
		t.Errorf("netlink counters %v", got)
	}
	want := []Tracked{{"ebpf", 1}, {"netlink", 1}}
	if !slices.Equal(s.Tracked, want) {
		t.Errorf("Tracked = %v, want %v", s.Tracked, want)
	}
}

// TestAbsentMembers: a record without a counter leaves it where it was.
func TestAbsentMembers(t *testing.T) {
	a := New(Config{Names: names{7: "a"}})
	write(t, a, rec("ebpf", flow.EventOpen, 1, 7, 0, 100, 0, 0, 0))
	r := &flow.Record{Time: t0.Add(time.Second), Backend: "ebpf", Event: flow.EventSample, Cookie: 1, CgroupID: 7}
	r.Info.Set(flow.FieldBytesReceived, 50)
	write(t, a, r, rec("ebpf", flow.EventSample, 1, 7, 2, 300, 60, 0, 0))
	if got := counters(series(t, snapshot(a).Cgroups, "ebpf", "a")); got != [7]uint64{200, 60, 0, 0, 1, 0, 1} {
		t.Errorf("counters %v", got)
	}
}

// laterNames finds a cgroup only after found is set, as cgroup.Names
// finds a cgroup made since its last walk on a later one.
type laterNames struct {
	found bool
}

func (n *laterNames) Path(id uint64) (string, bool) {
	if !n.found || id != 9 {
		return "", false
	}
	return "late", true
}

// TestCgroupFoundLater: the records of a flow whose cgroup path is not
// known yet count once it is, from the flow's first record; one that is
// never found is Unknown at its close.
func TestCgroupFoundLater(t *testing.T) {
	n := &laterNames{}
	a := New(Config{Names: n})
	write(t, a,
		rec("ebpf", flow.EventOpen, 1, 9, 0, 1, 0, 0, 0),
		rec("ebpf", flow.EventSample, 1, 9, 1, 501, 0, 0, 0),
		rec("ebpf", flow.EventOpen, 2, 10, 0, 1, 0, 0, 0),
		rec("ebpf", flow.EventSample, 2, 10, 1, 11, 0, 0, 0))
	if s := snapshot(a); len(s.Cgroups) != 0 {
		t.Fatalf("series before any cgroup was found: %v", s.Cgroups)
	}
	n.found = true
	write(t, a, rec("ebpf", flow.EventSample, 1, 9, 2, 1001, 0, 0, 0))
	if got := counters(series(t, snapshot(a).Cgroups, "ebpf", "late")); got != [7]uint64{1000, 0, 0, 0, 1, 0, 1} {
		t.Errorf("late: counters %v", got)
	}
	write(t, a, rec("ebpf", flow.EventClose, 2, 10, 2, 21, 0, 0, 0))
	if got := counters(series(t, snapshot(a).Cgroups, "ebpf", Unknown)); got != [7]uint64{20, 0, 0, 0, 1, 1, 0} {
		t.Errorf("unknown: counters %v", got)
	}
}

// TestMaxCgroups: beyond MaxCgroups (per backend), flows count in Other;
// a series without open flows for StaleAfter gives its place to a new
// cgroup, and the cgroups in Other get a place when one frees up.
func TestMaxCgroups(t *testing.T) {
	a := New(Config{Names: names{1: "a", 2: "b", 3: "c"}, MaxCgroups: 2})
	write(t, a,
		rec("ebpf", flow.EventOpen, 1, 1, 0, 0, 0, 0, 0),
		rec("ebpf", flow.EventOpen, 2, 2, 0, 0, 0, 0, 0),
		rec("ebpf", flow.EventOpen, 3, 3, 0, 0, 0, 0, 0),
		rec("ebpf", flow.EventClose, 3, 3, 1, 10, 0, 0, 0),
		rec("netlink", flow.EventOpen, 3, 3, 0, 0, 0, 0, 0))
	s := snapshot(a)
	keys := func(s []Series) []string {
		var k []string
		for _, x := range s {
			k = append(k, x.Backend+"/"+x.Key)
		}
		slices.Sort(k)
		return k
	}
	if got, want := keys(s.Cgroups), []string{"ebpf/a", "ebpf/b", "ebpf/other", "netlink/c"}; !slices.Equal(got, want) {
		t.Fatalf("series %v, want %v", got, want)
	}
	if got := counters(series(t, s.Cgroups, "ebpf", Other)); got != [7]uint64{10, 0, 0, 0, 1, 1, 0} {
		t.Errorf("other: counters %v", got)
	}

	// b's flow closes; a's stays open. Once b is stale, c takes its place.
	write(t, a, rec("ebpf", flow.EventClose, 2, 2, 1, 0, 0, 0, 0))
	stale := int(StaleAfter/time.Second) + 2
	write(t, a, rec("ebpf", flow.EventOpen, 4, 3, stale, 0, 0, 0, 0))
	if got, want := keys(snapshot(a).Cgroups), []string{"ebpf/a", "ebpf/c", "ebpf/other", "netlink/c"}; !slices.Equal(got, want) {
		t.Errorf("series %v, want %v", got, want)
	}
}

// TestBy: the second aggregation, by remote port or prefix, bounded too.
func TestBy(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want []string
	}{
		{Config{By: ByRemotePort, MaxBy: 2}, []string{"443", "80", "other"}},
		{Config{By: ByRemotePrefix, IPv4Bits: 24, IPv6Bits: 48, MaxBy: 10}, []string{"192.0.2.0/24", "198.51.100.0/24", "2001:db8:1::/48"}},
		{Config{By: ByRemotePrefix, IPv4Bits: 8, IPv6Bits: 8, MaxBy: 1}, []string{"192.0.0.0/8", "other"}},
	} {
		t.Run(fmt.Sprint(tc.cfg.By, tc.cfg.MaxBy), func(t *testing.T) {
			tc.cfg.Names = names{1: "a"}
			a := New(tc.cfg)
			for i, remote := range []struct {
				addr string
				port uint16
			}{{"192.0.2.7", 443}, {"::ffff:192.0.2.8", 443}, {"198.51.100.1", 80}, {"2001:db8:1::1", 22}} {
				r := rec("ebpf", flow.EventOpen, uint64(i), 1, 0, 0, 0, 0, 0)
				r.RemoteAddr, r.RemotePort = netip.MustParseAddr(remote.addr), remote.port
				write(t, a, r)
			}
			s := snapshot(a)
			var got []string
			var open uint64
			for _, x := range s.Remote {
				got = append(got, x.Key)
				open += x.Open
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) || open != 4 {
				t.Errorf("remote series %v holding %d flows, want %v holding 4", got, open, tc.want)
			}
			if got := series(t, s.Cgroups, "ebpf", "a").Open; got != 4 {
				t.Errorf("cgroup a: %d open flows, want 4", got)
			}
		})
	}
	if s := snapshot(New(Config{Names: names{1: "a"}})); len(s.Remote) != 0 {
		t.Errorf("remote series with ByNone: %v", s.Remote)
	}
}

// TestHistograms: srtt, min_rtt and delivery rate are observed on sample
// and close records, in the buckets their bounds say; unmeasured values
// (0, min_rtt's ~0U) are not observed.
func TestHistograms(t *testing.T) {
	a := New(Config{Names: names{1: "a"}})
	obs := func(ev flow.Event, sec int, srtt, minRTT, rate uint64) {
		r := rec("ebpf", ev, 1, 1, sec, 0, 0, 0, 0)
		r.Info.Set(flow.FieldRTT, srtt)
		r.Info.Set(flow.FieldMinRTT, minRTT)
		r.Info.Set(flow.FieldDeliveryRate, rate)
		write(t, a, r)
	}
	obs(flow.EventOpen, 0, 30, 30, 0)                      // open: not observed
	obs(flow.EventSample, 1, 30, 1<<32-1, 0)               // no min_rtt, no rate yet
	obs(flow.EventSample, 2, 100, 10, 125_000)             // on the bounds
	obs(flow.EventState, 3, 1, 1, 1)                       // state: not observed
	obs(flow.EventClose, 4, 3_000_000, 20, 50_000_000_000) // above the last bounds
	s := series(t, snapshot(a).Cgroups, "ebpf", "a")
	check := func(name string, h Histogram, bounds []uint64, want map[uint64]uint64, sum float64) {
		t.Helper()
		var n uint64
		for i, c := range h.Counts[:len(bounds)+1] {
			upper := uint64(1<<64 - 1)
			if i < len(bounds) {
				upper = bounds[i]
			}
			if c != want[upper] {
				t.Errorf("%s: bucket ≤ %d holds %d, want %d", name, upper, c, want[upper])
			}
			n += c
		}
		if n != h.Count || h.Sum != sum {
			t.Errorf("%s: count %d (buckets: %d), sum %g; want sum %g", name, h.Count, n, h.Sum, sum)
		}
	}
	check("srtt", s.SRTT, RTTBounds[:], map[uint64]uint64{50: 1, 100: 1, 1<<64 - 1: 1}, 3_000_130)
	check("min_rtt", s.MinRTT, RTTBounds[:], map[uint64]uint64{10: 1, 25: 1}, 30)
	check("delivery_rate", s.DeliveryRate, RateBounds[:], map[uint64]uint64{125_000: 1, 1<<64 - 1: 1}, 50_000_125_000)
}

// TestTopFlows: the busiest flows by bytes acked and received since the
// previous selection, at most TopFlows; closed flows drop out.
func TestTopFlows(t *testing.T) {
	a := New(Config{Names: names{1: "a"}, TopFlows: 2})
	for c := uint64(1); c <= 3; c++ {
		write(t, a, rec("ebpf", flow.EventOpen, c, 1, 0, 0, 0, 0, 0))
	}
	write(t, a,
		rec("ebpf", flow.EventSample, 1, 1, 1, 100, 0, 0, 0),
		rec("ebpf", flow.EventSample, 2, 1, 1, 0, 300, 0, 0),
		rec("ebpf", flow.EventSample, 3, 1, 1, 200, 0, 0, 0))
	cookies := func(s *Snapshot) (c []uint64, bytes []uint64) {
		for _, f := range s.Flows {
			c = append(c, f.Cookie)
			bytes = append(bytes, f.Bytes)
		}
		return c, bytes
	}
	s := snapshot(a)
	if c, b := cookies(s); !slices.Equal(c, []uint64{2, 3}) || !slices.Equal(b, []uint64{300, 200}) {
		t.Fatalf("busiest %v moving %v, want [2 3] moving [300 200]", c, b)
	}
	if f := s.Flows[0]; f.Backend != "ebpf" || f.Cgroup != "a" || f.RemotePort != 443 || f.LocalPort != 40002 {
		t.Errorf("flow %+v", f)
	}
	// Within minSelectInterval the selection stands; a closed flow drops out.
	write(t, a, rec("ebpf", flow.EventClose, 3, 1, 2, 200, 0, 0, 0))
	if c, _ := cookies(snapshot(a)); !slices.Equal(c, []uint64{2}) {
		t.Fatalf("busiest after a close %v, want [2]", c)
	}
	// The next interval: flow 1 moved the most.
	a.mu.Lock()
	a.selectedAt = a.selectedAt.Add(-minSelectInterval)
	a.mu.Unlock()
	write(t, a, rec("ebpf", flow.EventSample, 1, 1, 3, 1100, 0, 0, 0), rec("ebpf", flow.EventSample, 2, 1, 3, 0, 310, 0, 0))
	if c, b := cookies(snapshot(a)); !slices.Equal(c, []uint64{1, 2}) || !slices.Equal(b, []uint64{1000, 10}) {
		t.Errorf("busiest %v moving %v, want [1 2] moving [1000 10]", c, b)
	}
	if s := snapshot(New(Config{Names: names{1: "a"}})); len(s.Flows) != 0 {
		t.Errorf("flows with TopFlows 0: %v", s.Flows)
	}
}

// TestSeries: Series copies what Snapshot does but the busiest flows, and
// leaves their selection alone, so that an exporter pushing on its own
// schedule does not shorten the scrapes' intervals.
func TestSeries(t *testing.T) {
	a := New(Config{Names: names{1: "a"}, TopFlows: 2})
	write(t, a, rec("ebpf", flow.EventOpen, 1, 1, 5, 0, 0, 0, 0), rec("ebpf", flow.EventSample, 1, 1, 6, 100, 0, 0, 0))
	var s Snapshot
	a.Series(&s)
	if x := series(t, s.Cgroups, "ebpf", "a"); x.BytesAcked != 100 || x.Start != t0.Add(5*time.Second).UnixNano() {
		t.Errorf("series %+v, want 100 bytes acked from the open record's time", x)
	}
	if len(s.Flows) != 0 || !a.selectedAt.IsZero() {
		t.Errorf("Series selected the busiest flows: %v at %v", s.Flows, a.selectedAt)
	}
	if s := snapshot(a); len(s.Flows) != 1 || s.Flows[0].Bytes != 100 {
		t.Errorf("the scrape after Series sees %+v, want the flow's 100 bytes", s.Flows)
	}
}

// TestMaxTracked: at the limit, flows silent for StaleAfter are forgotten
// to make room; while none is, records of new flows are ignored and counted.
func TestMaxTracked(t *testing.T) {
	a := New(Config{Names: names{1: "a"}})
	a.maxTracked = 2
	write(t, a,
		rec("ebpf", flow.EventOpen, 1, 1, 0, 0, 0, 0, 0),
		rec("ebpf", flow.EventOpen, 2, 1, 100, 0, 0, 0, 0),
		rec("ebpf", flow.EventOpen, 3, 1, 101, 0, 0, 0, 0))
	s := snapshot(a)
	if s.Ignored != 1 || s.Tracked[0].Flows != 2 {
		t.Fatalf("ignored %d, tracked %v; want 1 and 2", s.Ignored, s.Tracked)
	}
	stale := int(StaleAfter/time.Second) + 1
	write(t, a, rec("ebpf", flow.EventOpen, 3, 1, stale, 0, 0, 0, 0))
	s = snapshot(a)
	if got := series(t, s.Cgroups, "ebpf", "a"); s.Ignored != 1 || got.Open != 2 || got.Opened != 3 {
		t.Errorf("ignored %d, series %+v; want 1 ignored, 2 open of 3 opened", s.Ignored, got)
	}
}

// TestConcurrent writes from several goroutines while snapshots are taken
// (run with -race); the totals add up.
func TestConcurrent(t *testing.T) {
	a := New(Config{Names: names{1: "a", 2: "b"}, TopFlows: 5, By: ByRemotePort, MaxBy: 5})
	const flows, samples = 20, 50
	var wg sync.WaitGroup
	for _, backend := range []string{"ebpf", "netlink"} {
		for c := uint64(1); c <= flows; c++ {
			wg.Go(func() {
				write(t, a, rec(backend, flow.EventOpen, c, 1+c%2, 0, 0, 0, 0, 0))
				for i := 1; i <= samples; i++ {
					write(t, a, rec(backend, flow.EventSample, c, 1+c%2, i, uint64(i)*10, 0, 0, 0))
				}
				write(t, a, rec(backend, flow.EventClose, c, 1+c%2, samples+1, samples*10, 0, 0, 0))
			})
		}
	}
	wg.Go(func() {
		for range 100 {
			snapshot(a)
		}
	})
	wg.Wait()
	var acked, closed uint64
	for _, s := range snapshot(a).Cgroups {
		acked += s.BytesAcked
		closed += s.Closed
	}
	if acked != 2*flows*samples*10 || closed != 2*flows {
		t.Errorf("acked %d, closed %d; want %d, %d", acked, closed, 2*flows*samples*10, 2*flows)
	}
}

func TestBounds(t *testing.T) {
	for name, b := range map[string][]uint64{"RTTBounds": RTTBounds[:], "RateBounds": RateBounds[:]} {
		if !slices.IsSorted(b) || len(slices.Compact(slices.Clone(b))) != len(b) || len(b)+1 > maxBuckets {
			t.Errorf("%s %v: not increasing, or more than %d", name, b, maxBuckets-1)
		}
	}
	if got := fmt.Sprint(RateBounds[3] * 8); !strings.HasPrefix(got, "1000000") {
		t.Errorf("the fourth rate bound is %s bits/s, want 1 Mbit/s", got)
	}
}

// TestReuse: a closed flow's state serves a new flow, but not while the
// selection of the busiest flows holds it; a reused state keeps nothing of
// its old flow.
func TestReuse(t *testing.T) {
	a := New(Config{Names: names{1: "a"}, TopFlows: 1})
	write(t, a, rec("ebpf", flow.EventOpen, 1, 1, 0, 0, 0, 0, 0), rec("ebpf", flow.EventSample, 1, 1, 1, 5000, 0, 0, 0))
	if s := snapshot(a); len(s.Flows) != 1 || s.Flows[0].Cookie != 1 {
		t.Fatalf("busiest %+v, want flow 1", s.Flows)
	}
	write(t, a, rec("ebpf", flow.EventClose, 1, 1, 2, 6000, 0, 0, 0), rec("ebpf", flow.EventOpen, 2, 1, 2, 100, 0, 0, 0))
	if s := snapshot(a); len(s.Flows) != 0 {
		t.Fatalf("busiest after flow 1 closed, within the interval: %+v, want none", s.Flows)
	}
	// The next selection lets flow 1's state go; flow 3 may take it.
	a.mu.Lock()
	a.selectedAt = a.selectedAt.Add(-minSelectInterval)
	a.mu.Unlock()
	if s := snapshot(a); len(s.Flows) != 1 || s.Flows[0].Cookie != 2 {
		t.Fatalf("busiest %+v, want flow 2", s.Flows)
	}
	write(t, a, rec("ebpf", flow.EventSample, 3, 1, 3, 7, 0, 0, 0), rec("ebpf", flow.EventSample, 3, 1, 4, 10, 0, 0, 0))
	if got := counters(series(t, snapshot(a).Cgroups, "ebpf", "a")); got != [7]uint64{6003, 0, 0, 0, 2, 1, 2} {
		t.Errorf("counters %v", got)
	}
}

// churnNames names cgroup 1 "keep" and every other id, as cgroups come
// and go: ids from 1000 on have a path of their own, those below share
// one path of three, as a service restarted is a new cgroup of the same
// path.
type churnNames struct{}

func (churnNames) Path(id uint64) (string, bool) {
	switch {
	case id == 1:
		return "keep", true
	case id < 1000:
		return fmt.Sprintf("restarted-%d.service", id%3), true
	}
	return fmt.Sprintf("job-%d.scope", id), true
}

// heapInUse is the live heap, in bytes.
func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestCgroupChurn: flows of ever new cgroups (jobs, restarted services)
// at MaxCgroups leave nothing behind them once their series gave their
// place, so memory stays bounded; and no series' counters go backwards.
func TestCgroupChurn(t *testing.T) {
	const maxCgroups = 10
	a := New(Config{Names: churnNames{}, MaxCgroups: maxCgroups, By: ByRemotePort, MaxBy: 5})
	prev := map[string]Series{}
	check := func(at string) {
		t.Helper()
		s := snapshot(a)
		next := map[string]Series{}
		for i, x := range append(s.Cgroups, s.Remote...) {
			k := "remote " + x.Backend + "/" + x.Key
			if i < len(s.Cgroups) {
				k = "cgroup " + x.Backend + "/" + x.Key
			}
			next[k] = x
			// A series made again (after it gave its place) starts anew.
			if p, ok := prev[k]; ok && p.Start == x.Start {
				was, is := counters(p), counters(x)
				for c := range 6 { // the last is the open flows, a gauge
					if is[c] < was[c] {
						t.Fatalf("%s: %s went backwards: %v, then %v", at, k, was, is)
					}
				}
			}
		}
		prev = next
		for _, b := range a.backends {
			if n := len(b.cgroups.series); n > maxCgroups+2 {
				t.Fatalf("%s: %d cgroup series, want at most %d", at, n, maxCgroups+2)
			}
			if n := len(b.ports.series); n > 5+1 {
				t.Fatalf("%s: %d remote series, want at most 6", at, n)
			}
		}
	}
	// keep's flow lives throughout, with a record at each step; at each
	// step, StaleAfter and a minute after the last, ten short flows in
	// new cgroups (one of them a restarted service) take the places of
	// the last step's.
	const flows = 10
	step := 0
	churn := func(steps int) {
		for range steps {
			step++
			sec := step * int((StaleAfter+time.Minute)/time.Second)
			write(t, a, rec("ebpf", flow.EventSample, 1, 1, sec, uint64(step)*1000, 0, 0, 0))
			for j := range flows {
				cookie := uint64(1000 + flows*step + j)
				id := cookie
				if j == 0 {
					id = uint64(2 + step%900)
				}
				for _, r := range []*flow.Record{
					rec("ebpf", flow.EventOpen, cookie, id, sec, 0, 0, 0, 0),
					rec("ebpf", flow.EventClose, cookie, id, sec+1, 100, 10, 0, 0),
				} {
					r.RemotePort = uint16(1 + j)
					write(t, a, r)
				}
			}
			check(fmt.Sprintf("step %d", step))
		}
	}
	write(t, a, rec("ebpf", flow.EventOpen, 1, 1, 0, 0, 0, 0, 0))
	churn(10)
	before := heapInUse()
	churn(2000)
	if after := heapInUse(); after > before+1<<20 { // each leaked series would be ~700 bytes
		t.Errorf("the heap grew by %d KiB over %d cgroups", (after-before)>>10, 2000*flows)
	}
	if got := series(t, snapshot(a).Cgroups, "ebpf", "keep"); got.BytesAcked != uint64(step)*1000 || got.Open != 1 {
		t.Errorf("keep: %d bytes acked, %d open; want %d, 1", got.BytesAcked, got.Open, step*1000)
	}
}

// BenchmarkFlowChurn is a short flow's cost: an open and a close record of
// a new flow in one of 1,000 cgroups, whose series it finds by path.
func BenchmarkFlowChurn(b *testing.B) {
	paths := names{}
	for id := range uint64(1000) {
		paths[id+1] = fmt.Sprintf("system.slice/unit-%d.service", id+1)
	}
	a := New(Config{Names: paths, MaxCgroups: 1000})
	open := rec("ebpf", flow.EventOpen, 0, 0, 0, 0, 0, 0, 0)
	closed := rec("ebpf", flow.EventClose, 0, 0, 1, 1000, 10, 0, 0)
	var cookie uint64
	b.ReportAllocs()
	for b.Loop() {
		cookie++
		id := 1 + cookie%1000
		open.Cookie, open.CgroupID = cookie, id
		closed.Cookie, closed.CgroupID = cookie, id
		if err := a.Write(open); err != nil {
			b.Fatal(err)
		}
		if err := a.Write(closed); err != nil {
			b.Fatal(err)
		}
	}
}
