package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// farm holds many established, idle loopback connections. Its listeners
// sit on several 127.0.2.x addresses (one port) and its clients connect
// from several 127.0.1.x addresses: each (source, destination) pair has its
// own ephemeral port range, so tens of thousands of connections fit.
// Connections made by a farm are raw file descriptors: no goroutine or
// poller per connection, so the suite itself stays small.
type farm struct {
	lns  []int
	dsts []unix.SockaddrInet4
	srcs [][4]byte
}

const (
	farmListeners = 4
	farmSources   = 8
	acceptTimeout = 10 * time.Second
)

// newFarm opens the listeners in the calling process's current cgroup.
func newFarm() (*farm, error) {
	var err error
	for range 10 {
		var f *farm
		if f, err = tryFarm(); err == nil {
			return f, nil
		}
	}
	return nil, err
}

// tryFarm binds the first listener to any port and the others to the same
// port on their addresses, which may be taken there.
func tryFarm() (*farm, error) {
	f := &farm{}
	port := 0
	for i := range farmListeners {
		addr := [4]byte{127, 0, 2, byte(1 + i)}
		fd, got, err := listenTCP4(addr, port)
		if err != nil {
			f.close()
			return nil, err
		}
		port = got
		f.lns = append(f.lns, fd)
		f.dsts = append(f.dsts, unix.SockaddrInet4{Addr: addr, Port: port})
	}
	for i := range farmSources {
		f.srcs = append(f.srcs, [4]byte{127, 0, 1, byte(1 + i)})
	}
	return f, nil
}

func listenTCP4(addr [4]byte, port int) (fd, boundPort int, err error) {
	fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	fail := func(what string, err error) (int, int, error) {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("%s %d.%d.%d.%d:%d: %w", what, addr[0], addr[1], addr[2], addr[3], port, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("setting SO_REUSEADDR on", err)
	}
	// accept(2) honours the receive timeout: a lost connection cannot
	// block the suite for ever.
	tv := unix.NsecToTimeval(acceptTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("setting SO_RCVTIMEO on", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: addr, Port: port}); err != nil {
		return fail("binding", err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		return fail("listening on", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname of", err)
	}
	return fd, sa.(*unix.SockaddrInet4).Port, nil
}

func (f *farm) close() {
	for _, fd := range f.lns {
		unix.Close(fd)
	}
	f.lns = nil
}

// conns is a set of connections made by a farm: both ends' descriptors.
type conns struct {
	mu      sync.Mutex
	clients []int
	servers []int
}

// Len returns the number of connections.
func (c *conns) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.clients)
}

// open makes n connections with the given number of dialing goroutines.
// Client sockets belong to the caller's cgroup at the time, accepted ones
// to the listeners' cgroup.
func (f *farm) open(ctx context.Context, n, workers int) (*conns, error) {
	c := &conns{}
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		errMu sync.Mutex
		errs  []error
	)
	fail := func(err error) {
		errMu.Lock()
		errs = append(errs, err)
		errMu.Unlock()
	}
	for j, ln := range f.lns {
		want := n / len(f.lns)
		if j < n%len(f.lns) {
			want++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range want {
				fd, err := accept(ln)
				if err != nil {
					fail(err)
					return
				}
				c.mu.Lock()
				c.servers = append(c.servers, fd)
				c.mu.Unlock()
			}
		}()
	}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				dst := f.dsts[i%len(f.dsts)]
				src := f.srcs[(i/len(f.dsts))%len(f.srcs)]
				fd, err := dialFrom(src, &dst)
				if err != nil {
					fail(err)
					return
				}
				c.mu.Lock()
				c.clients = append(c.clients, fd)
				c.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.abort()
		return nil, fmt.Errorf("opening %d connections: %w", n, err)
	}
	if err := ctx.Err(); err != nil {
		c.abort()
		return nil, err
	}
	return c, nil
}

