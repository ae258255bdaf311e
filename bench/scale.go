package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/flow"
)

// Active flows of section 3: this many connections inside the monitored
// cgroup, each client writing activeBytes every activeTick.
const (
	activeFlows = 16
	activeBytes = 1024
	activeTick  = 10 * time.Millisecond
)

// scale runs section 3. The ebpf backend runs once, with the active flows
// inside the monitored cgroup; for each N it alternates windows without
// and with N idle connections outside the cgroup (A B A B ...), so that
// each N is compared with N=0 side by side. Then the netlink backend runs
// once more with the active flows, and for each N in turn flowd's CPU is
// measured, one netlink poll and ss -tin are timed.
func (s *suite) scale(ctx context.Context, ns []int) []ScaleRow {
	rows := make([]ScaleRow, len(ns))
	for i, n := range ns {
		rows[i] = ScaleRow{N: n, Command: s.command(fmt.Sprintf("scale/N=%d", n))}
	}
	fail := func(prefix string, err error) []ScaleRow {
		for i := range rows {
			if rows[i].Err == "" {
				rows[i].Err = prefix + err.Error()
			}
		}
		return rows
	}
	if err := s.scaleEBPF(ctx, rows); err != nil {
		return fail("ebpf: ", err)
	}
	if err := s.scaleNetlink(ctx, rows); err != nil {
		return fail("netlink: ", err)
	}
	return rows
}

// window is flowd's cost over one measurement window, in CPU-s/s.
type window struct{ flowd, bpf float64 }

func (w window) total() float64 { return w.flowd + w.bpf }

// running is a daemon with the active flows.
type running struct {
	d     *daemon
	a     *active
	progs programs // ebpf only
	stop  func() error
}

// startRunning starts flowd with cfg, opens the active flows in the
// monitored cgroup and lets them settle.
func (s *suite) startRunning(ctx context.Context, cfg flowdConfig) (*running, error) {
	d, err := startDaemon(s.flowd, s.tmp, cfg, s.mon, s.own, -1)
	if err != nil {
		return nil, err
	}
	r := &running{d: d}
	var closers []func() error
	r.stop = func() error {
		for _, c := range slices.Backward(closers) {
			_ = c()
		}
		if r.a != nil {
			r.a.close()
		}
		defer d.kill()
		return d.stop()
	}
	if err := s.mover.in(s.mon, func() (err error) {
		r.a, err = openActive(activeFlows, activeBytes, activeTick)
		return err
	}); err != nil {
		r.stop()
		return nil, err
	}
	if cfg.Backend == "ebpf" {
		if r.progs, err = flowdPrograms(s.mon); err != nil {
			r.stop()
			return nil, err
		}
		closers = append(closers, r.progs.Close)
		stats, err := enableBPFStats()
		if err != nil {
			r.stop()
			return nil, err
		}
		closers = append(closers, stats.Close)
	}
	if err := sleep(ctx, s.opts.settle); err != nil {
		r.stop()
		return nil, err
	}
	return r, nil
}

// measure returns flowd's cost over one window.
func (r *running) measure(ctx context.Context, d time.Duration) (window, error) {
	c0, err := r.d.CPU()
	if err != nil {
		return window{}, err
	}
	var p0 progStats
	if r.progs != nil {
		if p0, err = r.progs.stats(); err != nil {
			return window{}, err
		}
	}
	t0 := time.Now()
	if err := sleep(ctx, d); err != nil {
		return window{}, err
	}
	c1, err := r.d.CPU()
	if err != nil {
		return window{}, err
	}
	wall := time.Since(t0)
	w := window{flowd: (c1 - c0).Seconds() / wall.Seconds()}
	if r.progs != nil {
		p1, err := r.progs.stats()
		if err != nil {
			return window{}, err
		}
		w.bpf = cost(p0, p1, wall).cpu
	}
	return w, nil
}

