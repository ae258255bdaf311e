package ebpf

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

func addrPort(a net.Addr) netip.AddrPort { return a.(*net.TCPAddr).AddrPort() }

// tupleOf says whether record r has the addresses and ports of c, and
// what they are.
func tupleOf(r flow.Record, c net.Conn) (ok bool, got, want string) {
	local, remote := addrPort(c.LocalAddr()), addrPort(c.RemoteAddr())
	ok = r.LocalAddr.Unmap() == local.Addr().Unmap() && r.LocalPort == local.Port() &&
		r.RemoteAddr.Unmap() == remote.Addr().Unmap() && r.RemotePort == remote.Port()
	got = fmt.Sprintf("%s -> %s", netip.AddrPortFrom(r.LocalAddr, r.LocalPort), netip.AddrPortFrom(r.RemoteAddr, r.RemotePort))
	return ok, got, fmt.Sprintf("%s -> %s", local, remote)
}

// checkAgainstTCPInfo compares a record's counters with getsockopt(TCP_INFO)
// read by the socket's owner at the same quiescent moment; n is the length
// of the kernel's tcp_info: members past it (newer than the kernel's
// tcp_info, though tcp_sock may have them) have nothing to compare with.
func checkAgainstTCPInfo(t *testing.T, side string, r flow.Record, ti *unix.TCPInfo, n int) {
	t.Helper()
	want := map[flow.Field]uint64{
		flow.FieldRTT:           uint64(ti.Rtt),
		flow.FieldRTTVar:        uint64(ti.Rttvar),
		flow.FieldSndCwnd:       uint64(ti.Snd_cwnd),
		flow.FieldBytesAcked:    ti.Bytes_acked,
		flow.FieldBytesReceived: ti.Bytes_received,
		flow.FieldBytesSent:     ti.Bytes_sent,
		flow.FieldTotalRetrans:  uint64(ti.Total_retrans),
		flow.FieldDelivered:     uint64(ti.Delivered),
		flow.FieldSegsOut:       uint64(ti.Segs_out),
		flow.FieldDataSegsOut:   uint64(ti.Data_segs_out),
		flow.FieldDataSegsIn:    uint64(ti.Data_segs_in),
		flow.FieldSndMSS:        uint64(ti.Snd_mss),
		flow.FieldRcvMSS:        uint64(ti.Rcv_mss),
		flow.FieldAdvMSS:        uint64(ti.Advmss),
		flow.FieldPMTU:          uint64(ti.Pmtu),
		flow.FieldMinRTT:        uint64(ti.Min_rtt),
		flow.FieldRTO:           uint64(ti.Rto),
		flow.FieldATO:           uint64(ti.Ato),
		flow.FieldOptions:       uint64(ti.Options),
		flow.FieldSndSsthresh:   uint64(ti.Snd_ssthresh),
		flow.FieldRcvSpace:      uint64(ti.Rcv_space),
		flow.FieldSndWnd:        uint64(ti.Snd_wnd),
		flow.FieldRcvWnd:        uint64(ti.Rcv_wnd),
		flow.FieldPacingRate:    ti.Pacing_rate,
		flow.FieldDeliveryRate:  ti.Delivery_rate,
		flow.FieldNotsentBytes:  uint64(ti.Notsent_bytes),
		flow.FieldUnacked:       uint64(ti.Unacked),
		flow.FieldCAState:       uint64(ti.Ca_state),
		flow.FieldReordering:    uint64(ti.Reordering),
	}
	for f, w := range want {
		if !testutil.InTCPInfo(f, n) {
			continue
		}
		got, ok := r.Info.Get(f)
		if !ok {
			t.Errorf("%s: %s absent", side, f)
			continue
		}
		if got != w {
			t.Errorf("%s: %s = %d, TCP_INFO says %d", side, f, got, w)
		}
	}
	// Time-based members drift by the few ms between the two reads.
	for f, w := range map[flow.Field]uint64{
		flow.FieldBusyTime:     ti.Busy_time,
		flow.FieldLastDataSent: uint64(ti.Last_data_sent),
		flow.FieldLastAckRecv:  uint64(ti.Last_ack_recv),
	} {
		got, _ := r.Info.Get(f)
		if diff := math.Abs(float64(got) - float64(w)); diff > float64(w)*0.2+20000 {
			t.Errorf("%s: %s = %d, TCP_INFO says %d", side, f, got, w)
		}
	}
}

