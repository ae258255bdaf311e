package flows

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowd/flowd/flow"
)

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

// rec returns a record of a flow from 10.0.0.1:40000 to 10.0.0.2:5201 at
// t0+at with the given tcp_info members.
func rec(backend string, ev flow.Event, cookie uint64, at time.Duration, info map[flow.Field]uint64) *flow.Record {
	r := &flow.Record{
		Time: t0.Add(at), Backend: backend, Event: ev, Cookie: cookie, CgroupID: 77, Family: 4,
		LocalAddr: netip.MustParseAddr("10.0.0.1"), RemoteAddr: netip.MustParseAddr("10.0.0.2"),
		LocalPort: 40000, RemotePort: 5201, State: flow.StateEstablished, CA: "cubic",
	}
	for f, v := range info {
		r.Info.Set(f, v)
	}
	return r
}

func summarize(recs ...*flow.Record) []Summary {
	var z Summarizer
	for _, r := range recs {
		z.Add(r)
	}
	return z.Summaries()
}

func TestVerdict(t *testing.T) {
	const sec = 1_000_000 // µs
	// Each case is a flow of 10 s: an open record with every counter at
	// its start value and a close record with these growths; app is the
	// delivery_rate_app_limited flag of the samples in between.
	for _, tc := range []struct {
		name                       string
		acked, received            uint64
		busy, rwnd, sndbuf         uint64 // µs
		app                        []uint64
		omitBusy                   bool
		want                       Verdict
		wantShare                  float64
		wantApp, wantCong, wantWin float64
	}{
		{name: "no payload", acked: 1, received: 1, want: VerdictIdle},
		{name: "download", acked: 100, received: 5e6, busy: sec, want: VerdictReceiver},
		{name: "no busy_time", acked: 5e6, omitBusy: true, want: VerdictUnknown},
		{name: "mostly idle", acked: 5e6, busy: 2 * sec, app: []uint64{0, 0}, want: VerdictApplication, wantShare: 0.8},
		{name: "receive window", acked: 5e6, busy: 10 * sec, rwnd: 7 * sec, app: []uint64{0}, want: VerdictReceiveWindow, wantShare: 0.7},
		{name: "send buffer", acked: 5e6, busy: 10 * sec, sndbuf: 6 * sec, app: []uint64{0}, want: VerdictSendBuffer, wantShare: 0.6},
		{name: "congestion", acked: 5e6, busy: 10 * sec, rwnd: sec, app: []uint64{0, 0, 0, 0}, want: VerdictCongestion, wantShare: 0.9},
		// Busy all the time, but three samples in four app-limited (the
		// close record is the fourth): the application kept the pipe from
		// filling.
		{name: "busy but app-limited", acked: 5e6, busy: 10 * sec, app: []uint64{1, 1, 1},
			want: VerdictApplication, wantShare: 0.75, wantCong: 0.25},
		// The same samples from a writer the kernel saw waiting for buffer
		// space (a tenth of the busy time or more): the send buffer kept
		// the data short.
		{name: "app-limited behind the send buffer", acked: 5e6, busy: 10 * sec, sndbuf: 2 * sec, app: []uint64{1, 1, 1},
			want: VerdictSendBuffer, wantShare: 0.2 + 0.75*0.8, wantCong: 0.25 * 0.8},
		{name: "app-limited, little send buffer", acked: 5e6, busy: 10 * sec, sndbuf: sec / 2, app: []uint64{1, 1, 1},
			want: VerdictApplication, wantShare: 0.75 * 0.95, wantCong: 0.25 * 0.95},
		// A tie goes to the named limit.
		{name: "tie", acked: 5e6, busy: 10 * sec, rwnd: 5 * sec, app: []uint64{0}, want: VerdictReceiveWindow, wantShare: 0.5},
		// busy_time counted in jiffies may exceed the wall time a little.
		{name: "busy beyond duration", acked: 5e6, busy: 10*sec + 4000, app: []uint64{0}, want: VerdictCongestion, wantShare: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			counters := func(k uint64) map[flow.Field]uint64 {
				m := map[flow.Field]uint64{
					flow.FieldBytesAcked: 1 + k*tc.acked, flow.FieldBytesReceived: 1 + k*tc.received,
					flow.FieldRwndLimited: k * tc.rwnd, flow.FieldSndbufLimited: k * tc.sndbuf,
					flow.FieldDeliveryRateAppLimited: 0,
				}
				if !tc.omitBusy {
					m[flow.FieldBusyTime] = k * tc.busy
				}
				return m
			}
			recs := []*flow.Record{rec("ebpf", flow.EventOpen, 1, 0, counters(0))}
			for i, a := range tc.app {
				// Samples with busy_time growing; only their flag matters.
				at := time.Duration(i+1) * time.Second
				r := rec("ebpf", flow.EventSample, 1, at, map[flow.Field]uint64{
					flow.FieldBusyTime: uint64(i+1) * 1000, flow.FieldDeliveryRateAppLimited: a})
				recs = append(recs, r)
			}
			recs = append(recs, rec("ebpf", flow.EventClose, 1, 10*time.Second, counters(1)))
			s := summarize(recs...)[0]
			if s.Verdict != tc.want {
				t.Fatalf("verdict %s, want %s (limits %+v)", s.Verdict, tc.want, s.Limits)
			}
			if tc.wantShare == 0 {
				if s.Limits != nil {
					t.Errorf("limits %+v for verdict %s, want none", s.Limits, s.Verdict)
				}
				return
			}
			near(t, "share", s.Limits.Share(s.Verdict), tc.wantShare)
			total := s.Limits.Application + s.Limits.ReceiveWindow + s.Limits.SendBuffer + s.Limits.Congestion
			near(t, "sum of shares", total, 1)
			if tc.wantCong != 0 {
				near(t, "congestion share", s.Limits.Congestion, tc.wantCong)
			}
		})
	}
}

