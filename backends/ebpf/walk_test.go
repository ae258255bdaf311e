package ebpf

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// received counts what a reader has read, over time.
type received struct {
	mu     sync.Mutex
	at     []time.Time
	totals []uint64
}

func (r *received) add(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	total := uint64(n)
	if k := len(r.totals); k > 0 {
		total += r.totals[k-1]
	}
	r.at = append(r.at, time.Now())
	r.totals = append(r.totals, total)
}

// by returns how many bytes had been read at t.
func (r *received) by(t time.Time) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var v uint64
	for i, at := range r.at {
		if at.After(t) {
			break
		}
		v = r.totals[i]
	}
	return v
}

// TestReceiveOnly sends from the server to a client that only receives,
// through a 20 Mbit/s bottleneck: the client gets a sample at every walk
// while data arrives (every Interval, or every FlushInterval at Interval
// 0, where a receiver gets no RTT callbacks), its bytes_received follows
// what the application read, and the receive-side members are there.
func TestReceiveOnly(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name                    string
		interval, flushInterval time.Duration
	}{
		{"interval 200ms", 200 * time.Millisecond, 20 * time.Millisecond},
		{"interval 0", 0, DefaultFlushInterval},
	} {
		t.Run(tc.name, func(t *testing.T) {
			walk := tc.interval
			if walk == 0 {
				walk = tc.flushInterval
			}
			receiveOnly(t, Config{Interval: tc.interval, FlushInterval: tc.flushInterval}, walk)
		})
	}
}

// receiveOnly is TestReceiveOnly with one configuration, whose walks are
// walk apart.
func receiveOnly(t *testing.T, cfg Config, walk time.Duration) {
	const (
		rate = 2_500_000 // bytes/s
		size = 5_000_000 // bytes: 2 s through the bottleneck
	)
	cg := testutil.TempCgroup(t)
	l := testutil.NewLink(t)
	l.Shape(t, l.B, rate, 16<<10, 64<<10)
	cfg.Cgroup = cg
	_, col := startBackend(t, cfg)
	var (
		ln net.Listener
		p  testutil.Pair
	)
	l.B.Do(t, func() { ln = testutil.Listen(t, cg, "tcp4", l.AddrB.String()+":0") })
	l.A.Do(t, func() { p = testutil.Dial(t, cg, ln) })
	cookie := testutil.Cookie(t, p.Client)

	var got received
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		var n uint64
		for n < size {
			k, err := p.Client.Read(buf)
			if err != nil {
				done <- err
				return
			}
			got.add(k)
			n += uint64(k)
		}
		done <- nil
	}()
	start := time.Now()
	if _, err := p.Server.Write(make([]byte, size)); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("read: %v", err)
	}
	end := time.Now()
	// The walk after the last segment arrived takes the final sample. It
	// may come before the reader has read it all (a slow guest): nothing
	// moves after that, so no later sample is due.
	testutil.WaitFor(t, "a sample with every byte received", 5*time.Second, func() bool {
		s := col.Find(cookie, flow.EventSample)
		if len(s) == 0 {
			return false
		}
		v, _ := s[len(s)-1].Info.Get(flow.FieldBytesReceived)
		return v >= size
	})

	samples := col.Find(cookie, flow.EventSample)
	var during int
	for _, s := range samples {
		if !s.Time.Before(start) && !s.Time.After(end) {
			during++
		}
	}
	d := end.Sub(start)
	want := float64(d) / float64(walk)
	if diff := float64(during) - want; diff > d.Seconds() || -diff > d.Seconds() {
		t.Errorf("%d samples of the receiver in %s with walks %s apart, want %.1f ± %.1f", during, d.Round(time.Millisecond), walk, want, d.Seconds())
	}
	var last uint64
	for _, s := range samples {
		v, ok := s.Info.Get(flow.FieldBytesReceived)
		if !ok {
			t.Fatal("a sample without bytes_received")
		}
		if v < last {
			t.Errorf("bytes_received went back from %d to %d", last, v)
		}
		last = v
		// What the kernel received is what the reader had read, or
		// is about to: at most a receive window ahead of it.
		if lo, hi := got.by(s.Time.Add(-20*time.Millisecond)), got.by(s.Time.Add(20*time.Millisecond))+128<<10; v < lo || v > hi {
			t.Errorf("sample at %s: bytes_received %d, the reader had %d..%d", s.Time.Sub(start).Round(time.Millisecond), v, lo, hi)
		}
		for _, f := range []flow.Field{flow.FieldRcvRTT, flow.FieldRcvSpace} {
			if !s.Info.Has(f) {
				t.Errorf("sample without %s", f)
			}
		}
	}
	if diff := float64(last) - size; diff > size/100 || -diff > size/100 {
		t.Errorf("final bytes_received %d, the reader read %d", last, size)
	}
	if v, _ := samples[len(samples)-1].Info.Get(flow.FieldRcvSpace); v == 0 {
		t.Error("rcv_space is 0 after a 5 MB transfer")
	}
	t.Logf("%d samples in %s; final bytes_received %d", during, d.Round(time.Millisecond), last)
}

