package netlink

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/flow"
)

// sock is a socket as one dump reports it.
type sock struct {
	cookie   uint64
	family   uint8
	state    flow.State
	ca       string
	acked    uint64 // tcpi_bytes_acked
	cgroupID uint64
	netns    netnsID
	failed   bool // its connect() failed: tcpi_delivered is 0
}

func (s sock) msg() *diagMsg {
	info := make([]byte, sizeofTCPInfo)
	info[0] = byte(s.state)
	binary.NativeEndian.PutUint64(info[120:], s.acked)
	if s.state != flow.StateSynSent && s.state != flow.StateSynRecv && !s.failed {
		binary.NativeEndian.PutUint32(info[192:], 1) // tcpi_delivered: the handshake completed
	}
	m := &diagMsg{
		family: s.family, state: uint8(s.state), sport: 1000 + uint16(s.cookie), dport: 80,
		cookie: s.cookie, info: info, cong: []byte(s.ca), cgroupID: s.cgroupID, hasCgroupID: true,
	}
	if s.family == unix.AF_INET {
		copy(m.src[:], []byte{127, 0, 0, 1})
		copy(m.dst[:], []byte{127, 0, 0, 2})
	} else {
		m.src = netip.IPv6Loopback().As16()
		m.dst = netip.MustParseAddr("::ffff:127.0.0.2").As16()
	}
	return m
}

// runDump feeds one dump to t and returns the records it produced.
func runDump(t *testing.T, tr *tracker, now time.Time, socks ...sock) []flow.Record {
	t.Helper()
	var out []flow.Record
	tr.begin(now)
	for _, s := range socks {
		if r := tr.observe(s.msg(), s.netns); r != nil {
			out = append(out, *r)
		}
	}
	if err := tr.sweep(flow.SinkFunc(func(r *flow.Record) error {
		out = append(out, *r)
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	return out
}

type wantRec struct {
	ev       flow.Event
	cookie   uint64
	state    flow.State
	oldState flow.State
	acked    uint64
}

func checkRecs(t *testing.T, dump int, now time.Time, got []flow.Record, want ...wantRec) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("dump %d: %d records, want %d: %+v", dump, len(got), len(want), got)
	}
	for i, w := range want {
		r := got[i]
		acked, _ := r.Info.Get(flow.FieldBytesAcked)
		if r.Event != w.ev || r.Cookie != w.cookie || r.State != w.state || r.OldState != w.oldState || acked != w.acked {
			t.Errorf("dump %d record %d: %s cookie %d state %s old %s acked %d; want %s %d %s %s %d",
				dump, i, r.Event, r.Cookie, r.State, r.OldState, acked, w.ev, w.cookie, w.state, w.oldState, w.acked)
		}
		if !r.Time.Equal(now) || r.Backend != "netlink" {
			t.Errorf("dump %d record %d: time %v backend %q", dump, i, r.Time, r.Backend)
		}
	}
}

func TestTrackerEvents(t *testing.T) {
	const est, fw1, fw2 = flow.StateEstablished, flow.StateFinWait1, flow.StateFinWait2
	tr := newTracker()
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }

	a := sock{cookie: 1, family: unix.AF_INET, state: est, ca: "cubic", acked: 10, cgroupID: 5}
	b := sock{cookie: 2, family: unix.AF_INET6, state: est, ca: "bbr", acked: 20, cgroupID: 6}

	// The first dump opens what it finds, with no sample.
	got := runDump(t, tr, at(1), a)
	checkRecs(t, 1, at(1), got, wantRec{flow.EventOpen, 1, est, 0, 10})
	r := got[0]
	if r.Family != 4 || r.LocalAddr != netip.MustParseAddr("127.0.0.1") || r.RemoteAddr != netip.MustParseAddr("127.0.0.2") ||
		r.LocalPort != 1001 || r.RemotePort != 80 || r.CgroupID != 5 || r.CA != "cubic" {
		t.Errorf("open record identity: %+v", r)
	}
	if !r.Existing {
		t.Error("open record of the first dump: not existing, want existing (the flow began before flowd)")
	}

	a.acked = 11
	got = runDump(t, tr, at(2), a, b)
	checkRecs(t, 2, at(2), got,
		wantRec{flow.EventSample, 1, est, 0, 11},
		wantRec{flow.EventOpen, 2, est, 0, 20})
	r = got[1]
	if r.Family != 6 || r.RemoteAddr != netip.MustParseAddr("::ffff:127.0.0.2") || r.CA != "bbr" {
		t.Errorf("ipv6 socket with a v4-mapped peer: family %d remote %v ca %q", r.Family, r.RemoteAddr, r.CA)
	}
	if got[0].Existing || r.Existing {
		t.Errorf("second dump: sample existing %t, open existing %t; want neither (flowd saw the flow open)", got[0].Existing, r.Existing)
	}
	if tr.len() != 2 {
		t.Errorf("tracking %d flows, want 2", tr.len())
	}

	// A state change gives a state record instead of the sample; b is gone.
	a.state, a.acked = fw1, 12
	got = runDump(t, tr, at(3), a)
	checkRecs(t, 3, at(3), got,
		wantRec{flow.EventState, 1, fw1, est, 12},
		wantRec{flow.EventClose, 2, est, 0, 20}) // b's last seen state and counters
	if got[1].CA != "bbr" || got[1].Family != 6 || got[1].CgroupID != 6 {
		t.Errorf("close record lost the flow's identity: %+v", got[1])
	}

	// A socket listed twice by one dump gets one record.
	a.state = fw2
	got = runDump(t, tr, at(4), a, a)
	checkRecs(t, 4, at(4), got, wantRec{flow.EventState, 1, fw2, fw1, 12})

	got = runDump(t, tr, at(5), a)
	checkRecs(t, 5, at(5), got, wantRec{flow.EventSample, 1, fw2, 0, 12})

	got = runDump(t, tr, at(6))
	checkRecs(t, 6, at(6), got, wantRec{flow.EventClose, 1, fw2, 0, 12})
	if tr.len() != 0 {
		t.Errorf("tracking %d flows after every close, want 0", tr.len())
	}

	// A cookie seen again after its close is a new flow.
	got = runDump(t, tr, at(7), a)
	checkRecs(t, 7, at(7), got, wantRec{flow.EventOpen, 1, fw2, 0, 12})
}

