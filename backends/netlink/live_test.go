package netlink

// Privileged tests: real loopback TCP connections in a temporary cgroup,
// observed through real inet_diag dumps and checked against what the
// sockets' owner reads with getsockopt.

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

const waitTimeout = 5 * time.Second

// sockCongestion reads getsockopt(TCP_CONGESTION) as the socket's owner.
func sockCongestion(t *testing.T, c net.Conn) string {
	t.Helper()
	var s string
	var err error
	testutil.Control(t, c, func(fd int) { s, err = unix.GetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION) })
	if err != nil {
		t.Fatalf("getsockopt TCP_CONGESTION: %v", err)
	}
	return s
}

// end is what the records of one socket of a test connection must say.
type end struct {
	cookie        uint64
	local, remote netip.AddrPort
}

// pair is a loopback connection made with testutil (Client and Server, both
// cubic), with what the records of its client and server must say.
type pair struct {
	testutil.Pair
	client, server end
	port           uint16 // the listener's
}

// dialPair listens on addr ("127.0.0.1:0" or "[::1]:0") in cgroup cg ("" =
// where the test process is), connects to it and accepts. Everything is
// closed when the test ends.
func dialPair(tb testing.TB, cg, network, addr string) *pair {
	tb.Helper()
	ln := testutil.Listen(tb, cg, network, addr)
	p := testutil.Dial(tb, cg, ln)
	mkEnd := func(c net.Conn) end {
		l, r := c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
		return end{
			cookie: testutil.Cookie(tb, c),
			local:  netip.AddrPortFrom(l.Addr().Unmap(), l.Port()),
			remote: netip.AddrPortFrom(r.Addr().Unmap(), r.Port()),
		}
	}
	return &pair{Pair: p, client: mkEnd(p.Client), server: mkEnd(p.Server), port: testutil.Port(ln.Addr())}
}

// quietInfo reads getsockopt(TCP_INFO) without the members that change
// with time alone.
func quietInfo(t *testing.T, c net.Conn) unix.TCPInfo {
	t.Helper()
	ti := *testutil.TCPInfo(t, c)
	ti.Last_data_sent, ti.Last_ack_sent, ti.Last_data_recv, ti.Last_ack_recv = 0, 0, 0, 0
	return ti
}

// compareInfo checks every member a record shares with unix.TCPInfo except
// the "ms ago" ones, which change with time alone. n is the length of the
// kernel's tcp_info (testutil.TCPInfoLen): members past it are newer than
// the kernel and must be absent.
func compareInfo(t *testing.T, who string, got flow.TCPInfo, want unix.TCPInfo, n int) {
	t.Helper()
	v := reflect.ValueOf(want)
	for f, m := range unixLayout(t) {
		switch f {
		case flow.FieldLastDataSent, flow.FieldLastDataRecv, flow.FieldLastAckRecv:
			continue
		}
		if !testutil.InTCPInfo(f, n) {
			if got.Has(f) {
				t.Errorf("%s: %s present, but the kernel's tcp_info is %d bytes", who, f, n)
			}
			continue
		}
		g, ok := got.Get(f)
		if w := v.Field(m.index).Uint(); !ok || g != w {
			t.Errorf("%s: %s = %d (present %v), getsockopt(TCP_INFO) says %d", who, f, g, ok, w)
		}
	}
}

func TestLiveFlow(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		network, addr string
		family        uint8
	}{
		{"tcp4", "127.0.0.1:0", 4},
		{"tcp6", "[::1]:0", 6},
	} {
		t.Run(tc.network, func(t *testing.T) { testLiveFlow(t, tc.network, tc.addr, tc.family) })
	}
}