// TestVerdictWithoutReadings checks that a flow whose byte counters were
// not read twice is not called idle: the receiving end of a transfer
// recorded with output.tcp_info lacking bytes_received, and a flow with a
// single record in a time window.
func TestVerdictWithoutReadings(t *testing.T) {
	noReceived := summarize(
		rec("ebpf", flow.EventOpen, 1, 0, map[flow.Field]uint64{flow.FieldBytesAcked: 0, flow.FieldRTT: 30}),
		rec("ebpf", flow.EventSample, 1, time.Second, map[flow.Field]uint64{flow.FieldBytesAcked: 0, flow.FieldRTT: 30}),
		rec("ebpf", flow.EventClose, 1, 3*time.Second, map[flow.Field]uint64{flow.FieldBytesAcked: 1, flow.FieldRTT: 30}),
	)[0]
	if noReceived.Verdict != VerdictUnknown {
		t.Errorf("flow without bytes_received: verdict %s, want %s", noReceived.Verdict, VerdictUnknown)
	}
	if row := noReceived.Row(true); row[7] != "1 B" || row[8] != "-" {
		t.Errorf("flow without bytes_received: SENT %q, RECEIVED %q; want \"1 B\", \"-\"", row[7], row[8])
	}
	counters := map[flow.Field]uint64{flow.FieldBytesAcked: 5e6, flow.FieldBytesReceived: 1, flow.FieldBusyTime: 2e6}
	oneReading := summarize(
		rec("ebpf", flow.EventState, 2, 0, nil), // poll mode: a state record has no tcp_info
		rec("ebpf", flow.EventClose, 2, 10*time.Millisecond, counters),
	)[0]
	if oneReading.Verdict != VerdictUnknown || oneReading.Limits != nil {
		t.Errorf("flow with one reading: verdict %s, limits %+v; want %s", oneReading.Verdict, oneReading.Limits, VerdictUnknown)
	}
}