// TestTransfer moves real bytes over IPv4 and IPv6 loopback inside a
// temporary cgroup and checks the records against TCP_INFO and SO_COOKIE.
// It runs in transition mode, whose state records hold tcp_info: the one
// taken inside close() is compared with TCP_INFO.
func TestTransfer(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct{ name, network, addr string }{
		{"ipv4", "tcp4", "127.0.0.1:0"},
		{"ipv6", "tcp6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cg := testutil.TempCgroup(t)
			_, col := startBackend(t, Config{Cgroup: cg, Mode: ModeTransition, FlushInterval: 20 * time.Millisecond})
			ln := testutil.Listen(t, cg, tc.network, tc.addr)
			p := testutil.Dial(t, cg, ln)
			clientCookie, serverCookie := testutil.Cookie(t, p.Client), testutil.Cookie(t, p.Server)

			p.Send(t, 8<<20)
			p.Quiesce(t)

			// The client closes first: the ESTABLISHED -> FIN_WAIT1 record is
			// taken inside close(), when nothing changed since TCP_INFO.
			clientInfo := testutil.TCPInfo(t, p.Client)
			infoLen := testutil.TCPInfoLen(t, p.Client)
			p.Client.Close()
			testutil.ReadEOF(t, p.Server)
			serverInfo := testutil.TCPInfo(t, p.Server)
			p.Server.Close()

			testutil.WaitFor(t, "close records of both ends", 5*time.Second, func() bool {
				return len(col.Find(clientCookie, flow.EventClose)) == 1 &&
					len(col.Find(serverCookie, flow.EventClose)) == 1
			})

			family := uint8(4)
			if tc.network == "tcp6" {
				family = 6
			}
			for _, side := range []struct {
				name         string
				cookie       uint64
				conn         net.Conn
				closingState flow.State
				info         *unix.TCPInfo
			}{
				{"client", clientCookie, p.Client, flow.StateFinWait1, clientInfo},
				{"server", serverCookie, p.Server, flow.StateLastAck, serverInfo},
			} {
				recs := col.Records(side.cookie)
				if len(recs) == 0 {
					t.Fatalf("%s: no records for cookie %d", side.name, side.cookie)
				}
				for _, r := range recs {
					if ok, got, want := tupleOf(r, side.conn); r.Backend != "ebpf" || r.Family != family || !ok {
						t.Fatalf("%s: %s record of backend %s has family %d, tuple %s, want ebpf, %d, %s",
							side.name, r.Event, r.Backend, r.Family, got, family, want)
					}
					if r.CA != "cubic" {
						t.Errorf("%s: ca = %q, want cubic", side.name, r.CA)
					}
					if r.CgroupID == 0 {
						t.Errorf("%s: cgroup id missing", side.name)
					}
				}
				if recs[0].Event != flow.EventOpen {
					t.Errorf("%s: first record is %s, want open", side.name, recs[0].Event)
				}
				if last := recs[len(recs)-1]; last.Event != flow.EventClose || last.State != flow.StateClose {
					t.Errorf("%s: last record is %s/%s, want close/CLOSE", side.name, last.Event, last.State)
				}
				var closing *flow.Record
				for i := range recs {
					if recs[i].Event == flow.EventState && recs[i].State == side.closingState {
						closing = &recs[i]
					}
				}
				if closing == nil {
					t.Fatalf("%s: no state record for %s", side.name, side.closingState)
				}
				checkAgainstTCPInfo(t, side.name, *closing, side.info, infoLen)
			}
		})
	}
}