// TestTrackerOpensOnceEstablished checks that a flow is reported from the
// first dump that sees it established, in the state it is in then.
func TestTrackerOpensOnceEstablished(t *testing.T) {
	const (
		synSent, synRecv, est = flow.StateSynSent, flow.StateSynRecv, flow.StateEstablished
		fw1, closeWait, cls   = flow.StateFinWait1, flow.StateCloseWait, flow.StateClose
	)
	for _, tc := range []struct {
		name   string
		states []flow.State // one dump each; 0: not in the dump
		failed bool         // a connect() that failed
		want   []wantRec    // every record, in order (only ev, state and oldState are compared)
		flows  []int        // Flows after each dump: flows waiting for their handshake do not count
	}{
		{"client caught in SYN_SENT", []flow.State{synSent, synSent, est, est}, false,
			[]wantRec{{ev: flow.EventOpen, state: est}, {ev: flow.EventSample, state: est}}, []int{0, 0, 1, 1}},
		{"server caught in SYN_RECV", []flow.State{synRecv, est}, false,
			[]wantRec{{ev: flow.EventOpen, state: est}}, []int{0, 1}},
		{"established and closing between two dumps", []flow.State{synSent, fw1, 0}, false,
			[]wantRec{{ev: flow.EventOpen, state: fw1}, {ev: flow.EventClose, state: fw1}}, []int{0, 1, 0}},
		{"never established", []flow.State{synSent, synSent, 0}, false, nil, []int{0, 0, 0}},
		{"connect failed", []flow.State{synSent, cls, cls, 0}, true, nil, []int{0, 0, 0, 0}},
		{"first seen closing: found running", []flow.State{closeWait, cls, 0}, false,
			[]wantRec{{ev: flow.EventOpen, state: closeWait}, {ev: flow.EventState, state: cls, oldState: closeWait},
				{ev: flow.EventClose, state: cls}}, []int{1, 1, 0}},
		{"first seen closed after a handshake", []flow.State{cls, 0}, false,
			[]wantRec{{ev: flow.EventOpen, state: cls}, {ev: flow.EventClose, state: cls}}, []int{1, 0}},
		{"no state record without a change", []flow.State{est, fw1, fw1, fw1}, false,
			[]wantRec{{ev: flow.EventOpen, state: est}, {ev: flow.EventState, state: fw1, oldState: est},
				{ev: flow.EventSample, state: fw1}, {ev: flow.EventSample, state: fw1}}, []int{1, 1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker()
			var got []flow.Record
			for i, st := range tc.states {
				var socks []sock
				if st != 0 {
					socks = append(socks, sock{cookie: 1, family: unix.AF_INET, state: st, failed: tc.failed})
				}
				got = append(got, runDump(t, tr, time.Unix(int64(i), 0), socks...)...)
				if tr.len() != tc.flows[i] {
					t.Errorf("dump %d: Flows %d, want %d", i, tr.len(), tc.flows[i])
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("%d records %+v, want %d", len(got), got, len(tc.want))
			}
			for i, w := range tc.want {
				if r := got[i]; r.Event != w.ev || r.State != w.state || r.OldState != w.oldState || r.Cookie != 1 {
					t.Errorf("record %d: %s cookie %d %s (old %s), want %s %s (old %s)",
						i, r.Event, r.Cookie, r.State, r.OldState, w.ev, w.state, w.oldState)
				}
			}
		})
	}
}

// TestTrackerKeep checks that the flows of a namespace whose dump failed
// are neither sampled nor closed, while those of the others go on.
func TestTrackerKeep(t *testing.T) {
	est := flow.StateEstablished
	a := sock{cookie: 1, family: unix.AF_INET, state: est, netns: netnsID{1, 10}}
	b := sock{cookie: 2, family: unix.AF_INET, state: est, netns: netnsID{1, 11}}
	tr := newTracker()
	t0 := time.Unix(0, 0)
	checkRecs(t, 1, t0, runDump(t, tr, t0, a, b),
		wantRec{ev: flow.EventOpen, cookie: 1, state: est}, wantRec{ev: flow.EventOpen, cookie: 2, state: est})
	// b's namespace failed to dump, and a's no longer lists a.
	tr.begin(t0)
	tr.keep(b.netns)
	var got []flow.Record
	if err := tr.sweep(flow.SinkFunc(func(r *flow.Record) error { got = append(got, *r); return nil })); err != nil {
		t.Fatal(err)
	}
	checkRecs(t, 2, t0, got, wantRec{ev: flow.EventClose, cookie: 1, state: est})
	checkRecs(t, 3, t0, runDump(t, tr, t0, b), wantRec{ev: flow.EventSample, cookie: 2, state: est})
}

func TestTrackerCANames(t *testing.T) {
	tr := newTracker()
	first := tr.caName([]byte("cubic"), "")
	again := tr.caName([]byte("cubic"), "bbr")
	if first != "cubic" || again != "cubic" || unsafe.StringData(first) != unsafe.StringData(again) {
		t.Errorf("names %q %q are not shared", first, again)
	}
	if got := tr.caName(nil, "cubic"); got != "" {
		t.Errorf("missing name gave %q", got)
	}
	for i := range 2 * maxCANames {
		tr.caName([]byte{'a' + byte(i)}, "")
	}
	if len(tr.caNames) > maxCANames {
		t.Errorf("kept %d names, at most %d", len(tr.caNames), maxCANames)
	}
}

// TestSteadyStateAllocs checks that a tracked socket costs no allocation
// per dump: parsing, scope, filter, tcp_info decoding and the record.
func TestSteadyStateAllocs(t *testing.T) {
	msg := newMsg(unix.AF_INET, 1, netip.MustParseAddrPort("127.0.0.1:5201"), netip.MustParseAddrPort("127.0.0.1:40000"), 77).
		attr(inetDiagInfo, make([]byte, sizeofTCPInfo), false).
		attr(inetDiagCong, []byte("cubic\x00"), false).
		attr(inetDiagCgroupID, u64(9), false).b
	p := &poller{
		t:      newTracker(),
		scope:  newScope("/nonexistent", true),
		filter: backends.Filter{LocalPorts: []uint16{5201}, RemoteCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
	}
	var n int
	sink := flow.SinkFunc(func(*flow.Record) error { n++; return nil })
	step := func() {
		p.t.begin(time.Time{})
		if err := p.process(msg, netnsID{}, sink); err != nil {
			t.Fatal(err)
		}
		if err := p.t.sweep(sink); err != nil {
			t.Fatal(err)
		}
	}
	step() // the open record allocates the flow
	if allocs := testing.AllocsPerRun(100, step); allocs != 0 {
		t.Errorf("%v allocations per dump of a tracked socket, want 0", allocs)
	}
	if n != 102 { // step, AllocsPerRun's warm-up run, 100 runs
		t.Errorf("%d records, want 102", n)
	}
}