// TestNetlinkClose checks that a netlink flow's rate and shares are taken
// over the dumps that read it: its close record, from the next dump,
// repeats their counters and adds no time in which nothing moved.
func TestNetlinkClose(t *testing.T) {
	var recs []*flow.Record
	for i := range uint64(4) { // 1 MB and 1 s busy per second
		ev := flow.EventSample
		if i == 0 {
			ev = flow.EventOpen
		}
		recs = append(recs, rec("netlink", ev, 1, time.Duration(i)*time.Second, map[flow.Field]uint64{
			flow.FieldBytesAcked: 1 + i*1e6, flow.FieldBytesReceived: 1, flow.FieldBusyTime: i * 1e6,
			flow.FieldRwndLimited: 0, flow.FieldSndbufLimited: 0, flow.FieldDeliveryRateAppLimited: 0,
		}))
	}
	last := *recs[len(recs)-1]
	last.Time, last.Event = last.Time.Add(time.Second), flow.EventClose
	s := summarize(append(recs, &last)...)[0]
	near(t, "duration", s.Duration, 4)
	near(t, "send rate", s.SendRate, 8e6)
	if s.Verdict != VerdictCongestion {
		t.Fatalf("verdict %s, want %s", s.Verdict, VerdictCongestion)
	}
	near(t, "congestion share", s.Limits.Congestion, 1)
}

func near(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-6 {
		t.Errorf("%s = %g, want %g", what, got, want)
	}
}

func TestSummary(t *testing.T) {
	info := func(acked, sent, retransBytes, retrans, rtt, minRTT uint64) map[flow.Field]uint64 {
		return map[flow.Field]uint64{
			flow.FieldBytesAcked: acked, flow.FieldBytesReceived: 1, flow.FieldBytesSent: sent,
			flow.FieldBytesRetrans: retransBytes, flow.FieldTotalRetrans: retrans, flow.FieldRTT: rtt,
			flow.FieldMinRTT: minRTT, flow.FieldBusyTime: 0,
		}
	}
	recs := []*flow.Record{
		// Before any RTT sample min_rtt reads ~0U and rtt 0: neither counts.
		rec("netlink", flow.EventSample, 9, 0, info(1, 1, 0, 0, 0, math.MaxUint32)),
	}
	for i := uint64(1); i <= 100; i++ {
		recs = append(recs, rec("netlink", flow.EventSample, 9, time.Duration(i)*20*time.Millisecond,
			info(1+i*25000, 1+i*25000+i*250, i*250, i/10, 1000*i, 900)))
		if i >= 3 { // the daemon found the cgroup's path late
			recs[len(recs)-1].Cgroup = "system.slice/iperf3.service"
		}
	}
	// A record of another backend's view is another flow.
	recs = append(recs, rec("ebpf", flow.EventOpen, 9, time.Second, nil))
	sums := summarize(recs...)
	if len(sums) != 2 {
		t.Fatalf("%d summaries, want 2 (one per backend)", len(sums))
	}
	s := sums[0]
	if s.Backend != "netlink" || s.Cookie != 9 || s.Records != 101 || s.Closed {
		t.Errorf("summary %+v", s)
	}
	if s.Local.String() != "10.0.0.1:40000" || s.Remote.String() != "10.0.0.2:5201" || s.CgroupID != 77 || s.CA != "cubic" ||
		s.Cgroup != "system.slice/iperf3.service" {
		t.Errorf("header %s %s %d %q %s", s.Local, s.Remote, s.CgroupID, s.Cgroup, s.CA)
	}
	near(t, "duration", s.Duration, 2)
	if s.BytesAcked != 2_500_000 || s.BytesReceived != 0 || s.Retransmits != 10 {
		t.Errorf("bytes %d/%d, retransmits %d", s.BytesAcked, s.BytesReceived, s.Retransmits)
	}
	near(t, "send rate", s.SendRate, 2_500_000*8/2.0)
	if s.RetransShare == nil {
		t.Fatal("no retransmitted share")
	}
	near(t, "retransmitted share", *s.RetransShare, 25000.0/(2_500_000+25000))
	near(t, "min rtt", s.RTTMin, 900)
	// The median of 1000..100000 µs by nearest rank is 50000, the 95th
	// percentile 95000; the sketch reads them within 1%.
	for _, q := range []struct {
		what      string
		got, want float64
	}{{"median", s.RTTMedian, 50000}, {"p95", s.RTTP95, 95000}} {
		if math.Abs(q.got-q.want) > 0.01*q.want {
			t.Errorf("%s rtt %g, want %g within 1%%", q.what, q.got, q.want)
		}
	}
}