// TestRTTSamples checks the samples of a sender at ebpf.interval 0, one per
// RTT callback, and the records around them in poll mode: state records
// without tcp_info between an open and a close record with it.
func TestRTTSamples(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	_, col := startBackend(t, Config{Cgroup: cg, Mode: ModePoll, Interval: 0, FlushInterval: 20 * time.Millisecond})
	p := testutil.Dial(t, cg, testutil.Listen(t, cg, "tcp4", "127.0.0.1:0"))
	cookie := testutil.Cookie(t, p.Client)
	p.Send(t, 8<<20)
	p.Client.Close()
	testutil.ReadEOF(t, p.Server)
	p.Server.Close()
	testutil.WaitFor(t, "the close record", 5*time.Second, func() bool { return len(col.Find(cookie, flow.EventClose)) == 1 })

	if n := len(col.Find(cookie, flow.EventSample)); n < 5 {
		t.Errorf("sender produced %d samples at interval 0, want many", n)
	}
	// Counters grow monotonically through the samples.
	var last uint64
	for _, r := range col.Find(cookie, flow.EventSample) {
		v, _ := r.Info.Get(flow.FieldBytesAcked)
		if v < last {
			t.Errorf("bytes_acked went back from %d to %d", last, v)
		}
		last = v
	}
	if last < 8<<20 {
		t.Errorf("last sample's bytes_acked %d < bytes sent %d", last, 8<<20)
	}
	states := col.Find(cookie, flow.EventState)
	if len(states) < 2 {
		t.Fatalf("%d state records, want the close handshake's", len(states))
	}
	for _, r := range col.Records(cookie) {
		if empty := r.Info.Present.IsEmpty(); empty != (r.Event == flow.EventState) {
			t.Errorf("%s record -> %s: tcp_info empty = %v", r.Event, r.State, empty)
		}
	}
	if v, _ := col.Find(cookie, flow.EventClose)[0].Info.Get(flow.FieldBytesAcked); v < 8<<20 {
		t.Errorf("close record's bytes_acked %d < bytes sent %d", v, 8<<20)
	}
}

// TestMembers asks the program for a few members (Config.Members): every
// record with tcp_info holds exactly those (a state record in poll mode
// holds none), with the values TCP_INFO has in the flow's last sample,
// which the walk took once the flow was quiescent.
func TestMembers(t *testing.T) {
	testutil.RequireRoot(t)
	members := []flow.Field{
		flow.FieldOptions, flow.FieldSndWscale, flow.FieldRcvWscale, flow.FieldRTT,
		flow.FieldSndCwnd, flow.FieldBytesAcked, flow.FieldDeliveryRate, flow.FieldBusyTime,
	}
	const interval = 50 * time.Millisecond
	cg := testutil.TempCgroup(t)
	_, col := startBackend(t, Config{Cgroup: cg, Interval: interval, FlushInterval: 20 * time.Millisecond, Members: members})
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, cg, ln)
	cookie := testutil.Cookie(t, p.Client)
	p.Send(t, 4<<20)
	p.Quiesce(t)
	info := testutil.TCPInfo(t, p.Client)
	// A walk after the flow's last segment samples it; no walk after
	// that does, since the flow no longer moves.
	var samples []flow.Record
	testutil.WaitFor(t, "the sample after the last ACK", 5*time.Second, func() bool {
		samples = col.Find(cookie, flow.EventSample)
		if len(samples) == 0 {
			return false
		}
		v, _ := samples[len(samples)-1].Info.Get(flow.FieldBytesAcked)
		return v == info.Bytes_acked
	})
	p.Client.Close()
	testutil.ReadEOF(t, p.Server)
	p.Server.Close()
	testutil.WaitFor(t, "the close record", 5*time.Second, func() bool { return len(col.Find(cookie, flow.EventClose)) == 1 })

	for _, r := range col.Records(cookie) {
		for f := range flow.NumFields {
			want := slices.Contains(members, f) && r.Event != flow.EventState
			if r.Info.Has(f) != want {
				t.Errorf("%s record: %s present = %v, members %v", r.Event, f, r.Info.Has(f), members)
			}
		}
	}
	last := samples[len(samples)-1]
	for f, want := range map[flow.Field]uint64{
		flow.FieldOptions:      uint64(info.Options),
		flow.FieldRTT:          uint64(info.Rtt),
		flow.FieldSndCwnd:      uint64(info.Snd_cwnd),
		flow.FieldBytesAcked:   info.Bytes_acked,
		flow.FieldDeliveryRate: info.Delivery_rate,
	} {
		if got, _ := last.Info.Get(f); got != want {
			t.Errorf("%s = %d, TCP_INFO says %d", f, got, want)
		}
	}
	if v, _ := last.Info.Get(flow.FieldSndWscale); v == 0 && info.Options&4 != 0 {
		t.Error("snd_wscale = 0 on a connection with window scaling")
	}
}

