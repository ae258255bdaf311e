package main

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"time"
)

// overheadCase is one flowd configuration of section 1.
type overheadCase struct {
	name       string
	cfg        flowdConfig
	target     float64 // minimum throughput ratio; 0 = none (reported only)
	costTarget float64 // most CPU-s/s of flowd and its programs; 0 = none
	otlp       bool    // export to a collector on loopback (cfg.OTLP is set when the row runs)
}

func overheadCases() []overheadCase {
	return []overheadCase{
		{"ebpf-poll-1s", flowdConfig{Backend: "ebpf"}, 0.99, 0.005, false},
		// The default configuration exporting over OTLP too: at one sample
		// per flow per second the export must cost nothing measurable, so
		// the same targets.
		{"ebpf-poll-1s-otlp", flowdConfig{Backend: "ebpf"}, 0.99, 0.005, true},
		// Judged by what monitoring costs: on two vCPUs the throughput
		// ratio cannot resolve a few percent.
		{"ebpf-poll-0s", flowdConfig{Backend: "ebpf", Interval: 0, IntervalSet: true}, 0, 0.03, false},
		// The same with the members a study of congestion control plots
		// (docs/configuration.md, output.tcp_info): reported only, to show what the
		// bytes of a line cost.
		{"ebpf-poll-0s-members", flowdConfig{Backend: "ebpf", Interval: 0, IntervalSet: true, Members: ccMembers}, 0, 0, false},
		{"ebpf-transition", flowdConfig{Backend: "ebpf", Mode: "transition"}, 0.99, 0, false},
		{"netlink-1s", flowdConfig{Backend: "netlink"}, 0, 0, false},
		{"netlink-100ms", flowdConfig{Backend: "netlink", NetlinkInterval: 100 * time.Millisecond}, 0, 0, false},
	}
}

// ccMembers are 18 of tcp_info's 66 members: window, RTT, loss, rate and
// what limited the sender.
var ccMembers = []string{
	"delivery_rate_app_limited", "unacked", "lost", "retrans", "rtt", "rttvar", "snd_ssthresh",
	"snd_cwnd", "total_retrans", "pacing_rate", "bytes_acked", "notsent_bytes", "min_rtt",
	"delivery_rate", "busy_time", "rwnd_limited", "sndbuf_limited", "bytes_retrans",
}

// ciConfidence is the confidence of the interval around a median ratio.
const ciConfidence = 0.95

// overhead runs section 1 for one case: pairs of iperf3 runs, A without
// flowd and B with it, alternating (ABAB...). Configurations without a
// target get opts.pairsUntargeted pairs.
func (s *suite) overhead(ctx context.Context, c overheadCase) OverheadRow {
	if c.otlp {
		addr, err := s.collector(ctx)
		if err != nil {
			return OverheadRow{Name: c.name, Err: fmt.Sprintf("collector: %v", err)}
		}
		c.cfg.OTLP = addr
	}
	row := OverheadRow{Name: c.name, Config: c.cfg.Keys(), Target: c.target, CostTarget: c.costTarget, Command: s.command("overhead/" + c.name)}
	pairs := s.opts.pairs
	if c.target == 0 && c.costTarget == 0 {
		pairs = min(pairs, s.opts.pairsUntargeted)
	}
	// f0: the daemon with nothing to watch.
	f0, err := s.idleCPU(ctx, c.cfg)
	if err != nil {
		row.Err = fmt.Sprintf("idle run: %v", err)
		return row
	}
	row.IdleCPU = f0
	row.K = float64(runtime.NumCPU())
	if s.opts.cpu >= 0 {
		row.K = 1
	}
	var accounted, baseTraffic, traffic, flowdCPU, bpfCPU, bpfRuns, bpfNs, recs, costs []float64
	for i := range pairs {
		a, err := runIperf(ctx, s.mon, s.opts.iperfSecs, s.opts.cpu)
		if err != nil {
			row.Err = fmt.Sprintf("pair %d, A: %v", i+1, err)
			break
		}
		b, run, err := s.iperfWithFlowd(ctx, c.cfg)
		if err != nil {
			row.Err = fmt.Sprintf("pair %d, B: %v", i+1, err)
			break
		}
		wall := b.Wall.Seconds()
		u, f := b.CPU.Seconds()/wall, run.cpu.Seconds()/wall
		row.BaseGbps = append(row.BaseGbps, a.Gbps)
		row.WithGbps = append(row.WithGbps, b.Gbps)
		row.BaseOthers = append(row.BaseOthers, (a.Host-a.CPU).Seconds()/a.Wall.Seconds())
		row.WithOthers = append(row.WithOthers, (b.Host-b.CPU-run.cpu).Seconds()/wall)
		accounted = append(accounted, accountedRatio(u, run.bpf.cpu, f, f0, row.K))
		traffic = append(traffic, u)
		baseTraffic = append(baseTraffic, a.CPU.Seconds()/a.Wall.Seconds())
		flowdCPU = append(flowdCPU, f)
		bpfCPU = append(bpfCPU, run.bpf.cpu)
		costs = append(costs, f+run.bpf.cpu)
		bpfRuns = append(bpfRuns, run.bpf.runsPerSec)
		bpfNs = append(bpfNs, run.bpf.nsPerRun)
		recs = append(recs, float64(run.records)/wall)
		row.Drops += run.drops
		s.logf("  %s pair %d/%d: A %.2f Gbit/s, B %.2f Gbit/s (%.3f; accounted %.4f), traffic %.2f, flowd %.4f, BPF %.4f CPU-s/s (%.0f runs/s), %.0f records/s, others %.2f/%.2f CPU-s/s",
			c.name, i+1, pairs, a.Gbps, b.Gbps, b.Gbps/a.Gbps, accounted[i], u, f, run.bpf.cpu, run.bpf.runsPerSec,
			recs[i], row.BaseOthers[i], row.WithOthers[i])
	}
	ratios := Ratios(row.BaseGbps, row.WithGbps)
	row.Ratio = Summarize(ratios)
	if row.Ratio.N > 0 {
		sorted := Sorted(ratios)
		row.RatioCILo, row.RatioCIHi, row.RatioCICov = MedianCI(sorted, ciConfidence)
	}
	row.Accounted = Summarize(accounted)
	row.TrafficCPU = Summarize(traffic)
	row.BaseTrafficCPU = Summarize(baseTraffic)
	row.FlowdCPU = Summarize(flowdCPU)
	row.Cost = Summarize(costs)
	row.RecordsPerSec = Summarize(recs)
	if c.cfg.Backend == "ebpf" {
		row.BPFCPU, row.BPFRuns, row.BPFNsRun = Summarize(bpfCPU), Summarize(bpfRuns), Summarize(bpfNs)
	}
	return row
}