func TestPeerVerdict(t *testing.T) {
	sender := func(at time.Duration, k uint64) *flow.Record {
		return rec("ebpf", flow.EventSample, 1, at, map[flow.Field]uint64{
			flow.FieldBytesAcked: 1 + k*1e6, flow.FieldBusyTime: k * 1e6, flow.FieldRwndLimited: k * 9e5})
	}
	receiver := func(at time.Duration, k uint64) *flow.Record {
		r := rec("ebpf", flow.EventSample, 2, at, map[flow.Field]uint64{flow.FieldBytesReceived: 1 + k*1e6})
		r.LocalAddr, r.RemoteAddr, r.LocalPort, r.RemotePort = r.RemoteAddr, r.LocalAddr, r.RemotePort, r.LocalPort
		return r
	}
	sums := summarize(sender(0, 0), sender(time.Second, 1), receiver(0, 0), receiver(time.Second, 1))
	var got *Summary
	for i := range sums {
		if sums[i].Cookie == 2 {
			got = &sums[i]
		}
	}
	if got.Verdict != VerdictReceiver || got.PeerVerdict != VerdictReceiveWindow {
		t.Errorf("receiver: verdict %s, peer %s; want receiver, receive_window", got.Verdict, got.PeerVerdict)
	}
	if s := got.LimitedBy(); s != "receiver (peer: receive window)" {
		t.Errorf("LimitedBy %q", s)
	}

	// Flows read only from partial samples have no 4-tuple: none is the
	// other's peer.
	headerless := func(r *flow.Record) *flow.Record {
		r.Family, r.LocalAddr, r.RemoteAddr, r.LocalPort, r.RemotePort = 0, netip.Addr{}, netip.Addr{}, 0, 0
		return r
	}
	sums = summarize(headerless(sender(0, 0)), headerless(sender(time.Second, 1)),
		headerless(receiver(0, 0)), headerless(receiver(time.Second, 1)))
	for _, s := range sums {
		if s.PeerVerdict != "" {
			t.Errorf("flow %d of partial samples: peer verdict %s", s.Cookie, s.PeerVerdict)
		}
	}
}

func TestSketch(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, dist := range []struct {
		name string
		gen  func() float64
	}{
		{"uniform µs", func() float64 { return 50 + rng.Float64()*100 }},
		{"lognormal ms", func() float64 { return math.Exp(9 + rng.NormFloat64()) }},
		{"one value", func() float64 { return 4242 }},
	} {
		var s sketch
		var all []float64
		for range 5000 {
			v := math.Round(dist.gen())
			s.add(v)
			all = append(all, v)
		}
		slices.Sort(all)
		for _, q := range []float64{0.01, 0.5, 0.95, 1} {
			want := all[int(math.Ceil(q*float64(len(all))))-1]
			got, ok := s.quantile(q)
			if !ok || math.Abs(got-want) > 0.0101*want {
				t.Errorf("%s: q%g = %g, want %g within 1%%", dist.name, q, got, want)
			}
		}
		if len(s.idx) > 400 {
			t.Errorf("%s: %d buckets for one flow", dist.name, len(s.idx))
		}
	}
	var empty sketch
	if _, ok := empty.quantile(0.5); ok {
		t.Error("quantile of nothing")
	}
}