// TestOutsideCgroup checks that a socket outside the cgroup is never seen.
func TestOutsideCgroup(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	_, col := startBackend(t, Config{Cgroup: cg, Interval: 0, FlushInterval: 20 * time.Millisecond})

	inLn := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	outLn := testutil.Listen(t, "", "tcp4", "127.0.0.1:0")
	outside := testutil.Dial(t, "", outLn)
	inside := testutil.Dial(t, cg, inLn)
	outside.Send(t, 1<<20)
	inside.Send(t, 1<<20)
	outCookies := map[uint64]bool{testutil.Cookie(t, outside.Client): true, testutil.Cookie(t, outside.Server): true}
	inCookie := testutil.Cookie(t, inside.Client)
	testutil.WaitFor(t, "samples of the inside flow", 5*time.Second, func() bool {
		return len(col.Find(inCookie, flow.EventSample)) > 0
	})
	time.Sleep(100 * time.Millisecond)
	for _, r := range col.Records(0) {
		if outCookies[r.Cookie] || r.LocalPort == testutil.Port(outLn.Addr()) || r.RemotePort == testutil.Port(outLn.Addr()) {
			t.Fatalf("saw a flow outside the cgroup: %+v", r)
		}
	}
}

// TestFlushesBatches: Run flushes the sink once the flush timer has drained
// the ring buffer, so a record reaches a buffering output within about a
// flush interval, and an idle backend flushes on every tick.
func TestFlushesBatches(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	_, col := startBackend(t, Config{Cgroup: cg, Mode: ModeTransition, FlushInterval: 50 * time.Millisecond})
	time.Sleep(300 * time.Millisecond)
	if flushes, _ := col.Flushed(); flushes < 2 {
		t.Errorf("%d flushes in 300 ms at a 50 ms flush interval", flushes)
	}
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, cg, ln)
	cookie := testutil.Cookie(t, p.Client)
	testutil.WaitFor(t, "the open record", 5*time.Second, func() bool {
		return len(col.Find(cookie, flow.EventOpen)) == 1
	})
	written := len(col.Records(0))
	testutil.WaitFor(t, "a flush after the open record", time.Second, func() bool {
		_, flushed := col.Flushed()
		return flushed >= written
	})
}

// TestFilters checks each in-kernel filter both ways.
func TestFilters(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name               string
		network, addr      string
		filter             func(serverPort uint16) backends.Filter
		wantClient, wantSv bool
	}{
		{"local port", "tcp4", "127.0.0.1:0", func(p uint16) backends.Filter { return backends.Filter{LocalPorts: []uint16{p}} }, false, true},
		{"remote port", "tcp4", "127.0.0.1:0", func(p uint16) backends.Filter { return backends.Filter{RemotePorts: []uint16{p}} }, true, false},
		{"other ports", "tcp4", "127.0.0.1:0", func(p uint16) backends.Filter {
			return backends.Filter{LocalPorts: []uint16{p + 1}, RemotePorts: []uint16{p + 1}}
		}, false, false},
		{"cidr v4 in", "tcp4", "127.0.0.1:0", func(uint16) backends.Filter {
			return backends.Filter{RemoteCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
		}, true, true},
		{"cidr v4 out", "tcp4", "127.0.0.1:0", func(uint16) backends.Filter {
			return backends.Filter{RemoteCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}
		}, false, false},
		{"cidr v6 in", "tcp6", "[::1]:0", func(uint16) backends.Filter {
			return backends.Filter{RemoteCIDRs: []netip.Prefix{netip.MustParsePrefix("::1/128")}}
		}, true, true},
		{"cidr v6 out", "tcp6", "[::1]:0", func(uint16) backends.Filter {
			return backends.Filter{RemoteCIDRs: []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}}
		}, false, false},
		{"port and cidr", "tcp4", "127.0.0.1:0", func(p uint16) backends.Filter {
			return backends.Filter{LocalPorts: []uint16{p}, RemoteCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
		}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cg := testutil.TempCgroup(t)
			ln := testutil.Listen(t, cg, tc.network, tc.addr)
			_, col := startBackend(t, Config{Cgroup: cg, Interval: 0, FlushInterval: 20 * time.Millisecond,
				Filter: tc.filter(testutil.Port(ln.Addr()))})
			// A flow that passes no filter must not show up, so first make
			// a reference flow that always passes: none here, so wait on
			// the close of this flow's own sockets via a time bound.
			p := testutil.Dial(t, cg, ln)
			p.Send(t, 256<<10)
			cc, sc := testutil.Cookie(t, p.Client), testutil.Cookie(t, p.Server)
			p.Client.Close()
			p.Server.Close()
			if tc.wantClient || tc.wantSv {
				testutil.WaitFor(t, "close records", 5*time.Second, func() bool {
					return (!tc.wantClient || len(col.Find(cc, flow.EventClose)) == 1) &&
						(!tc.wantSv || len(col.Find(sc, flow.EventClose)) == 1)
				})
			} else {
				time.Sleep(300 * time.Millisecond)
			}
			if got := len(col.Records(cc)) > 0; got != tc.wantClient {
				t.Errorf("client side tracked = %v, want %v", got, tc.wantClient)
			}
			if got := len(col.Records(sc)) > 0; got != tc.wantSv {
				t.Errorf("server side tracked = %v, want %v", got, tc.wantSv)
			}
		})
	}
}

