package testutil

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/flow"
)

// Collector is a Sink that keeps a copy of every record. It is also a
// flow.Flusher that remembers how many records had been written at its
// last Flush.
type Collector struct {
	mu      sync.Mutex
	recs    []flow.Record
	flushes int
	flushed int // len(recs) at the last Flush
}

// Flush notes that the records written so far were flushed.
func (c *Collector) Flush() error {
	c.mu.Lock()
	c.flushes++
	c.flushed = len(c.recs)
	c.mu.Unlock()
	return nil
}

// Flushed returns the number of Flush calls and of the records written
// before the last one.
func (c *Collector) Flushed() (flushes, records int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flushes, c.flushed
}

// Write keeps a copy of r.
func (c *Collector) Write(r *flow.Record) error {
	c.mu.Lock()
	c.recs = append(c.recs, *r)
	c.mu.Unlock()
	return nil
}

// Records returns the records of one flow (by cookie), or all when cookie is 0.
func (c *Collector) Records(cookie uint64) []flow.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []flow.Record
	for _, r := range c.recs {
		if cookie == 0 || r.Cookie == cookie {
			out = append(out, r)
		}
	}
	return out
}

// Find returns the records of one flow with the given event.
func (c *Collector) Find(cookie uint64, ev flow.Event) []flow.Record {
	var out []flow.Record
	for _, r := range c.Records(cookie) {
		if r.Event == ev {
			out = append(out, r)
		}
	}
	return out
}

// WaitFor polls cond until it is true, failing the test after timeout.
func WaitFor(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WithCongestion is a net.Dialer/net.ListenConfig Control function that
// sets the congestion control before the connection exists (tests choose
// theirs explicitly: hosts differ in their default).
func WithCongestion(name string) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) {
			err = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, name)
		}); cerr != nil {
			return cerr
		}
		return err
	}
}

// Listen makes a cubic listener inside cgroup cg ("" = where the test
// process is); connections accepted on it belong to cg too.
func Listen(tb testing.TB, cg, network, addr string) net.Listener {
	tb.Helper()
	var ln net.Listener
	listen := func() {
		lc := net.ListenConfig{Control: WithCongestion("cubic")}
		var err error
		ln, err = lc.Listen(context.Background(), network, addr)
		if err != nil {
			tb.Skipf("cannot listen on %s %s: %v", network, addr, err)
		}
	}
	if cg == "" {
		listen()
	} else {
		InCgroup(tb, cg, listen)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// Pair is one loopback TCP connection: the client and the server's end.
type Pair struct {
	Client, Server net.Conn
}

// Dial connects to ln with cubic from cgroup cg ("" = where the test
// process is) and accepts the connection.
func Dial(tb testing.TB, cg string, ln net.Listener) Pair {
	tb.Helper()
	var p Pair
	dial := func() {
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				c = nil
			}
			accepted <- c
		}()
		d := net.Dialer{Control: WithCongestion("cubic")}
		client, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			tb.Fatalf("dial %s: %v", ln.Addr(), err)
		}
		server := <-accepted
		if server == nil {
			tb.Fatal("accept failed")
		}
		p = Pair{client, server}
	}
	if cg == "" {
		dial()
	} else {
		InCgroup(tb, cg, dial)
	}
	tb.Cleanup(func() { p.Client.Close(); p.Server.Close() })
	return p
}

// Send writes n bytes from client to server and waits until the server
// has read them all.
func (p Pair) Send(tb testing.TB, n int) {
	tb.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, p.Server, int64(n))
		errc <- err
	}()
	buf := make([]byte, 64<<10)
	for sent := 0; sent < n; {
		k := min(len(buf), n-sent)
		if _, err := p.Client.Write(buf[:k]); err != nil {
			tb.Fatalf("write: %v", err)
		}
		sent += k
	}
	if err := <-errc; err != nil {
		tb.Fatalf("read: %v", err)
	}
}

// Quiesce waits until everything the client sent is acknowledged.
func (p Pair) Quiesce(tb testing.TB) {
	tb.Helper()
	WaitFor(tb, "client data acknowledged", 5*time.Second, func() bool {
		return TCPInfo(tb, p.Client).Unacked == 0
	})
}

// ReadEOF reads from c until the peer's FIN.
func ReadEOF(tb testing.TB, c net.Conn) {
	tb.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, io.EOF) {
		tb.Fatalf("reading to EOF: %v", err)
	}
}

// Control runs fn on the socket's file descriptor, as its owner.
func Control(tb testing.TB, c net.Conn, fn func(fd int)) {
	tb.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		tb.Fatal(err)
	}
	if err := rc.Control(func(fd uintptr) { fn(int(fd)) }); err != nil {
		tb.Fatal(err)
	}
}

// TCPInfo reads getsockopt(TCP_INFO) as the socket's owner.
func TCPInfo(tb testing.TB, c net.Conn) *unix.TCPInfo {
	tb.Helper()
	var info *unix.TCPInfo
	var err error
	Control(tb, c, func(fd int) { info, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO) })
	if err != nil {
		tb.Fatalf("getsockopt TCP_INFO: %v", err)
	}
	return info
}

// Cookie reads getsockopt(SO_COOKIE), the id both backends report.
func Cookie(tb testing.TB, c net.Conn) uint64 {
	tb.Helper()
	var v uint64
	var err error
	Control(tb, c, func(fd int) { v, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE) })
	if err != nil {
		tb.Fatalf("getsockopt SO_COOKIE: %v", err)
	}
	return v
}

// Port returns the port of a TCP address.
func Port(a net.Addr) uint16 { return uint16(a.(*net.TCPAddr).Port) }

// Run runs b into a new Collector until the test ends; then it checks that
// Run returns cleanly after cancellation and closes b.
func Run(tb testing.TB, b backends.Backend) *Collector {
	tb.Helper()
	col, _ := Start(tb, b)
	return col
}

// Start is Run for a test that stops the run itself: stop cancels it,
// waits for it and returns Run's error (the same on every call). When the
// test ends, stop is called if it was not, its error reported, and b closed.
func Start(tb testing.TB, b backends.Backend) (col *Collector, stop func() error) {
	tb.Helper()
	col = &Collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, col) }()
	stop = sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			return errors.New("did not return after cancel")
		}
	})
	tb.Cleanup(func() {
		if err := stop(); err != nil {
			tb.Errorf("%s: Run: %v", b.Name(), err)
		}
		if err := b.Close(); err != nil {
			tb.Errorf("%s: Close: %v", b.Name(), err)
		}
	})
	return col, stop
}

// RunToEnd runs b into a new Collector for a test in which Run is to
// return on its own: returned waits for that and gives Run's error, or
// fails the test after timeout. When the test ends, Run's context is
// cancelled and b closed.
func RunToEnd(tb testing.TB, b backends.Backend, timeout time.Duration) (col *Collector, returned func() error) {
	tb.Helper()
	col = &Collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, col) }()
	tb.Cleanup(func() {
		cancel()
		if err := b.Close(); err != nil {
			tb.Errorf("%s: Close: %v", b.Name(), err)
		}
	})
	return col, func() error {
		tb.Helper()
		select {
		case err := <-done:
			return err
		case <-time.After(timeout):
			tb.Fatalf("%s: Run did not return within %s", b.Name(), timeout)
			return nil
		}
	}
}