// dialFrom connects a blocking socket from src (any port) to dst.
func dialFrom(src [4]byte, dst *unix.SockaddrInet4) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	// Pick the port at connect time, per 4-tuple, not at bind time.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("setting IP_BIND_ADDRESS_NO_PORT: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("binding to %v: %w", src, err)
	}
	if err := connect(fd, dst); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connecting to %v:%d: %w", dst.Addr, dst.Port, err)
	}
	return fd, nil
}

// accept accepts one connection on a blocking listener. With SO_RCVTIMEO
// set, a signal (the Go runtime sends SIGURG to preempt) interrupts
// accept(2) with EINTR even under SA_RESTART: it is tried again.
func accept(ln int) (int, error) {
	for {
		fd, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("accepting: %w", err)
		}
		return fd, nil
	}
}

// connect connects a blocking socket. A connect(2) interrupted by a signal
// goes on in the background: calling it again reports EALREADY until the
// handshake is over, then EISCONN.
func connect(fd int, dst *unix.SockaddrInet4) error {
	err := unix.Connect(fd, dst)
	for deadline := time.Now().Add(acceptTimeout); err == unix.EINTR || err == unix.EALREADY; {
		if time.Now().After(deadline) {
			return unix.ETIMEDOUT
		}
		if err == unix.EALREADY {
			time.Sleep(time.Millisecond)
		}
		err = unix.Connect(fd, dst)
	}
	if err == unix.EISCONN {
		return nil
	}
	return err
}

// abort closes every connection with a reset (SO_LINGER 0): no TIME_WAIT
// socket stays behind to hold ports or to be dumped.
func (c *conns) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	lin := &unix.Linger{Onoff: 1, Linger: 0}
	for _, fds := range [][]int{c.clients, c.servers} {
		for _, fd := range fds {
			_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, lin)
			unix.Close(fd)
		}
	}
	c.clients, c.servers = nil, nil
}

// active is a set of loopback connections, both ends in the cgroup they
// were made in, whose clients write a little every tick so that they stay
// active (RTT callbacks, samples) for the whole measurement.
type active struct {
	ln      net.Listener
	clients []net.Conn
	servers []net.Conn
	stopped chan struct{}
	wg      sync.WaitGroup
}

// openActive makes n connections in the calling process's current cgroup
// and starts writing size bytes on each client every tick.
func openActive(n, size int, tick time.Duration) (*active, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	a := &active{ln: ln, stopped: make(chan struct{})}
	for range n {
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				c = nil
			}
			accepted <- c
		}()
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			a.close()
			return nil, fmt.Errorf("dialing: %w", err)
		}
		s := <-accepted
		if s == nil {
			c.Close()
			a.close()
			return nil, errors.New("accept failed")
		}
		a.clients = append(a.clients, c)
		a.servers = append(a.servers, s)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			_, _ = io.Copy(io.Discard, s)
		}()
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		buf := make([]byte, size)
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-a.stopped:
				return
			case <-t.C:
				for _, c := range a.clients {
					_, _ = c.Write(buf)
				}
			}
		}
	}()
	return a, nil
}

// close stops the writes and closes every connection.
func (a *active) close() {
	select {
	case <-a.stopped:
		return
	default:
		close(a.stopped)
	}
	a.ln.Close()
	for _, c := range a.clients {
		c.Close()
	}
	for _, c := range a.servers {
		c.Close()
	}
	a.wg.Wait()
}

// tcpInUse returns "TCP: inuse" of /proc/net/sockstat.
func tcpInUse() int {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return -1
	}
	return parseSockstat(string(b))
}

func parseSockstat(s string) int {
	for _, line := range strings.Split(s, "\n") {
		rest, ok := strings.CutPrefix(line, "TCP: inuse ")
		if !ok {
			continue
		}
		f, _, _ := strings.Cut(rest, " ")
		n, err := strconv.Atoi(f)
		if err != nil {
			return -1
		}
		return n
	}
	return -1
}
