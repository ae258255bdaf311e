package main

import (
	"context"
	"fmt"
	"time"
)

// memory runs section 4 for one backend: flowd running while the suite
// opens memFlows idle connections whose clients are inside the monitored
// cgroup and whose servers are not, so that flowd tracks exactly one flow
// per connection. Peak and current RSS of the daemon, and for ebpf the
// memlock of its maps and what it costs (daemon and programs) over
// windows while the flows are tracked and idle.
func (s *suite) memory(ctx context.Context, backend string) MemoryRow {
	row := MemoryRow{Backend: backend, Command: s.command("memory/" + backend)}
	cfg := flowdConfig{Backend: backend}
	d, err := startDaemon(s.flowd, s.tmp, cfg, s.mon, s.own, -1)
	if err != nil {
		row.Err = err.Error()
		return row
	}
	defer d.kill()
	if err := sleep(ctx, s.opts.settle); err != nil {
		row.Err = err.Error()
		return row
	}
	if _, row.IdleRSSKB, err = memory(d.PID()); err != nil {
		row.Err = err.Error()
		return row
	}

	var idle *idleSet
	if err := s.mover.atHome(func() (err error) {
		idle, err = openIdle(ctx, s.opts.memFlows, s.mon.path)
		return err
	}); err != nil {
		row.Err = err.Error()
		return row
	}
	defer idle.close()
	// Let flowd see them all: the ebpf reader drains every 100 ms, the
	// netlink backend dumps every second.
	if err := sleep(ctx, max(3*time.Second, 3*s.opts.settle)); err != nil {
		row.Err = err.Error()
		return row
	}
	if row.HWMKB, row.RSSKB, err = memory(d.PID()); err != nil {
		row.Err = err.Error()
		return row
	}
	if backend == "ebpf" {
		if row.Maps, row.MapsBytes, err = programMaps(s.mon); err != nil {
			row.Err = err.Error()
			return row
		}
		if row.Cost, err = s.idleCost(ctx, d); err != nil {
			row.Err = err.Error()
			return row
		}
	}
	if err := d.stop(); err != nil {
		row.Err = err.Error()
		return row
	}
	row.Drops = d.Drops()
	if row.Flows, err = countEvents(d.Output, "open"); err != nil {
		row.Err = err.Error()
		return row
	}
	if row.Flows != s.opts.memFlows {
		row.Err = fmt.Sprintf("flowd reported %d open flows, want %d", row.Flows, s.opts.memFlows)
	}
	s.logf("  %s: %d flows, VmHWM %d kB, VmRSS %d kB (idle %d kB), maps %d bytes, %.4f CPU-s/s, drops %d",
		backend, row.Flows, row.HWMKB, row.RSSKB, row.IdleRSSKB, row.MapsBytes, row.Cost.Median, row.Drops)
	return row
}

// idleCost measures the ebpf daemon d and its programs over opts.windows
// windows, in CPU-s/s each.
func (s *suite) idleCost(ctx context.Context, d *daemon) (Summary, error) {
	progs, err := flowdPrograms(s.mon)
	if err != nil {
		return Summary{}, err
	}
	defer progs.Close()
	stats, err := enableBPFStats()
	if err != nil {
		return Summary{}, err
	}
	defer stats.Close()
	r := &running{d: d, progs: progs}
	var costs []float64
	for range s.opts.windows {
		w, err := r.measure(ctx, s.opts.window)
		if err != nil {
			return Summary{}, err
		}
		costs = append(costs, w.total())
	}
	return Summarize(costs), nil
}