// accountedRatio is the throughput ratio that flowd's measured costs
// imply for a CPU-bound test: its idle cost f0 takes a fixed share of the
// k CPUs the traffic could use; the BPF program (b, inside the traffic's
// CPU u) and the daemon's work beyond idle (f - f0) grow with the traffic.
func accountedRatio(u, b, f, f0, k float64) float64 {
	return (1 - f0/k) * (u - b) / (u + max(f-f0, 0))
}

// idleCPU returns the daemon's CPU-s/s with cfg and no traffic.
func (s *suite) idleCPU(ctx context.Context, cfg flowdConfig) (float64, error) {
	d, err := startDaemon(s.flowd, s.tmp, cfg, s.mon, s.own, s.opts.cpu)
	if err != nil {
		return 0, err
	}
	defer d.kill()
	if err := sleep(ctx, s.opts.settle/2); err != nil {
		return 0, err
	}
	c0, err := d.CPU()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := sleep(ctx, s.opts.idle); err != nil {
		return 0, err
	}
	c1, err := d.CPU()
	if err != nil {
		return 0, err
	}
	wall := time.Since(t0)
	return (c1 - c0).Seconds() / wall.Seconds(), d.stop()
}

// flowdRun is what one B run measured about flowd.
type flowdRun struct {
	cpu     time.Duration // flowd's CPU during the iperf3 client's run
	bpf     bpfCost       // zero for netlink
	records int
	drops   uint64
}

// iperfWithFlowd starts flowd with cfg, runs iperf3 (with BPF statistics
// on, for ebpf), and stops flowd.
func (s *suite) iperfWithFlowd(ctx context.Context, cfg flowdConfig) (iperfResult, flowdRun, error) {
	var run flowdRun
	d, err := startDaemon(s.flowd, s.tmp, cfg, s.mon, s.own, s.opts.cpu)
	if err != nil {
		return iperfResult{}, run, err
	}
	defer d.kill()
	var (
		progs  programs
		before progStats
	)
	if cfg.Backend == "ebpf" {
		if progs, err = flowdPrograms(s.mon); err != nil {
			return iperfResult{}, run, err
		}
		defer progs.Close()
		closer, err := enableBPFStats()
		if err != nil {
			return iperfResult{}, run, err
		}
		defer closer.Close()
		if before, err = progs.stats(); err != nil {
			return iperfResult{}, run, err
		}
	}
	cpu0, err := d.CPU()
	if err != nil {
		return iperfResult{}, run, err
	}
	r, err := runIperf(ctx, s.mon, s.opts.iperfSecs, s.opts.cpu)
	if err != nil {
		return iperfResult{}, run, err
	}
	cpu1, err := d.CPU()
	if err != nil {
		return iperfResult{}, run, err
	}
	run.cpu = cpu1 - cpu0
	if progs != nil {
		after, err := progs.stats()
		if err != nil {
			return iperfResult{}, run, err
		}
		run.bpf = cost(before, after, r.Wall)
	}
	if err := d.stop(); err != nil {
		return iperfResult{}, run, err
	}
	run.drops = d.Drops()
	if run.records, err = countLines(d.Output); err != nil {
		return iperfResult{}, run, err
	}
	return r, run, nil
}

// pinned prefixes a command with taskset when cpu ≥ 0.
func pinned(cpu int, name string, args ...string) (string, []string) {
	if cpu < 0 {
		return name, args
	}
	return "taskset", append([]string{"-c", strconv.Itoa(cpu), name}, args...)
}