// openIdleHome opens n idle connections outside the monitored cgroup.
func (s *suite) openIdleHome(ctx context.Context, n int) (*idleSet, error) {
	var idle *idleSet
	err := s.mover.atHome(func() (err error) {
		idle, err = openIdle(ctx, n, "")
		return err
	})
	return idle, err
}

func (s *suite) scaleEBPF(ctx context.Context, rows []ScaleRow) error {
	r, err := s.startRunning(ctx, flowdConfig{Backend: "ebpf"})
	if err != nil {
		return err
	}
	var zero []window
	for i := range rows {
		n := rows[i].N
		if n == 0 {
			continue
		}
		var at []window
		var growth []float64
		for p := range s.opts.scalePairs {
			w0, err := r.measure(ctx, s.opts.window)
			if err != nil {
				r.stop()
				return err
			}
			idle, err := s.openIdleHome(ctx, n)
			if err != nil {
				r.stop()
				return err
			}
			if err := sleep(ctx, s.opts.settle/3); err != nil {
				idle.close()
				r.stop()
				return err
			}
			wn, err := r.measure(ctx, s.opts.window)
			rows[i].TCPInUse = tcpInUse()
			idle.close()
			if err != nil {
				r.stop()
				return err
			}
			// Tearing down N connections keeps the host busy for a while
			// (their sockets are freed later), which raised flowd's cost
			// in the next window without them by up to a third at
			// N=30000: that window waits as the one with them did.
			if err := sleep(ctx, s.opts.settle/3); err != nil {
				r.stop()
				return err
			}
			zero, at = append(zero, w0), append(at, wn)
			growth = append(growth, wn.total()/w0.total())
			s.logf("  ebpf N=%d pair %d/%d: N=0 %.5f+%.6f, N=%d %.5f+%.6f CPU-s/s (%.2f)",
				n, p+1, s.opts.scalePairs, w0.flowd, w0.bpf, n, wn.flowd, wn.bpf, growth[p])
		}
		rows[i].EBPFCPU, rows[i].EBPFBPF = summarizeWindows(at)
		rows[i].EBPFGrowth = Summarize(growth)
	}
	if len(zero) == 0 { // only N=0 was asked for
		for range s.opts.windows {
			w, err := r.measure(ctx, s.opts.window)
			if err != nil {
				r.stop()
				return err
			}
			zero = append(zero, w)
		}
	}
	for i := range rows {
		if rows[i].N == 0 {
			rows[i].EBPFCPU, rows[i].EBPFBPF = summarizeWindows(zero)
			rows[i].TCPInUse = tcpInUse()
		}
	}
	return r.stop()
}

func summarizeWindows(ws []window) (flowd, bpf Summary) {
	var f, b []float64
	for _, w := range ws {
		f, b = append(f, w.flowd), append(b, w.bpf)
	}
	return Summarize(f), Summarize(b)
}

func (s *suite) scaleNetlink(ctx context.Context, rows []ScaleRow) error {
	r, err := s.startRunning(ctx, flowdConfig{Backend: "netlink"})
	if err != nil {
		return err
	}
	for i := range rows {
		row := &rows[i]
		err := func() error {
			idle, err := s.openIdleHome(ctx, row.N)
			if err != nil {
				return err
			}
			defer idle.close()
			if err := sleep(ctx, s.opts.settle); err != nil {
				return err
			}
			var cpus []float64
			for range s.opts.windows {
				w, err := r.measure(ctx, s.opts.window)
				if err != nil {
					return err
				}
				cpus = append(cpus, w.flowd)
			}
			row.NetlinkCPU = Summarize(cpus)
			if row.N == 0 || row.TCPInUse == 0 {
				row.TCPInUse = tcpInUse()
			}
			dumps, dumpCPU, err := timeNetlinkPolls(ctx, s.mon, s.opts.dumpReps)
			if err != nil {
				return err
			}
			row.DumpMs, row.DumpCPUMs = Summarize(Millis(dumps)), Summarize(Millis(dumpCPU))
			var ss []time.Duration
			if ss, row.SSLines, err = timeSS(ctx, s.opts.dumpReps); err != nil {
				return err
			}
			row.SSMs = Summarize(Millis(ss))
			return nil
		}()
		if err != nil {
			r.stop()
			return err
		}
		s.logf("  netlink N=%d (TCP inuse %d): %.5f CPU-s/s, poll %.2f ms (CPU %.2f ms), ss -tin %.1f ms",
			row.N, row.TCPInUse, row.NetlinkCPU.Median, row.DumpMs.Median, row.DumpCPUMs.Median, row.SSMs.Median)
	}
	return r.stop()
}