func TestSortBy(t *testing.T) {
	sums := []Summary{
		{Cookie: 3, Start: t0, BytesAcked: 10, RTTMedian: 5, Verdict: VerdictCongestion},
		{Cookie: 1, Start: t0.Add(time.Second), BytesAcked: 30, RTTMedian: 1, Verdict: VerdictApplication},
		{Cookie: 2, Start: t0.Add(2 * time.Second), BytesAcked: 20, RTTMedian: 9, Verdict: VerdictApplication},
	}
	for key, want := range map[string][]uint64{
		SortStart: {3, 1, 2}, SortBytes: {1, 2, 3}, SortRTT: {2, 3, 1}, SortCookie: {1, 2, 3}, SortVerdict: {1, 2, 3},
	} {
		if err := SortBy(sums, key); err != nil {
			t.Fatal(err)
		}
		var got []uint64
		for _, s := range sums {
			got = append(got, s.Cookie)
		}
		if !slices.Equal(got, want) {
			t.Errorf("sorted by %s: %v, want %v", key, got, want)
		}
	}
	if err := SortBy(sums, "size"); err == nil || !strings.Contains(err.Error(), `"size"`) || !strings.Contains(err.Error(), "bytes") {
		t.Errorf("unknown order: %v", err)
	}
}

func TestFormat(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{Bytes(999), "999 B"}, {Bytes(1000), "1.00 kB"}, {Bytes(4_220_000_000), "4.22 GB"}, {Bytes(123_456), "123 kB"},
		{BitRate(0), "0"}, {BitRate(94.2e6), "94.2 Mbit/s"}, {BitRate(999.7e6), "1.00 Gbit/s"},
		{Seconds(2.001), "2.00s"}, {Seconds(75.4), "1m15s"}, {Seconds(0.00172), "1.72ms"}, {Seconds(0.1954), "195ms"},
		{Seconds(0.9996), "1.00s"}, {Seconds(0), "0.00s"},
		{RTTs(11, 35.7, 37.1), "11.0/35.7/37.1 µs"}, {RTTs(900, 50000, 95000), "0.90/50.0/95.0 ms"}, {RTTs(0, 0, 0), "-"},
		{Percent(0.871), "87%"}, {Percent(0.0031), "0.31%"}, {Percent(0.05), "5.0%"}, {Percent(0), "0%"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	s := Summary{Verdict: VerdictCongestion, Limits: &Limits{Congestion: 0.46, Application: 0.40, ReceiveWindow: 0.14}}
	if got := s.LimitedBy(); got != "congestion 46%, application 40%" {
		t.Errorf("LimitedBy %q", got)
	}
	if row := (&Summary{Start: t0}).Row(true); len(row) != len(Columns) {
		t.Errorf("a row has %d cells for %d columns", len(row), len(Columns))
	}
}

func TestSummaryOfPartialSamples(t *testing.T) {
	// Input cut after the open records: flow 1 is only partial samples,
	// which do not name its 4-tuple or cgroup; flow 2 ends with a complete
	// close record.
	lines := bytes.SplitAfter(encode(t, testRecords(), true), []byte("\n"))
	var z Summarizer
	if _, err := Each([]Source{Stdin(bytes.NewReader(bytes.Join(lines[2:], nil)))}, nil, func(r *flow.Record) error {
		z.Add(r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sums := z.Summaries()
	if err := SortBy(sums, SortCookie); err != nil || len(sums) != 2 {
		t.Fatalf("%d summaries, %v", len(sums), err)
	}
	row := sums[0].Row(true)
	if local, remote, cg := row[2], row[3], row[4]; local != "-" || remote != "-" || cg != "-" {
		t.Errorf("flow of partial samples: LOCAL %q, REMOTE %q, CGROUP %q; want -", local, remote, cg)
	}
	row = sums[1].Row(true)
	if local, remote, cg := row[2], row[3], row[4]; local != "10.0.0.1:40002" || remote != "10.0.0.2:5201" || cg != "flowd-test.slice/web.service/workers" {
		t.Errorf("flow with a complete close record: LOCAL %q, REMOTE %q, CGROUP %q", local, remote, cg)
	}
	b, err := json.Marshal(&sums[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"local"`, `"remote"`, `"cgroup_id"`, `"cgroup"`} {
		if bytes.Contains(b, []byte(key)) {
			t.Errorf("JSON of a flow of partial samples has %s: %s", key, b)
		}
	}
}
