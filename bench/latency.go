package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/sink"
)

// tailPoll is how often the latency tailer reads new records.
const tailPoll = 2 * time.Millisecond

// latency runs section 5: flowd with its defaults (ebpf, poll 1 s, flush
// 100 ms) while the suite makes short connections inside the monitored
// cgroup, spread over opts.latSpread. The server writes one byte and
// closes; the client reads to EOF and closes, so the client socket goes
// LAST_ACK -> CLOSE as soon as the server's ACK of its FIN arrives, which
// on loopback is at once. The time right after the client's close() is
// compared with the time its close record (found by SO_COOKIE) appears in
// flowd's output file, read every tailPoll.
func (s *suite) latency(ctx context.Context) LatencyRow {
	row := LatencyRow{Command: s.command("latency/close"), Conns: s.opts.conns}
	d, err := startDaemon(s.flowd, s.tmp, flowdConfig{Backend: "ebpf"}, s.mon, s.own, -1)
	if err != nil {
		row.Err = err.Error()
		return row
	}
	defer d.kill()
	t, err := startTail(d.Output)
	if err != nil {
		row.Err = err.Error()
		return row
	}
	defer t.stop()

	closed := make(map[uint64]time.Time, s.opts.conns)
	if err := s.mover.in(s.mon, func() error {
		return shortConns(ctx, s.opts.conns, s.opts.latSpread, func(cookie uint64, at time.Time) {
			closed[cookie] = at
		})
	}); err != nil {
		row.Err = err.Error()
		return row
	}
	deadline := time.Now().Add(5 * time.Second)
	for t.count(closed) < len(closed) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	t.stop()
	if err := d.stop(); err != nil {
		row.Err = err.Error()
	}
	row.Drops = d.Drops()

	var lat, kern []float64
	for cookie, at := range closed {
		seen, ok := t.seen[cookie]
		if !ok {
			row.Missing++
			continue
		}
		lat = append(lat, float64(seen.at.Sub(at))/float64(time.Millisecond))
		kern = append(kern, float64(seen.kernel.Sub(at))/float64(time.Millisecond))
	}
	row.Missing += s.opts.conns - len(closed)
	if t.err != nil && row.Err == "" {
		row.Err = t.err.Error()
	}
	slices.Sort(lat)
	slices.Sort(kern)
	if len(lat) > 0 {
		row.P50Ms, row.P99Ms = Quantile(lat, 0.5), Quantile(lat, 0.99)
		row.MinMs, row.MaxMs = lat[0], lat[len(lat)-1]
		row.KernelP50Ms = Quantile(kern, 0.5)
	}
	s.logf("  %d connections: p50 %.1f ms, p99 %.1f ms, max %.1f ms, missing %d (close -> kernel record p50 %.3f ms)",
		len(closed), row.P50Ms, row.P99Ms, row.MaxMs, row.Missing, row.KernelP50Ms)
	return row
}

// shortConns makes n connections to a listener of its own, one every
// spread/n, and calls done with each client's cookie and the time its
// close() returned. Sockets belong to the caller's cgroup.
func shortConns(ctx context.Context, n int, spread time.Duration, done func(cookie uint64, at time.Time)) error {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte{'x'})
			c.Close()
		}
	}()
	tick := time.NewTicker(max(spread/time.Duration(n), time.Microsecond))
	defer tick.Stop()
	for range n {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			return fmt.Errorf("dialing: %w", err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			c.Close()
			return fmt.Errorf("reading to EOF: %w", err)
		}
		cookie, err := socketCookie(c)
		if err != nil {
			c.Close()
			return err
		}
		c.Close()
		done(cookie, time.Now())
	}
	return nil
}

// socketCookie reads getsockopt(SO_COOKIE), the id flowd reports.
func socketCookie(c net.Conn) (uint64, error) {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		v    uint64
		gerr error
	)
	if err := rc.Control(func(fd uintptr) {
		v, gerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); err != nil {
		return 0, err
	}
	if gerr != nil {
		return 0, fmt.Errorf("getsockopt SO_COOKIE: %w", gerr)
	}
	return v, nil
}

// tail follows a JSON Lines file and notes when each close record appears.
type tail struct {
	mu   sync.Mutex
	seen map[uint64]seenClose
	err  error
	quit chan struct{}
	done chan struct{}
}

type seenClose struct {
	at     time.Time // when the tailer read it
	kernel time.Time // the record's own time
}

func startTail(path string) (*tail, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening flowd's output: %w", err)
	}
	t := &tail{seen: make(map[uint64]seenClose), quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(t.done)
		defer f.Close()
		t.follow(f)
	}()
	return t, nil
}

func (t *tail) follow(f *os.File) {
	var (
		pending []byte
		buf     = make([]byte, 1<<20)
		rec     flow.Record
		marker  = []byte(`"event":"close"`)
	)
	tick := time.NewTicker(tailPoll)
	defer tick.Stop()
	for {
		for {
			n, err := f.Read(buf)
			pending = append(pending, buf[:n]...)
			if err != nil && !errors.Is(err, io.EOF) {
				t.fail(err)
				return
			}
			if n < len(buf) {
				break
			}
		}
		now := time.Now()
		for {
			i := bytes.IndexByte(pending, '\n')
			if i < 0 {
				break
			}
			line := pending[:i]
			if bytes.Contains(line, marker) {
				if err := sink.ParseJSON(line, &rec); err != nil {
					t.fail(fmt.Errorf("parsing flowd's output: %w", err))
					return
				}
				t.mu.Lock()
				if _, ok := t.seen[rec.Cookie]; !ok {
					t.seen[rec.Cookie] = seenClose{at: now, kernel: rec.Time}
				}
				t.mu.Unlock()
			}
			pending = pending[i+1:]
		}
		select {
		case <-t.quit:
			return
		case <-tick.C:
		}
	}
}

func (t *tail) fail(err error) {
	t.mu.Lock()
	t.err = err
	t.mu.Unlock()
}

// count returns how many of the cookies have been seen.
func (t *tail) count(cookies map[uint64]time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for c := range cookies {
		if _, ok := t.seen[c]; ok {
			n++
		}
	}
	return n
}

// stop ends the tailer; seen and err may then be read without the lock.
func (t *tail) stop() {
	select {
	case <-t.quit:
	default:
		close(t.quit)
	}
	<-t.done
}