// timeNetlinkPolls times reps single polls of flowd's netlink backend on
// the monitored cgroup: one inet_diag dump (IPv4 and IPv6) that the kernel
// filters to the cgroup's sockets, parsed and diffed. A poll is
// over when the backend publishes its flow count (checked every 100 µs).
// It returns the wall time and the CPU time of the thread that ran it
// (Run is called on a locked thread; the kernel builds the dump in its
// recvmsg calls, so that is the dump's CPU too).
func timeNetlinkPolls(ctx context.Context, mon *tempCgroup, reps int) (wall, cpu []time.Duration, err error) {
	discard := flow.SinkFunc(func(*flow.Record) error { return nil })
	for range reps {
		w, c, err := timeNetlinkPoll(ctx, mon, discard)
		if err != nil {
			return nil, nil, err
		}
		wall, cpu = append(wall, w), append(cpu, c)
	}
	return wall, cpu, nil
}

func timeNetlinkPoll(ctx context.Context, mon *tempCgroup, sink flow.Sink) (wall, cpu time.Duration, err error) {
	b, err := netlink.New(netlink.Config{Cgroup: mon.path, Interval: time.Hour})
	if err != nil {
		return 0, 0, err
	}
	defer b.Close()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tids, start := make(chan int), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the thread ends with the goroutine
		tids <- unix.Gettid()
		<-start
		done <- b.Run(rctx, sink)
	}()
	tid := <-tids
	c0, err := threadCPU(tid)
	if err != nil {
		close(start)
		return 0, 0, err
	}
	t0 := time.Now()
	close(start)
	for b.Flows() == 0 {
		select {
		case err := <-done:
			return 0, 0, fmt.Errorf("netlink poll: %w", errors.Join(err, errors.New("returned before a poll")))
		case <-time.After(100 * time.Microsecond):
		}
		if time.Since(t0) > 30*time.Second {
			cancel()
			<-done
			return 0, 0, errors.New("netlink poll: no flow tracked after 30 s")
		}
	}
	wall = time.Since(t0)
	c1, cerr := threadCPU(tid)
	cancel()
	if err := <-done; err != nil {
		return 0, 0, fmt.Errorf("netlink poll: %w", err)
	}
	if cerr != nil {
		return 0, 0, cerr
	}
	return wall, c1 - c0, nil
}

// threadCPU returns the CPU time of one thread of this process
// (/proc/self/task/TID/schedstat: ns on the CPU, ns waiting, slices).
func threadCPU(tid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("empty schedstat of thread %d", tid)
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parsing schedstat of thread %d: %w", tid, err)
	}
	return time.Duration(ns), nil
}

// timeSS times reps runs of ss -tin (the whole command) and returns the
// number of lines it printed.
func timeSS(ctx context.Context, reps int) ([]time.Duration, int, error) {
	var (
		out   []time.Duration
		lines int
	)
	for range reps {
		var buf bytes.Buffer
		cmd := exec.CommandContext(ctx, "ss", "-tin")
		cmd.Stdout = &buf
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return nil, 0, fmt.Errorf("ss -tin: %w", err)
		}
		out = append(out, time.Since(start))
		lines = bytes.Count(buf.Bytes(), []byte{'\n'})
	}
	return out, lines, nil
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