func testLiveFlow(t *testing.T, network, addr string, family uint8) {
	cg := testutil.TempCgroup(t)
	cgID, err := cgroup.ID(cg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Cgroup: cg, Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	col, stop := testutil.Start(t, b)

	p := dialPair(t, cg, network, addr)
	sender, receiver := p.client, p.server

	// Send a few MB and wait until the sender has nothing in flight (the
	// receiver read it all, so nothing is left unsent either).
	const total = 4 << 20
	p.Send(t, total)
	p.Quiesce(t)

	// Sandwich a dump between two getsockopt reads: when the reads agree,
	// nothing happened on the socket in between (not one segment: segs_in
	// and segs_out are equal), so the dump must agree with them exactly.
	// That holds for tcpi_rtt too, so it is compared with no tolerance: the
	// kernel only updates srtt when an ACK arrives, and none did.
	var sRec, rRec flow.Record
	var sInfo, rInfo unix.TCPInfo
	for attempt := 0; ; attempt++ {
		if attempt == 20 {
			t.Fatal("the connection never went quiet for a whole dump")
		}
		sBefore, rBefore := quietInfo(t, p.Client), quietInfo(t, p.Server)
		since := time.Now()
		after := func(cookie uint64) (flow.Record, bool) {
			for _, r := range col.Records(cookie) {
				if r.Time.After(since) {
					return r, true
				}
			}
			return flow.Record{}, false
		}
		var ok1, ok2 bool
		testutil.WaitFor(t, "a dump after the getsockopt reads", waitTimeout, func() bool {
			sRec, ok1 = after(sender.cookie)
			rRec, ok2 = after(receiver.cookie)
			return ok1 && ok2
		})
		sInfo, rInfo = quietInfo(t, p.Client), quietInfo(t, p.Server)
		if sInfo == sBefore && rInfo == rBefore {
			break
		}
	}
	n := testutil.TCPInfoLen(t, p.Client)
	compareInfo(t, "sender", sRec.Info, sInfo, n)
	compareInfo(t, "receiver", rRec.Info, rInfo, n)
	if got, _ := rRec.Info.Get(flow.FieldBytesReceived); got < total {
		t.Errorf("receiver bytes_received = %d, sent %d", got, total)
	}
	if got, _ := sRec.Info.Get(flow.FieldBytesAcked); got < total {
		t.Errorf("sender bytes_acked = %d, sent %d", got, total)
	}
	if sRec.CA != "cubic" {
		t.Errorf("sender CA = %q, want cubic (set with TCP_CONGESTION)", sRec.CA)
	}
	if want := sockCongestion(t, p.Server); rRec.CA != want || want == "" {
		t.Errorf("receiver CA = %q, getsockopt says %q", rRec.CA, want)
	}
	testutil.WaitFor(t, "Flows() to count the two sockets", waitTimeout, func() bool { return b.Flows() == 2 })

	// Half-close: the client goes to FIN_WAIT2 and the server to CLOSE_WAIT,
	// where they stay while both are open.
	if err := p.Client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	lastState := func(cookie uint64, want flow.State) func() bool {
		return func() bool {
			recs := col.Records(cookie)
			return len(recs) > 0 && recs[len(recs)-1].State == want
		}
	}
	testutil.WaitFor(t, "the client in FIN_WAIT2", waitTimeout, lastState(sender.cookie, flow.StateFinWait2))
	testutil.WaitFor(t, "the server in CLOSE_WAIT", waitTimeout, lastState(receiver.cookie, flow.StateCloseWait))

	p.Server.Close()
	p.Client.Close()
	closed := func(cookie uint64) func() bool {
		return func() bool {
			recs := col.Records(cookie)
			return len(recs) > 0 && recs[len(recs)-1].Event == flow.EventClose
		}
	}
	testutil.WaitFor(t, "the client's close record", waitTimeout, closed(sender.cookie))
	testutil.WaitFor(t, "the server's close record", waitTimeout, closed(receiver.cookie))
	testutil.WaitFor(t, "no flows left", waitTimeout, func() bool { return b.Flows() == 0 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	// The server may be caught in LAST_ACK by a dump during the close.
	checkFlowRecords(t, "client", col.Records(sender.cookie), sender, family, cgID, "cubic", sInfo,
		flow.StateFinWait2)
	checkFlowRecords(t, "server", col.Records(receiver.cookie), receiver, family, cgID, rRec.CA, rInfo,
		flow.StateCloseWait, flow.StateLastAck)
	for _, r := range col.Records(0) {
		if r.Cookie != sender.cookie && r.Cookie != receiver.cookie {
			t.Errorf("record of a socket that is not the test's: %+v", r)
		}
	}
}

// checkFlowRecords checks the whole life of one flow as recorded: one open
// in ESTABLISHED first, then samples and state changes, one record per
// dump, then one close carrying the last seen state (one of lastStates) and
// counters (no lower than quietInfo's).
func checkFlowRecords(t *testing.T, who string, recs []flow.Record, e end, family uint8, cgID uint64, ca string,
	quietInfo unix.TCPInfo, lastStates ...flow.State) {
	t.Helper()
	if len(recs) < 3 {
		t.Fatalf("%s: only %d records", who, len(recs))
	}
	for i, r := range recs {
		if r.Backend != "netlink" || r.Family != family || r.CgroupID != cgID || r.Cookie != e.cookie ||
			r.LocalAddr != e.local.Addr() || r.LocalPort != e.local.Port() ||
			r.RemoteAddr != e.remote.Addr() || r.RemotePort != e.remote.Port() || r.CA != ca {
			t.Errorf("%s record %d: %s %s:%d -> %s:%d family %d cgroup %d ca %q; want %s -> %s family %d cgroup %d ca %q",
				who, i, r.Event, r.LocalAddr, r.LocalPort, r.RemoteAddr, r.RemotePort, r.Family, r.CgroupID, r.CA,
				e.local, e.remote, family, cgID, ca)
		}
		if r.Time.Location() != time.UTC {
			t.Errorf("%s record %d: time %v is not UTC", who, i, r.Time)
		}
		if i > 0 && !r.Time.After(recs[i-1].Time) {
			t.Errorf("%s records %d and %d have the same dump time: one record per flow per dump", who, i-1, i)
		}
		want := flow.EventSample
		switch {
		case i == 0:
			want = flow.EventOpen
		case i == len(recs)-1:
			want = flow.EventClose
		case r.State != recs[i-1].State:
			want = flow.EventState
		}
		if r.Event != want {
			t.Errorf("%s record %d is %s, want %s", who, i, r.Event, want)
		}
		if r.Event == flow.EventState && (r.OldState != recs[i-1].State || r.OldState == r.State) {
			t.Errorf("%s record %d: state %s -> %s, but the previous record was in %s", who, i, r.OldState, r.State, recs[i-1].State)
		}
		if r.Event != flow.EventState && r.OldState != 0 {
			t.Errorf("%s record %d (%s) has OldState %s", who, i, r.Event, r.OldState)
		}
		if st, _ := r.Info.Get(flow.FieldState); i < len(recs)-1 && flow.State(st) != r.State {
			t.Errorf("%s record %d: tcpi_state %d, idiag_state %s", who, i, st, r.State)
		}
	}
	// A dump during connect() may catch the client before the handshake
	// completes: it is reported once established all the same.
	if s := recs[0].State; s != flow.StateEstablished {
		t.Errorf("%s opened in %s, want ESTABLISHED", who, s)
	}
	i := slices.IndexFunc(recs, func(r flow.Record) bool {
		return r.Event == flow.EventState && r.OldState == flow.StateEstablished
	})
	if i < 0 {
		t.Errorf("%s: no state record leaving ESTABLISHED", who)
	}
	last, cl := recs[len(recs)-2], recs[len(recs)-1]
	if !slices.Contains(lastStates, last.State) || cl.State != last.State {
		t.Errorf("%s: last states %s, %s; want both in %v", who, last.State, cl.State, lastStates)
	}
	if cl.Info != last.Info {
		t.Errorf("%s: the close record does not carry the last seen counters", who)
	}
	for _, f := range []flow.Field{flow.FieldBytesAcked, flow.FieldBytesReceived, flow.FieldSegsOut, flow.FieldSegsIn} {
		got, _ := cl.Info.Get(f)
		want := reflect.ValueOf(quietInfo).FieldByNameFunc(func(n string) bool { return strings.ToLower(n) == f.Name() }).Uint()
		if got < want {
			t.Errorf("%s: close record %s = %d, below the %d read while the flow was quiet", who, f, got, want)
		}
	}
}

// TestLiveRunCancel checks that cancelling Run writes no close records for
// the flows still alive, and that Close stops a Run.
func TestLiveRunCancel(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	b, err := New(Config{Cgroup: cg, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	col, stop := testutil.Start(t, b)
	p := dialPair(t, cg, "tcp4", "127.0.0.1:0")
	testutil.WaitFor(t, "samples of the client", waitTimeout, func() bool { return len(col.Records(p.client.cookie)) >= 2 })
	testutil.WaitFor(t, "Flows() to count the two sockets", waitTimeout, func() bool { return b.Flows() == 2 })
	// Each poll's records are flushed with the poll.
	written := len(col.Records(0))
	testutil.WaitFor(t, "a flush after the records", waitTimeout, func() bool {
		_, flushed := col.Flushed()
		return flushed >= written
	})
	if err := stop(); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if n := b.Flows(); n != 0 {
		t.Errorf("Flows() = %d after Run returned, want 0", n)
	}
	n := len(col.Records(0))
	for _, r := range col.Records(0) {
		if r.Event == flow.EventClose {
			t.Errorf("close record on cancel: %+v", r)
		}
	}
	time.Sleep(60 * time.Millisecond)
	if m := len(col.Records(0)); m != n {
		t.Errorf("%d records written after Run returned", m-n)
	}

	// A second Run on the same backend starts over, and Close stops it.
	done := make(chan error, 1)
	go func() { done <- b.Run(context.Background(), col) }()
	testutil.WaitFor(t, "the second Run to reopen the flows", waitTimeout, func() bool {
		return len(col.Find(p.client.cookie, flow.EventOpen)) == 2
	})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, errClosed) {
			t.Errorf("Run stopped by Close = %v, want %v", err, errClosed)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Close did not stop Run")
	}
}

// newTestPoller returns the poller of a new backend with cfg, to be polled
// step by step; its sockets are closed when the test ends.
func newTestPoller(tb testing.TB, cfg Config) *poller {
	tb.Helper()
	b, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := b.newPoller()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.nets.close)
	return p
}

// pollN makes n synchronous dumps of b into s.
func pollN(t *testing.T, b *Backend, s flow.Sink, n int) {
	t.Helper()
	p, err := b.newPoller()
	if err != nil {
		t.Fatal(err)
	}
	defer p.nets.close()
	for range n {
		if err := p.poll(s); err != nil {
			t.Fatal(err)
		}
	}
}

// cookiesSeen returns the cookies of the records, checking that each
// flow was opened and sampled.
func cookiesSeen(t *testing.T, recs []flow.Record) map[uint64]bool {
	t.Helper()
	events := make(map[uint64][]flow.Event)
	for _, r := range recs {
		events[r.Cookie] = append(events[r.Cookie], r.Event)
		if r.State == flow.StateListen || r.State == flow.StateTimeWait || r.State == flow.StateNewSynRecv {
			t.Errorf("record of a socket in %s: %+v", r.State, r)
		}
	}
	seen := make(map[uint64]bool)
	for c, ev := range events {
		if !slices.Equal(ev, []flow.Event{flow.EventOpen, flow.EventSample}) {
			t.Errorf("cookie %d: events %v, want open then sample", c, ev)
		}
		seen[c] = true
	}
	return seen
}

// TestLiveScope checks that only sockets of the cgroup's subtree are
// reported, including those of a child cgroup made after the backend
// started, and that the cgroup2 root reports every socket.
func TestLiveScope(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	p := newTestPoller(t, Config{Cgroup: cg, Interval: time.Hour})
	col := &testutil.Collector{}
	if err := p.poll(col); err != nil { // walks the (empty) subtree
		t.Fatal(err)
	}

	inside := dialPair(t, cg, "tcp4", "127.0.0.1:0")
	outside := dialPair(t, "", "tcp4", "127.0.0.1:0")

	child := filepath.Join(cg, "child")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	childID, err := cgroup.ID(child)
	if err != nil {
		t.Fatal(err)
	}
	inChild := dialPair(t, child, "tcp6", "[::1]:0")

	for range 2 {
		if err := p.poll(col); err != nil {
			t.Fatal(err)
		}
	}
	recs := col.Records(0)
	seen := cookiesSeen(t, recs)
	want := map[uint64]bool{inside.client.cookie: true, inside.server.cookie: true,
		inChild.client.cookie: true, inChild.server.cookie: true}
	if !reflect.DeepEqual(seen, want) {
		t.Errorf("cookies reported %v, want %v (outside: %d, %d)", seen, want, outside.client.cookie, outside.server.cookie)
	}
	for _, r := range recs {
		if r.LocalPort == outside.port || r.RemotePort == outside.port {
			t.Errorf("record of the connection outside the cgroup: %+v", r)
		}
		if (r.Cookie == inChild.client.cookie || r.Cookie == inChild.server.cookie) && r.CgroupID != childID {
			t.Errorf("child cgroup socket with cgroup id %d, want %d", r.CgroupID, childID)
		}
	}
	if n := p.flows.Load(); n != 4 {
		t.Errorf("Flows() = %d, want 4", n)
	}
	// The kernel filtered the dump by cgroup: it returned the subtree's
	// four sockets, not the connection outside (nor the host's others).
	if p.userFilter {
		t.Error("the kernel rejected the inet_diag cgroup filter")
	}
	if n := len(p.nets.list[0].msgs); n != 4 {
		t.Errorf("the last dump returned %d sockets, want the subtree's 4", n)
	}

	// A tracked flow whose cgroup is removed (its sockets outlive it) stays
	// in the filter: no close record while the connection is open.
	if err := os.Remove(child); err != nil {
		t.Fatal(err)
	}
	before := len(col.Records(0))
	if err := p.poll(col); err != nil {
		t.Fatal(err)
	}
	for _, r := range col.Records(0)[before:] {
		if r.Event != flow.EventSample {
			t.Errorf("after the child cgroup was removed: %s record of cookie %d", r.Event, r.Cookie)
		}
	}
	if n := len(col.Records(0)) - before; n != 4 {
		t.Errorf("%d records after the child cgroup was removed, want 4 samples", n)
	}

	// The cgroup2 root takes in every socket, the outside ones too.
	root, err := New(Config{Cgroup: cgroupRoot(t), Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	all := &testutil.Collector{}
	pollN(t, root, all, 1)
	for _, c := range []uint64{outside.client.cookie, outside.server.cookie, inside.client.cookie, inChild.server.cookie} {
		if n := len(all.Records(c)); n != 1 {
			t.Errorf("root cgroup: %d records of cookie %d, want 1", n, c)
		}
	}
}

// TestLiveFilter checks that each kind of filter takes in and leaves out
// the right sockets, one backend per filter over the same connections.
func TestLiveFilter(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	a := dialPair(t, cg, "tcp4", "127.0.0.1:0")
	b := dialPair(t, cg, "tcp4", "127.0.0.1:0")
	c := dialPair(t, cg, "tcp6", "[::1]:0")
	names := map[uint64]string{
		a.client.cookie: "aC", a.server.cookie: "aS",
		b.client.cookie: "bC", b.server.cookie: "bS",
		c.client.cookie: "cC", c.server.cookie: "cS",
	}
	cidr := netip.MustParsePrefix
	for _, tc := range []struct {
		name   string
		filter backends.Filter
		want   []string
	}{
		{"none", backends.Filter{}, []string{"aC", "aS", "bC", "bS", "cC", "cS"}},
		{"local port", backends.Filter{LocalPorts: []uint16{a.port}}, []string{"aS"}},
		{"local ports v4 and v6", backends.Filter{LocalPorts: []uint16{a.port, c.port}}, []string{"aS", "cS"}},
		{"remote port", backends.Filter{RemotePorts: []uint16{b.port}}, []string{"bC"}},
		{"local or remote port", backends.Filter{LocalPorts: []uint16{a.port}, RemotePorts: []uint16{b.port}}, []string{"aS", "bC"}},
		{"client's ephemeral port", backends.Filter{LocalPorts: []uint16{c.client.local.Port()}}, []string{"cC"}},
		{"v4 cidr", backends.Filter{RemoteCIDRs: []netip.Prefix{cidr("127.0.0.1/32")}}, []string{"aC", "aS", "bC", "bS"}},
		{"v6 cidr", backends.Filter{RemoteCIDRs: []netip.Prefix{cidr("::1/128")}}, []string{"cC", "cS"}},
		{"no cidr matches", backends.Filter{RemoteCIDRs: []netip.Prefix{cidr("10.0.0.0/8"), cidr("2001:db8::/32")}}, nil},
		{"v4 cidr and local port", backends.Filter{LocalPorts: []uint16{a.port, c.port}, RemoteCIDRs: []netip.Prefix{cidr("127.0.0.0/8")}}, []string{"aS"}},
		{"v6 cidr and remote port", backends.Filter{RemotePorts: []uint16{a.port, c.port}, RemoteCIDRs: []netip.Prefix{cidr("::/0")}}, []string{"cC"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be, err := New(Config{Cgroup: cg, Interval: time.Hour, Filter: tc.filter})
			if err != nil {
				t.Fatal(err)
			}
			col := &testutil.Collector{}
			pollN(t, be, col, 2)
			var got []string
			for cookie := range cookiesSeen(t, col.Records(0)) {
				got = append(got, names[cookie])
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("reported %v, want %v", got, tc.want)
			}
			if be.Flows() != len(tc.want) {
				t.Errorf("Flows() = %d, want %d", be.Flows(), len(tc.want))
			}
		})
	}
}

// TestLiveOpenOnceEstablished checks that a client caught in SYN_SENT gets
// no record until its handshake completes, and then an open record that
// says ESTABLISHED, as its server's does.
func TestLiveOpenOnceEstablished(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)

	// A listener with a backlog of 0 holds one connection in its accept
	// queue. While that one is not accepted the kernel drops SYNs, so the
	// next client stays in SYN_SENT until it retransmits its SYN after the
	// initial RTO (1 s) and the queue has room again.
	var lfd, qfd, cfd int
	testutil.InCgroup(t, cg, func() {
		lfd, qfd, cfd = tcpSocket(t), tcpSocket(t), tcpSocket(t)
	})
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(qfd, sa); err != nil {
		t.Fatal(err)
	}
	queued, err := unix.GetsockoptUint64(qfd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(cfd, true); err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(cfd, sa); !errors.Is(err, unix.EINPROGRESS) {
		t.Fatalf("non-blocking connect = %v, want EINPROGRESS", err)
	}
	cookie, err := unix.GetsockoptUint64(cfd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		t.Fatal(err)
	}
	state := func() flow.State {
		ti, err := unix.GetsockoptTCPInfo(cfd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			t.Fatal(err)
		}
		return flow.State(ti.State)
	}

	p := newTestPoller(t, Config{Cgroup: cg, Interval: time.Hour})
	col := &testutil.Collector{}
	for range 2 {
		if s := state(); s != flow.StateSynSent {
			t.Fatalf("the client is in %s before the dump, want SYN_SENT", s)
		}
		if err := p.poll(col); err != nil {
			t.Fatal(err)
		}
	}
	if s := state(); s != flow.StateSynSent {
		t.Fatalf("the client is in %s after the dumps, want SYN_SENT", s)
	}
	if f, ok := p.t.flows[cookie]; !ok || f.opened {
		t.Fatalf("the dumps did not track the client as waiting for its handshake (tracked %v)", ok)
	}
	if recs := col.Records(cookie); len(recs) != 0 {
		t.Fatalf("records of a client in SYN_SENT: %+v", recs)
	}

	accepted, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC) // the queued one: room for the SYN
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(accepted) })
	testutil.WaitFor(t, "the client's handshake", 5*time.Second, func() bool { return state() == flow.StateEstablished })
	server, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(server) })
	serverCookie, err := unix.GetsockoptUint64(server, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := p.poll(col); err != nil {
			t.Fatal(err)
		}
	}
	for who, c := range map[string]uint64{"client": cookie, "server": serverCookie} {
		recs := col.Records(c)
		if len(recs) != 2 || recs[0].Event != flow.EventOpen || recs[1].Event != flow.EventSample {
			t.Fatalf("%s: records %+v, want open then sample", who, recs)
		}
		if st, _ := recs[0].Info.Get(flow.FieldState); recs[0].State != flow.StateEstablished ||
			flow.State(st) != flow.StateEstablished || recs[0].OldState != 0 {
			t.Errorf("%s: open record in %s (tcpi_state %d, old %s), want ESTABLISHED", who, recs[0].State, st, recs[0].OldState)
		}
	}
	// The client that was established at once was reported at once.
	if recs := col.Records(queued); len(recs) != 4 || recs[0].Event != flow.EventOpen {
		t.Errorf("the queued connection's client: %d records, want 4 from an open", len(recs))
	}
}

// tcpSocket makes an IPv4 TCP socket that is closed when the test ends.
func tcpSocket(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestLiveDumps: Dumps returns the duration of every round of dumps since
// the previous call, once, and no failure.
func TestLiveDumps(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	b, err := New(Config{Cgroup: cg, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, b)
	var got []time.Duration
	testutil.WaitFor(t, "three rounds of dumps", waitTimeout, func() bool {
		d := b.Dumps()
		if d.Failed != 0 {
			t.Fatalf("%d dumps failed", d.Failed)
		}
		got = append(got, d.Durations...)
		return len(got) >= 3
	})
	for _, d := range got {
		if d <= 0 || d > waitTimeout {
			t.Errorf("a round of dumps took %s", d)
		}
	}
	if again := b.Dumps().Durations; len(again) > 2 {
		t.Errorf("Dumps returned %d durations right after the previous call", len(again))
	}
}
