package flows

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/sink"
)

// limitCase is a flow whose limit the test sets up.
type limitCase struct {
	name string
	want Verdict
	// shape, when set, puts a tbf on the sender's side of the link.
	shape                 func(tb testing.TB, l *testutil.Link)
	rcvbuf, sndbuf        int  // SO_RCVBUF on the receiver, SO_SNDBUF on the sender (0: autotuned)
	paced                 bool // the sender paces its data (the kernel's own pacing, as bbr's)
	slowWrites            bool // the application writes 1 kB every 20 ms instead of all it can
	busyReturn            bool // B sends A a bulk flow through a 10 Mbit/s tbf with a 64 kB queue meanwhile
	cookie                uint64
	local, remote         string
	sentBytes, recvdBytes int64
}

// transferTime is how long each case's sender sends.
const transferTime = 1500 * time.Millisecond

// TestVerdictsOfRealFlows sends real TCP flows between two network
// namespaces, each limited by what the case sets up, records them with the
// eBPF backend, writes the records with partial samples (the harder input)
// and checks that the summary's verdict names that limit.
func TestVerdictsOfRealFlows(t *testing.T) {
	testutil.RequireRoot(t)
	cases := []*limitCase{
		{name: "small receive buffer", want: VerdictReceiveWindow, rcvbuf: 8 << 10},
		// The kernel counts sndbuf_limited from when data sent while the
		// writer waits for buffer space empties the write queue, if the
		// flow is not cwnd-limited: the data must wait in the socket
		// (paced), and cwnd stay above twice the packets out, which cubic
		// grows it to and keeps (bbr's cwnd hovers there; docs/flows.md).
		// The acknowledgments come back through a queue that a flow in the
		// other direction keeps full: a round trip of about 10 ms, which a
		// 128 kB buffer cannot fill.
		{name: "small send buffer", want: VerdictSendBuffer, sndbuf: 64 << 10, paced: true, busyReturn: true},
		// 20 Mbit/s with a 30 kB queue: cubic fills it and loses.
		{name: "tbf bottleneck", want: VerdictCongestion, shape: func(tb testing.TB, l *testutil.Link) {
			l.Shape(tb, l.A, 20e6/8, 16<<10, 30<<10)
		}},
		{name: "slow application", want: VerdictApplication, slowWrites: true},
	}
	cg := testutil.TempCgroup(t)
	eb, err := ebpf.New(ebpf.Config{Cgroup: cg, Mode: ebpf.ModePoll, Interval: 20 * time.Millisecond, FlushInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("ebpf backend: %v", err)
	}
	col, stop := testutil.Start(t, eb)
	for _, c := range cases {
		c.run(t, cg)
	}
	testutil.WaitFor(t, "close records of every flow", 5*time.Second, func() bool {
		for _, c := range cases {
			if len(col.Find(c.cookie, flow.EventClose)) == 0 {
				return false
			}
		}
		return true
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(t.TempDir(), "flowd.jsonl")
	writeJSONL(t, path, col.Records(0), sink.SamplesChanges)
	var z Summarizer
	if _, err := Each([]Source{File(path)}, nil, func(r *flow.Record) error {
		z.Add(r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sums := map[uint64]Summary{}
	for _, s := range z.Summaries() {
		sums[s.Cookie] = s
	}
	var table bytes.Buffer
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', 0)
	tw.Write([]byte("CASE\t" + strings.Join(Columns, "\t") + "\tLIMITS\n"))
	for _, c := range cases {
		s, ok := sums[c.cookie]
		if !ok {
			t.Errorf("%s: no summary of the sender's flow (cookie %d)", c.name, c.cookie)
			continue
		}
		tw.Write([]byte(c.name + "\t" + strings.Join(s.Row(true), "\t") + "\t" + limitsString(s.Limits) + "\n"))
		if s.Local.String() != c.local || s.Remote.String() != c.remote {
			t.Errorf("%s: summary of %s -> %s, the sender is %s -> %s", c.name, s.Local, s.Remote, c.local, c.remote)
		}
		// bytes_acked counts the FIN too.
		if got := int64(s.BytesAcked); got < c.sentBytes || got > c.sentBytes+1 {
			t.Errorf("%s: %d bytes acked, the sender wrote %d", c.name, got, c.sentBytes)
		}
		if s.Verdict != c.want {
			t.Errorf("%s: verdict %s, want %s (limits %s)", c.name, s.Verdict, c.want, limitsString(s.Limits))
		}
	}
	tw.Flush()
	t.Logf("summaries of the sending ends:\n%s", table.String())
}

func limitsString(l *Limits) string {
	if l == nil {
		return "-"
	}
	var parts []string
	for _, c := range causes {
		parts = append(parts, c.Describe()+" "+Percent(l.Share(c)))
	}
	return strings.Join(parts, ", ") + ", app-limited samples " + Percent(l.AppLimitedSamples)
}

// socketOptions returns a Control function that sets cubic and, when
// size > 0, a socket buffer. paced turns on the kernel's own pacing: any
// SO_MAX_PACING_RATE does, and this one is far above the flows' rates.
func socketOptions(opt, size int, paced bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) {
			err = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, "cubic")
			if err == nil && size > 0 {
				err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, size)
			}
			if err == nil && paced {
				err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MAX_PACING_RATE, 1<<30)
			}
		}); cerr != nil {
			return cerr
		}
		return err
	}
}

