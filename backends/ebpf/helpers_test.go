package ebpf

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
)

// collector is a Sink that keeps copies of every record.
type collector struct {
	mu   sync.Mutex
	recs []backends.Record
}

func (c *collector) Write(r *backends.Record) error {
	c.mu.Lock()
	c.recs = append(c.recs, *r)
	c.mu.Unlock()
	return nil
}

// records returns the records of one flow (by cookie), or all when cookie is 0.
func (c *collector) records(cookie uint64) []backends.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []backends.Record
	for _, r := range c.recs {
		if cookie == 0 || r.Cookie == cookie {
			out = append(out, r)
		}
	}
	return out
}

func (c *collector) find(cookie uint64, ev backends.Event) []backends.Record {
	var out []backends.Record
	for _, r := range c.records(cookie) {
		if r.Event == ev {
			out = append(out, r)
		}
	}
	return out
}

// waitFor polls cond until it is true or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startBackend loads the backend and runs it until the test ends.
func startBackend(t *testing.T, cfg Config) (*Backend, *collector) {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	col := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, col) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b, col
}

// rawConn returns the fd-level handle of a TCP connection.
func rawConn(t *testing.T, c net.Conn) syscall.RawConn {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func tcpInfo(t *testing.T, c net.Conn) *unix.TCPInfo {
	t.Helper()
	var info *unix.TCPInfo
	var err error
	if cerr := rawConn(t, c).Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatalf("getsockopt TCP_INFO: %v", err)
	}
	return info
}

func socketCookie(t *testing.T, c net.Conn) uint64 {
	t.Helper()
	var v uint64
	var err error
	if cerr := rawConn(t, c).Control(func(fd uintptr) {
		v, err = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatalf("getsockopt SO_COOKIE: %v", err)
	}
	return v
}

// pair is one loopback TCP connection: client and the server's accepted end.
type pair struct {
	client, server net.Conn
}

// withCongestion is a net.Dialer/ListenConfig Control function that sets
// the congestion control before the connection is made (this host's
// default is bbr; tests choose theirs explicitly).
func withCongestion(name string) func(network, address string, c syscall.RawConn) error {
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

// dialPair connects to ln with cubic and accepts the connection. Accepted
// connections inherit the listener's congestion control.
func dialPair(t *testing.T, ln net.Listener) pair {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	d := net.Dialer{Control: withCongestion("cubic")}
	client, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial %s: %v", ln.Addr(), err)
	}
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return pair{client, server}
}

// send writes n bytes from client to server and waits until the server has
// read them all.
func (p pair) send(t *testing.T, n int) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, p.server, int64(n))
		errc <- err
	}()
	buf := make([]byte, 64<<10)
	for sent := 0; sent < n; {
		k := min(len(buf), n-sent)
		if _, err := p.client.Write(buf[:k]); err != nil {
			t.Fatalf("write: %v", err)
		}
		sent += k
	}
	if err := <-errc; err != nil {
		t.Fatalf("read: %v", err)
	}
}

// quiesce waits until everything the client sent is acknowledged.
func (p pair) quiesce(t *testing.T) {
	t.Helper()
	waitFor(t, "client data acknowledged", 5*time.Second, func() bool {
		return tcpInfo(t, p.client).Unacked == 0
	})
}

// readEOF reads from c until the peer's FIN.
func readEOF(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("reading to EOF: %v", err)
	}
}
