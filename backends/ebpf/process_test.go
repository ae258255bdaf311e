package ebpf

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// TestProcess checks which records name a process: every record of a flow
// names the process that connected it, read when it called connect(),
// also when its handshake completes later in softirq context; the flows a
// listener accepted name none.
func TestProcess(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	_, col := startBackend(t, Config{Cgroup: cg, Interval: 50 * time.Millisecond, FlushInterval: 20 * time.Millisecond})

	t.Run("this process", func(t *testing.T) {
		comm, err := os.ReadFile("/proc/self/comm")
		if err != nil {
			t.Fatal(err)
		}
		p := testutil.Dial(t, cg, testutil.Listen(t, cg, "tcp4", "127.0.0.1:0"))
		client, server := testutil.Cookie(t, p.Client), testutil.Cookie(t, p.Server)
		p.Send(t, 64<<10)
		p.Client.Close()
		testutil.ReadEOF(t, p.Server)
		p.Server.Close()
		waitClosed(t, col, client, server)
		checkProcess(t, "client", col.Records(client), uint32(os.Getpid()), strings.TrimSpace(string(comm)))
		checkProcess(t, "server", col.Records(server), 0, "")
	})

	// The listener's queue is full when the child connects: the kernel
	// drops its SYN, and the handshake completes when the SYN is sent
	// again, from a timer about a second later, while the child waits in
	// the poller: the open record's callback runs in softirq context then.
	t.Run("a handshake that completes in softirq", func(t *testing.T) {
		ln := fullListener(t, cg)
		filler, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer filler.Close()
		started := time.Now()
		child := testutil.StartDialer(t, cg, ln.Addr().String())
		// A slow machine may start the child after the first Accept
		// would have made room: accept once its SYN is out, and
		// dropped, long before the kernel sends it again.
		testutil.WaitFor(t, "the child's SYN", 5*time.Second, func() bool { return synSentTo(t, testutil.Port(ln.Addr())) })
		time.Sleep(200 * time.Millisecond)
		first, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		first.Close()
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer server.Close()
		clientPort := testutil.Port(server.RemoteAddr())
		serverCookie := testutil.Cookie(t, server)
		child.Stop(t)
		testutil.ReadEOF(t, server)
		server.Close()

		var client uint64
		testutil.WaitFor(t, "the child's close record", 5*time.Second, func() bool {
			for _, r := range col.Records(0) {
				if r.Event == flow.EventOpen && r.LocalPort == clientPort {
					client = r.Cookie
				}
			}
			return client != 0 && len(col.Find(client, flow.EventClose)) == 1
		})
		waitClosed(t, col, serverCookie)
		recs := col.Records(client)
		if opened := recs[0].Time.Sub(started); opened < 800*time.Millisecond {
			t.Fatalf("the child's flow opened %s after it started: its first SYN was not dropped", opened.Round(time.Millisecond))
		}
		checkProcess(t, "child", recs, uint32(child.Pid), testutil.DialerComm)
		checkProcess(t, "server", col.Records(serverCookie), 0, "")
	})
}

// waitClosed waits for the close records of the flows.
func waitClosed(t *testing.T, col *testutil.Collector, cookies ...uint64) {
	t.Helper()
	testutil.WaitFor(t, "close records", 5*time.Second, func() bool {
		for _, c := range cookies {
			if len(col.Find(c, flow.EventClose)) != 1 {
				return false
			}
		}
		return true
	})
}

// checkProcess checks that every record of a flow names the process pid
// (0: none) and comm.
func checkProcess(t *testing.T, side string, recs []flow.Record, pid uint32, comm string) {
	t.Helper()
	if len(recs) < 3 {
		t.Fatalf("%s: %d records", side, len(recs))
	}
	for _, r := range recs {
		if r.PID != pid || r.Comm != comm {
			t.Errorf("%s: %s record names process %d %q, want %d %q", side, r.Event, r.PID, r.Comm, pid, comm)
		}
	}
}

// synSentTo reports whether a socket of this network namespace is in
// SYN_SENT towards port on IPv4.
func synSentTo(t *testing.T, port uint16) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	remote := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		// sl local_address rem_address st ...; st 02 is SYN_SENT.
		if f := strings.Fields(line); len(f) > 3 && strings.HasSuffix(f[2], remote) && f[3] == "02" {
			return true
		}
	}
	return false
}

// fullListener listens on 127.0.0.1 in cgroup cg with a backlog of 0: a
// connection that waits to be accepted fills its queue, and the kernel
// drops the SYNs that come meanwhile.
func fullListener(t *testing.T, cg string) net.Listener {
	t.Helper()
	var ln net.Listener
	testutil.InCgroup(t, cg, func() {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		f := os.NewFile(uintptr(fd), "listener")
		defer f.Close()
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		if err := unix.Listen(fd, 0); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.FileListener(f); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}