// closeBoth shuts both ends down and waits for each end to read the
// other's FIN: both sockets reach CLOSE while their owners still hold
// them, so TCP_INFO can be read after their close records.
func closeBoth(t *testing.T, p testutil.Pair) {
	t.Helper()
	if err := p.Client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	testutil.ReadEOF(t, p.Server)
	if err := p.Server.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	testutil.ReadEOF(t, p.Client)
}

// TestExistingFlows opens connections before the backend starts (one
// whose client sends, one whose server sends, one idle, and, in a network
// namespace of a process of the cgroup, one more), and checks that each
// end gets an open record marked existing, samples once it moves, none
// while idle, and a close record with the counters TCP_INFO has, and that
// none names a process.
func TestExistingFlows(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	send, recv, idle := testutil.Dial(t, cg, ln), testutil.Dial(t, cg, ln), testutil.Dial(t, cg, ln)
	send.Send(t, 64<<10)

	// The other namespace holds a process of the cgroup, as a container
	// does: that is how the backend finds it.
	ns := testutil.NewNetns(t)
	var other testutil.Pair
	ns.Do(t, func() {
		other = testutil.Dial(t, cg, testutil.Listen(t, cg, "tcp6", "[::1]:0"))
		testutil.StartProcess(t, cg)
	})

	b, col := startBackend(t, Config{Cgroup: cg, Interval: 100 * time.Millisecond, FlushInterval: 20 * time.Millisecond})
	pairs := map[string]testutil.Pair{"send": send, "recv": recv, "idle": idle, "other netns": other}
	conns := map[uint64]net.Conn{}
	names := map[uint64]string{}
	for name, p := range pairs {
		for side, c := range map[string]net.Conn{"client": p.Client, "server": p.Server} {
			k := testutil.Cookie(t, c)
			conns[k], names[k] = c, name+" "+side
		}
	}
	testutil.WaitFor(t, "open records of the existing flows", 5*time.Second, func() bool {
		for k := range conns {
			if len(col.Find(k, flow.EventOpen)) == 0 {
				return false
			}
		}
		return true
	})
	for k, name := range names {
		open := col.Find(k, flow.EventOpen)
		if len(open) != 1 || !open[0].Existing || open[0].State != flow.StateEstablished {
			t.Errorf("%s: open records %+v, want one, existing, ESTABLISHED", name, open)
		}
	}
	// Kernels before 6.12 cannot give them callbacks: the tracepoint
	// follows them instead, and this test closes them all.
	uncalled, _ := b.variable(b.objs.ExistingWithoutCallbacks)
	if uncalled != 0 && uncalled != uint64(len(conns)) {
		t.Errorf("%d of %d existing flows without callbacks", uncalled, len(conns))
	}
	t.Logf("existing flows without callbacks on this kernel: %d of %d", uncalled, len(conns))

	send.Send(t, 256<<10)
	if _, err := recv.Server.Write(make([]byte, 256<<10)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(recv.Client, make([]byte, 256<<10)); err != nil {
		t.Fatal(err)
	}
	other.Send(t, 256<<10)
	for k, name := range names {
		if name[:4] == "idle" {
			continue
		}
		testutil.WaitFor(t, "samples of "+name, 5*time.Second, func() bool { return len(col.Find(k, flow.EventSample)) > 0 })
	}
	time.Sleep(300 * time.Millisecond) // three more walks
	for _, c := range []net.Conn{idle.Client, idle.Server} {
		if n := len(col.Find(testutil.Cookie(t, c), flow.EventSample)); n != 0 {
			t.Errorf("%d samples of an idle flow (idle interval 0)", n)
		}
	}

	for _, p := range pairs {
		closeBoth(t, p)
	}
	testutil.WaitFor(t, "close records", 5*time.Second, func() bool {
		for k := range conns {
			if len(col.Find(k, flow.EventClose)) == 0 {
				return false
			}
		}
		return true
	})
	for k, c := range conns {
		info := testutil.TCPInfo(t, c)
		if info.State != unix.BPF_TCP_CLOSE {
			t.Fatalf("%s: TCP_INFO state %d, want CLOSE", names[k], info.State)
		}
		checkAgainstTCPInfo(t, names[k], col.Find(k, flow.EventClose)[0], info, testutil.TCPInfoLen(t, c))
		for _, r := range col.Records(k) {
			// The close record too, although the kernel has released
			// the socket's port by the time the tracepoint that
			// reports it runs (kernels before 6.12).
			if ok, got, want := tupleOf(r, c); !ok {
				t.Errorf("%s: %s record has %s, want %s", names[k], r.Event, got, want)
			}
			// Who connected a flow found running is not known: no
			// record names a process.
			if r.PID != 0 || r.Comm != "" {
				t.Errorf("%s: %s record names process %d %q", names[k], r.Event, r.PID, r.Comm)
			}
		}
	}
	// The tracepoint that follows flows without callbacks (kernels
	// before 6.12) is detached once none is left.
	testutil.WaitFor(t, "the tracepoint detached", 5*time.Second, func() bool {
		b.linksMu.Lock()
		defer b.linksMu.Unlock()
		return b.setState == nil
	})
}

// TestIdleInterval checks that a flow that does not move gets one sample
// per idle interval and nothing else, and a sample at the first walk once
// it moves again.
func TestIdleInterval(t *testing.T) {
	testutil.RequireRoot(t)
	const (
		interval = 100 * time.Millisecond
		idle     = 500 * time.Millisecond
		// How late a walk may start: its timer fires late on a
		// loaded machine or a qemu guest. Sample times are the
		// kernel's at the walk. Still well short of a skipped idle
		// interval or walk.
		late = interval
	)
	cg := testutil.TempCgroup(t)
	_, col := startBackend(t, Config{Cgroup: cg, Interval: interval, IdleInterval: idle, FlushInterval: 20 * time.Millisecond})
	p := testutil.Dial(t, cg, testutil.Listen(t, cg, "tcp4", "127.0.0.1:0"))
	cookie := testutil.Cookie(t, p.Client)
	testutil.WaitFor(t, "the open record", 5*time.Second, func() bool { return len(col.Find(cookie, flow.EventOpen)) == 1 })
	// The client's ACK of the handshake follows its open record: the
	// first walk samples that, and the flow is idle from then on.
	testutil.WaitFor(t, "the first sample", 5*time.Second, func() bool { return len(col.Find(cookie, flow.EventSample)) > 0 })
	quiet := col.Find(cookie, flow.EventSample)[0].Time
	time.Sleep(3*idle + idle/2)

	samples := col.Find(cookie, flow.EventSample)[1:]
	if len(samples) < 2 || len(samples) > 4 {
		t.Errorf("%d samples in %s of idleness at idle interval %s, want 3 ± 1", len(samples), 3*idle+idle/2, idle)
	}
	prev := quiet
	for _, s := range samples {
		// At the first walk at least idle after the flow's last record.
		if gap := s.Time.Sub(prev); gap < idle-interval/20 || gap > idle+interval+late {
			t.Errorf("idle samples %s apart, want %s to %s (a walk, late by at most %s)", gap.Round(time.Millisecond), idle, idle+interval, late)
		}
		prev = s.Time
	}

	moved := time.Now()
	p.Send(t, 64<<10)
	var first flow.Record
	testutil.WaitFor(t, "a sample of the moving flow", 5*time.Second, func() bool {
		for _, s := range col.Find(cookie, flow.EventSample) {
			if s.Time.After(moved) {
				first = s
				return true
			}
		}
		return false
	})
	if d := first.Time.Sub(moved); d > interval+late {
		t.Errorf("the flow's first sample after it moved came %s later, want within %s (a walk, late by at most %s)", d.Round(time.Millisecond), interval, late)
	}
	t.Logf("first sample %s after the flow moved", first.Time.Sub(moved).Round(time.Millisecond))
}

// TestStateRecords checks the records of a connection's life in both modes:
// each end's open record says ESTABLISHED (the passive end's too, whose
// callback runs before the state is stored), no state record repeats a
// state (the kernel calls back for FIN_WAIT2 -> FIN_WAIT2 when a socket shut
// down for writing is closed), and the close record says which state the
// flow left for CLOSE (no state record does). State records hold tcp_info in transition
// mode only; in poll mode the walk samples a flow that moved before its
// state changed, so its counters are not left to the close record.
func TestStateRecords(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range []Mode{ModePoll, ModeTransition} {
		t.Run(string(mode), func(t *testing.T) {
			cg := testutil.TempCgroup(t)
			_, col := startBackend(t, Config{Cgroup: cg, Mode: mode, Interval: 50 * time.Millisecond, FlushInterval: 20 * time.Millisecond})
			p := testutil.Dial(t, cg, testutil.Listen(t, cg, "tcp4", "127.0.0.1:0"))
			client, server := testutil.Cookie(t, p.Client), testutil.Cookie(t, p.Server)
			p.Send(t, 128<<10)
			if err := p.Client.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, "the client in FIN_WAIT2", 5*time.Second, func() bool {
				return testutil.TCPInfo(t, p.Client).State == unix.BPF_TCP_FIN_WAIT2
			})
			if mode == ModePoll {
				testutil.WaitFor(t, "a sample of the client in FIN_WAIT2", 5*time.Second, func() bool {
					for _, r := range col.Find(client, flow.EventSample) {
						if v, _ := r.Info.Get(flow.FieldBytesAcked); r.State == flow.StateFinWait2 && v > 128<<10 {
							return true
						}
					}
					return false
				})
			}
			p.Client.Close()
			testutil.ReadEOF(t, p.Server)
			p.Server.Close()
			testutil.WaitFor(t, "close records", 5*time.Second, func() bool {
				return len(col.Find(client, flow.EventClose)) == 1 && len(col.Find(server, flow.EventClose)) == 1
			})
			for _, side := range []struct {
				name   string
				cookie uint64
			}{{"client", client}, {"server", server}} {
				recs := col.Records(side.cookie)
				if recs[0].Event != flow.EventOpen || recs[0].State != flow.StateEstablished ||
					recs[0].Info.Values[flow.FieldState] != uint64(flow.StateEstablished) {
					t.Errorf("%s: first record %s in %s (tcp_info state %d), want open in ESTABLISHED",
						side.name, recs[0].Event, recs[0].State, recs[0].Info.Values[flow.FieldState])
				}
				state := recs[0].State
				var path []string
				for _, r := range recs[1:] {
					if r.Event == flow.EventClose {
						// The change to CLOSE is the close record's.
						path = append(path, fmt.Sprintf("%s->%s (close)", r.OldState, r.State))
						if r.OldState != state || r.State != flow.StateClose {
							t.Errorf("%s: close record %s -> %s after %s", side.name, r.OldState, r.State, state)
						}
						continue
					}
					if r.Event != flow.EventState {
						continue
					}
					path = append(path, fmt.Sprintf("%s->%s", r.OldState, r.State))
					if r.Info.Present.IsEmpty() != (mode == ModePoll) {
						t.Errorf("%s: state record %s -> %s holds %v", side.name, r.OldState, r.State, r.Info.Present)
					}
					if r.State == r.OldState || r.State == state {
						t.Errorf("%s: state record %s -> %s repeats a state", side.name, r.OldState, r.State)
					}
					state = r.State
				}
				t.Logf("%s: %v", side.name, path)
			}
		})
	}
}