// paced sends chunks every period for the given duration (app-limited, so
// every chunk is acknowledged and produces RTT callbacks).
func paced(t *testing.T, p testutil.Pair, d, period time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 32<<10)
		for {
			if _, err := p.Server.Read(buf); err != nil {
				close(done)
				return
			}
		}
	}()
	chunk := make([]byte, 16<<10)
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(period) {
		if _, err := p.Client.Write(chunk); err != nil {
			t.Errorf("write: %v", err) // not Fatal: paced may run in its own goroutine
			break
		}
	}
	p.Client.Close()
	<-done
}

// TestModes checks that poll mode samples a flow that moves once per
// interval and transition mode sends no samples.
func TestModes(t *testing.T) {
	testutil.RequireRoot(t)
	const duration = 1200 * time.Millisecond
	for _, tc := range []struct {
		name     string
		mode     Mode
		interval time.Duration
	}{
		{"poll 200ms", ModePoll, 200 * time.Millisecond},
		{"transition", ModeTransition, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cg := testutil.TempCgroup(t)
			_, col := startBackend(t, Config{Cgroup: cg, Mode: tc.mode, Interval: tc.interval, FlushInterval: 20 * time.Millisecond})
			ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
			p := testutil.Dial(t, cg, ln)
			cookie := testutil.Cookie(t, p.Client)
			start := time.Now()
			paced(t, p, duration, 5*time.Millisecond)
			elapsed := time.Since(start)
			testutil.WaitFor(t, "close record", 5*time.Second, func() bool { return len(col.Find(cookie, flow.EventClose)) == 1 })

			samples := len(col.Find(cookie, flow.EventSample))
			if len(col.Find(cookie, flow.EventOpen)) != 1 {
				t.Errorf("want exactly one open record")
			}
			if len(col.Find(cookie, flow.EventState)) < 2 {
				t.Errorf("want state records for the close handshake")
			}
			switch tc.mode {
			case ModeTransition:
				if samples != 0 {
					t.Errorf("transition mode sent %d samples", samples)
				}
			case ModePoll:
				checkPollSamples(t, col.Find(cookie, flow.EventSample), elapsed, tc.interval)
			}
		})
	}
}

// checkPollSamples checks the samples of a flow that moved all along over
// elapsed at interval: one per walk, and walks start an interval apart
// (a flow's place in a walk moves by microseconds).
func checkPollSamples(t *testing.T, samples []flow.Record, elapsed, interval time.Duration) {
	t.Helper()
	limit := int(elapsed/interval) + 1
	if len(samples) > limit {
		t.Errorf("%d samples in %s at interval %s, want <= %d", len(samples), elapsed, interval, limit)
	}
	if len(samples) < limit/2 {
		t.Errorf("only %d samples in %s at interval %s", len(samples), elapsed, interval)
	}
	for i := 1; i < len(samples); i++ {
		if gap := samples[i].Time.Sub(samples[i-1].Time); gap < interval-interval/20 {
			t.Errorf("samples %d and %d only %s apart", i-1, i, gap)
		}
	}
}

// TestDrops fills a one-page ring buffer that nobody reads and checks the
// drop counter.
func TestDrops(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	b, err := New(Config{Cgroup: cg, Interval: 0, RingbufSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if n, err := b.Drops(); err != nil || n != 0 {
		t.Fatalf("Drops before traffic = %d, %v", n, err)
	}
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, cg, ln)
	p.Send(t, 4<<20)
	n, err := b.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("a full ring buffer dropped nothing")
	}
	t.Logf("%d records dropped", n)
}