// run sends the case's flow from A to B over a new link, both ends in
// cgroup cg, and waits until it is closed at both ends.
func (c *limitCase) run(t *testing.T, cg string) {
	t.Helper()
	l := testutil.NewLink(t)
	if c.shape != nil {
		c.shape(t, l)
	}
	if c.busyReturn {
		l.Shape(t, l.B, 10e6/8, 16<<10, 64<<10)
		stop := backgroundFlow(t, l)
		defer stop()
	}
	var ln net.Listener
	l.B.Do(t, func() {
		testutil.InCgroup(t, cg, func() {
			lc := net.ListenConfig{Control: socketOptions(unix.SO_RCVBUF, c.rcvbuf, false)}
			var err error
			if ln, err = lc.Listen(context.Background(), "tcp4", net.JoinHostPort(l.AddrB.String(), "0")); err != nil {
				t.Fatal(err)
			}
		})
	})
	defer ln.Close()
	received := make(chan int64, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			received <- -1
			return
		}
		defer conn.Close()
		n, _ := io.Copy(io.Discard, conn)
		received <- n
	}()
	var conn net.Conn
	l.A.Do(t, func() {
		testutil.InCgroup(t, cg, func() {
			d := net.Dialer{Control: socketOptions(unix.SO_SNDBUF, c.sndbuf, c.paced), Timeout: 5 * time.Second}
			var err error
			if conn, err = d.Dial("tcp4", ln.Addr().String()); err != nil {
				t.Fatal(err)
			}
		})
	})
	c.cookie = testutil.Cookie(t, conn)
	c.local, c.remote = conn.LocalAddr().String(), conn.RemoteAddr().String()
	chunk, pause := 64<<10, time.Duration(0)
	if c.slowWrites {
		chunk, pause = 1<<10, 20*time.Millisecond
	}
	var err error
	if c.sentBytes, err = send(conn, chunk, pause); err != nil {
		t.Fatalf("%s: write: %v", c.name, err)
	}
	conn.Close()
	select {
	case c.recvdBytes = <-received:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the receiver did not see the end of the flow", c.name)
	}
	if c.recvdBytes != c.sentBytes {
		t.Fatalf("%s: sent %d bytes, received %d", c.name, c.sentBytes, c.recvdBytes)
	}
}

// send writes chunk bytes at a time to conn, pausing after each write,
// until transferTime has passed, and returns how many it wrote. It writes
// from an OS thread of its own at the highest priority, with writes that
// block in the kernel, which wakes the writer itself when buffer space
// frees: on a loaded host a writer kept off the CPU would make any flow
// application-limited.
func send(conn net.Conn, chunk int, pause time.Duration) (sent int64, err error) {
	raw, err := conn.(syscall.Conn).SyscallConn()
	if err != nil {
		return 0, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: the thread ends with the goroutine, and its
		// priority with it.
		runtime.LockOSThread()
		if err = unix.Setpriority(unix.PRIO_PROCESS, 0, -20); err != nil {
			return
		}
		buf := make([]byte, chunk)
		cerr := raw.Control(func(fd uintptr) {
			// Blocking writes that give up now and then, to see the time.
			if err = unix.SetNonblock(int(fd), false); err != nil {
				return
			}
			tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
			if err = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
				return
			}
			for end := time.Now().Add(transferTime); time.Now().Before(end); {
				n, werr := unix.Write(int(fd), buf)
				if n > 0 {
					sent += int64(n)
				}
				if werr != nil && werr != unix.EAGAIN && werr != unix.EINTR {
					err = werr
					return
				}
				time.Sleep(pause)
			}
		})
		if err == nil {
			err = cerr
		}
	}()
	<-done
	return sent, err
}

// backgroundFlow sends from B to A, outside the test's cgroup, until stop
// is called.
func backgroundFlow(t *testing.T, l *testutil.Link) (stop func()) {
	t.Helper()
	var ln net.Listener
	l.A.Do(t, func() {
		var err error
		if ln, err = net.Listen("tcp4", net.JoinHostPort(l.AddrA.String(), "0")); err != nil {
			t.Fatal(err)
		}
	})
	go func() {
		if conn, err := ln.Accept(); err == nil {
			io.Copy(io.Discard, conn)
			conn.Close()
		}
	}()
	var conn net.Conn
	l.B.Do(t, func() {
		var err error
		if conn, err = net.Dial("tcp4", ln.Addr().String()); err != nil {
			t.Fatal(err)
		}
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			if _, err := conn.Write(buf); err != nil {
				return
			}
		}
	}()
	// Let the queue fill before the measured flow starts.
	time.Sleep(300 * time.Millisecond)
	return func() {
		conn.Close()
		ln.Close()
		<-done
	}
}

// writeJSONL writes recs as flowd's output does.
func writeJSONL(t *testing.T, path string, recs []flow.Record, samples sink.Samples) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	j := sink.NewJSONL(f)
	j.SetSamples(samples)
	for i := range recs {
		if err := j.Write(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