// TestMaxFlows tracks at most MaxFlows flows: a flow established while
// that many are tracked gets no records, and the slot of a closed flow is
// used again.
func TestMaxFlows(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	b, col := startBackend(t, Config{Cgroup: cg, Mode: ModeTransition, MaxFlows: 2, FlushInterval: 20 * time.Millisecond})
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	// One connection: both of its ends, the two slots.
	first := testutil.Dial(t, cg, ln)
	testutil.WaitFor(t, "open records of both ends", 5*time.Second, func() bool {
		return len(col.Find(testutil.Cookie(t, first.Client), flow.EventOpen)) == 1 &&
			len(col.Find(testutil.Cookie(t, first.Server), flow.EventOpen)) == 1
	})
	second := testutil.Dial(t, cg, ln)
	testutil.WaitFor(t, "the untracked flows counted", 5*time.Second, func() bool {
		n, _ := b.variable(b.objs.UntrackedFlows)
		return n == 2
	})
	closeBoth(t, first)
	closeBoth(t, second)
	for _, c := range []net.Conn{second.Client, second.Server} {
		if recs := col.Records(testutil.Cookie(t, c)); len(recs) != 0 {
			t.Errorf("a flow beyond MaxFlows has records: %+v", recs)
		}
	}
	testutil.WaitFor(t, "close records of the first connection", 5*time.Second, func() bool {
		return len(col.Find(testutil.Cookie(t, first.Client), flow.EventClose)) == 1 &&
			len(col.Find(testutil.Cookie(t, first.Server), flow.EventClose)) == 1
	})
	third := testutil.Dial(t, cg, ln)
	testutil.WaitFor(t, "open records in the freed slots", 5*time.Second, func() bool {
		return len(col.Find(testutil.Cookie(t, third.Client), flow.EventOpen)) == 1 &&
			len(col.Find(testutil.Cookie(t, third.Server), flow.EventOpen)) == 1
	})
}