// TestCloseDetaches checks that Close leaves no program on the cgroup and
// that calling it twice is fine.
func TestCloseDetaches(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	attached := func() int {
		res, err := link.QueryPrograms(link.QueryOptions{Target: mustOpen(t, cg), Attach: ebpf.AttachCGroupSockOps})
		if err != nil {
			t.Fatalf("querying cgroup programs: %v", err)
		}
		return len(res.Programs)
	}
	b, err := New(Config{Cgroup: cg})
	if err != nil {
		t.Fatal(err)
	}
	if n := attached(); n != 1 {
		t.Fatalf("%d programs attached after New, want 1", n)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := attached(); n != 0 {
		t.Fatalf("%d programs attached after Close, want 0", n)
	}
}

func mustOpen(t *testing.T, path string) int {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestAdoptAfterRestart checks that a flow established under one instance
// of the backend is picked up by the next one when it starts.
func TestAdoptAfterRestart(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")

	first, err := New(Config{Cgroup: cg, Interval: 0})
	if err != nil {
		t.Fatal(err)
	}
	p := testutil.Dial(t, cg, ln)
	cookie := testutil.Cookie(t, p.Client)
	p.Send(t, 64<<10)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	_, col := startBackend(t, Config{Cgroup: cg, Interval: 0, FlushInterval: 20 * time.Millisecond})
	testutil.WaitFor(t, "the adopted flow's open record", 5*time.Second, func() bool { return len(col.Find(cookie, flow.EventOpen)) == 1 })
	p.Send(t, 1<<20)
	p.Client.Close()
	testutil.WaitFor(t, "close record", 5*time.Second, func() bool { return len(col.Find(cookie, flow.EventClose)) == 1 })
	recs := col.Records(cookie)
	if recs[0].Event != flow.EventOpen || !recs[0].Existing {
		t.Fatalf("first record of the adopted flow is %s (existing %v), want open, existing", recs[0].Event, recs[0].Existing)
	}
	if len(col.Find(cookie, flow.EventSample)) == 0 {
		t.Fatal("no samples of the adopted flow")
	}
	if v, _ := recs[0].Info.Get(flow.FieldBytesAcked); v < 64<<10 {
		t.Fatalf("adopted flow's open record has bytes_acked %d, want >= %d", v, 64<<10)
	}
}

// conditionalFields lists the tcp_info members that need tcp_sock fields
// some kernels lack; every other member is always present.
var conditionalFields = map[flow.Field][]string{
	flow.FieldFastopenClientFail: {"fastopen_client_fail"},
	flow.FieldDeliveredCE:        {"delivered_ce"},
	flow.FieldBytesSent:          {"bytes_sent"},
	flow.FieldBytesRetrans:       {"bytes_retrans"},
	flow.FieldDsackDups:          {"dsack_dups"},
	flow.FieldReordSeen:          {"reord_seen"},
	flow.FieldRcvOoopack:         {"rcv_ooopack"},
	flow.FieldRehash:             {"plb_rehash", "timeout_rehash"},
	flow.FieldTotalRTO:           {"total_rto", "rto_stamp"},
	flow.FieldTotalRTORecoveries: {"total_rto", "rto_stamp"},
	flow.FieldTotalRTOTime:       {"total_rto", "rto_stamp"},
	flow.FieldReceivedCE:         {"received_ce", "delivered_ecn_bytes", "received_ecn_bytes"},
	flow.FieldDeliveredE1Bytes:   {"received_ce", "delivered_ecn_bytes", "received_ecn_bytes"},
	flow.FieldDeliveredE0Bytes:   {"received_ce", "delivered_ecn_bytes", "received_ecn_bytes"},
	flow.FieldDeliveredCEBytes:   {"received_ce", "delivered_ecn_bytes", "received_ecn_bytes"},
	flow.FieldReceivedE1Bytes:    {"received_ce", "delivered_ecn_bytes", "received_ecn_bytes"},
	flow.FieldReceivedE0Bytes:    {"received_ce", "delivered_ecn_bytes", "received_ecn_bytes"},
	flow.FieldReceivedCEBytes:    {"received_ce", "delivered_ecn_bytes", "received_ecn_bytes"},
}

// TestPresenceMatchesKernel checks the presence mask against the running
// kernel's own BTF: a member is present exactly when the tcp_sock fields it
// is computed from exist.
func TestPresenceMatchesKernel(t *testing.T) {
	testutil.RequireRoot(t)
	kspec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	var tcpSock *btf.Struct
	if err := kspec.TypeByName("tcp_sock", &tcpSock); err != nil {
		t.Fatal(err)
	}
	members := map[string]bool{}
	for _, m := range tcpSock.Members {
		members[m.Name] = true
	}

	cg := testutil.TempCgroup(t)
	_, col := startBackend(t, Config{Cgroup: cg, Interval: 0, FlushInterval: 20 * time.Millisecond})
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, cg, ln)
	cookie := testutil.Cookie(t, p.Client)
	p.Send(t, 1<<20)
	testutil.WaitFor(t, "a sample", 5*time.Second, func() bool { return len(col.Find(cookie, flow.EventSample)) > 0 })
	r := col.Find(cookie, flow.EventSample)[0]

	var absent []string
	for f := flow.Field(0); f < flow.NumFields; f++ {
		want := true
		for _, m := range conditionalFields[f] {
			want = want && members[m]
		}
		if r.Info.Has(f) != want {
			t.Errorf("%s: present = %v, but this kernel's tcp_sock says %v", f, r.Info.Has(f), want)
		}
		if !want {
			absent = append(absent, f.Name())
		}
	}
	t.Logf("members absent on this kernel: %v", absent)
}

// TestOtherNetns checks that the program sees the cgroup's sockets in a
// network namespace other than flowd's.
func TestOtherNetns(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	ns := testutil.NewNetns(t)
	_, col := startBackend(t, Config{Cgroup: cg, Interval: 0, FlushInterval: 20 * time.Millisecond})
	var p testutil.Pair
	ns.Do(t, func() {
		ln := testutil.Listen(t, cg, "tcp6", "[::1]:0")
		p = testutil.Dial(t, cg, ln)
	})
	cookie := testutil.Cookie(t, p.Client)
	p.Send(t, 256<<10)
	testutil.WaitFor(t, "samples of the flow in the other namespace", 5*time.Second, func() bool {
		return len(col.Find(cookie, flow.EventSample)) > 0
	})
}

// TestNestedInstances runs a poll-mode instance on a cgroup and a
// transition-mode one on its child: each must keep to its own mode even
// though they share the sockets' callback flags.
func TestNestedInstances(t *testing.T) {
	testutil.RequireRoot(t)
	parent := testutil.TempCgroup(t)
	child, err := os.MkdirTemp(parent, "child-")
	if err != nil {
		t.Fatal(err)
	}
	_, pollCol := startBackend(t, Config{Cgroup: parent, Mode: ModePoll, Interval: 0, FlushInterval: 20 * time.Millisecond})
	_, transCol := startBackend(t, Config{Cgroup: child, Mode: ModeTransition, FlushInterval: 20 * time.Millisecond})
	ln := testutil.Listen(t, child, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, child, ln)
	cookie := testutil.Cookie(t, p.Client)
	p.Send(t, 1<<20)
	p.Client.Close()
	testutil.WaitFor(t, "close records in both", 5*time.Second, func() bool {
		return len(pollCol.Find(cookie, flow.EventClose)) == 1 && len(transCol.Find(cookie, flow.EventClose)) == 1
	})
	if n := len(transCol.Find(cookie, flow.EventSample)); n != 0 {
		t.Errorf("transition-mode instance sent %d samples", n)
	}
	if n := len(pollCol.Find(cookie, flow.EventSample)); n == 0 {
		t.Errorf("poll-mode instance sent no samples")
	}
}

// TestCongestionChange checks that samples follow a congestion control
// changed on an established flow (the program caches the name per flow).
func TestCongestionChange(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	_, col := startBackend(t, Config{Cgroup: cg, Interval: 0, FlushInterval: 20 * time.Millisecond})
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, cg, ln)
	cookie := testutil.Cookie(t, p.Client)
	p.Send(t, 256<<10)
	testutil.WaitFor(t, "a cubic sample", 5*time.Second, func() bool {
		s := col.Find(cookie, flow.EventSample)
		return len(s) > 0 && s[len(s)-1].CA == "cubic"
	})
	var err error
	testutil.Control(t, p.Client, func(fd int) {
		err = unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, "reno")
	})
	if err != nil {
		t.Fatalf("setsockopt TCP_CONGESTION reno: %v", err)
	}
	p.Send(t, 1<<20)
	testutil.WaitFor(t, "a reno sample", 5*time.Second, func() bool {
		s := col.Find(cookie, flow.EventSample)
		return len(s) > 0 && s[len(s)-1].CA == "reno"
	})
}
