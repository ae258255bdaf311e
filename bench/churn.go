package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Section 6: short connections. A helper process (this program, run as
// "bench churn-helper") makes loopback connections as fast as its clients
// can, each carrying churnSize bytes each way, in a network namespace of
// its own (so that the TIME_WAIT sockets it leaves go with it, not into
// the host's table) and in the monitored cgroup: both ends are flows that
// flowd records.
const (
	churnHelperArg = "churn-helper"
	churnRowName   = "churn/ebpf"
	// targetChurnRatio is the least connection rate with flowd at its
	// defaults, as a share of the rate without it.
	targetChurnRatio = 0.9
)

// churnOptions are the section's flags.
type churnOptions struct {
	pairs   int
	secs    time.Duration
	clients int
	size    int
	stall   time.Duration
}

func (c *churnOptions) register(fs *flag.FlagSet) {
	fs.IntVar(&c.pairs, "churn-pairs", 6, "section 6: pairs of churn runs without and with flowd")
	fs.DurationVar(&c.secs, "churn-time", 3*time.Second, "section 6: length of one churn run")
	fs.IntVar(&c.clients, "churn-clients", 32, "section 6: concurrent clients")
	fs.IntVar(&c.size, "churn-size", 4096, "section 6: bytes each way per connection")
	fs.DurationVar(&c.stall, "churn-stall", 0, "section 6: stop flowd (SIGSTOP) this long a third into each B run, as a reader that falls behind")
}

func (c *churnOptions) check() error {
	if c.pairs < 1 || c.secs <= 0 || c.clients < 1 || c.size < 1 {
		return errors.New("-churn-pairs, -churn-time, -churn-clients and -churn-size must be positive")
	}
	if c.stall < 0 || c.stall >= c.secs {
		return fmt.Errorf("-churn-stall %s is not between 0 and -churn-time", c.stall)
	}
	return nil
}

// ChurnRow is section 6: runs without flowd (A) and with flowd at its
// defaults (B), alternating, AB then BA.
type ChurnRow struct {
	Name    string  `json:"name"`
	Config  string  `json:"config"`
	Command string  `json:"command"`
	Target  float64 `json:"target"`
	Clients int     `json:"clients"`
	Size    int     `json:"bytes_each_way"`
	Seconds float64 `json:"seconds"` // of one run
	// StallMs is how long flowd was stopped in each B run (-churn-stall).
	StallMs float64 `json:"stall_ms,omitempty"`

	BaseConnsPerSec []float64 `json:"base_conns_per_sec"` // A runs, in order
	WithConnsPerSec []float64 `json:"with_conns_per_sec"` // B runs, in order
	// Ratio is WithConnsPerSec[i]/BaseConnsPerSec[i] per pair, with a
	// distribution-free confidence interval of its median.
	Ratio      Summary `json:"ratio"`
	RatioCILo  float64 `json:"ratio_ci_lo"`
	RatioCIHi  float64 `json:"ratio_ci_hi"`
	RatioCICov float64 `json:"ratio_ci_coverage"`
	// Per connection, in CPU µs, which the machine's other jobs move much
	// less than the rates: the traffic's own (A runs), flowd's and its
	// programs' (B runs). Accounted is the ratio they imply for a churn
	// that is CPU-bound: traffic / (traffic + flowd + programs), per pair.
	TrafficUsPerConn Summary `json:"traffic_us_per_conn"`
	FlowdUsPerConn   Summary `json:"flowd_us_per_conn"`
	BPFUsPerConn     Summary `json:"bpf_us_per_conn"`
	Accounted        Summary `json:"accounted"`

	// Per connection (both of its ends) in the B runs: records and bytes
	// of JSON Lines written, and the bytes of one line of each event.
	RecordsPerConn Summary            `json:"records_per_conn"`
	BytesPerConn   Summary            `json:"bytes_per_conn"`
	EventsPerConn  map[string]float64 `json:"events_per_conn"` // over all B runs
	BytesPerLine   map[string]float64 `json:"bytes_per_line"`  // over all B runs
	RecordsPerSec  Summary            `json:"records_per_sec"`
	// TrafficCPU is the CPU-s/s of the monitored cgroup (the helper and
	// the kernel work it causes), FlowdCPU the daemon's and BPFCPU its
	// programs' run time per second (B runs).
	BaseTrafficCPU Summary `json:"base_traffic_cpu"`
	TrafficCPU     Summary `json:"traffic_cpu"`
	FlowdCPU       Summary `json:"flowd_cpu"`
	BPFCPU         Summary `json:"bpf_cpu"`
	BPFNsRun       Summary `json:"bpf_ns_per_run"`
	// Drops are the records the program could not send (ring buffer
	// full); Missing the connection ends without a close record.
	Drops   uint64 `json:"drops"`
	Missing int    `json:"missing_close_records"`
	Err     string `json:"error,omitempty"`
}

// churn runs section 6.
func (s *suite) churn(ctx context.Context) ChurnRow {
	o := s.opts.churn
	cfg := flowdConfig{Backend: "ebpf"}
	row := ChurnRow{Name: churnRowName, Config: cfg.Keys(), Command: s.command(churnRowName), Target: targetChurnRatio,
		Clients: o.clients, Size: o.size, Seconds: o.secs.Seconds(), StallMs: float64(o.stall) / float64(time.Millisecond)}
	var (
		recsPerConn, bytesPerConn, recsPerSec, baseCPU, traffic, flowdCPU, bpfCPU, bpfNs []float64
		trafficUs, flowdUs, bpfUs, accounted                                             []float64
		events, eventBytes                                                               = map[string]int{}, map[string]int{}
		conns                                                                            int
	)
	for i := range o.pairs {
		var a, b churnResult
		var run churnFlowd
		for _, with := range [][2]bool{{false, true}, {true, false}}[i%2] {
			var err error
			if with {
				b, run, err = s.churnWithFlowd(ctx, cfg)
			} else {
				a, err = s.churnRun(ctx)
			}
			if err != nil {
				label := "A"
				if with {
					label = "B"
				}
				row.Err = fmt.Sprintf("pair %d, %s: %v", i+1, label, err)
				break
			}
		}
		if row.Err != "" {
			break
		}
		row.BaseConnsPerSec = append(row.BaseConnsPerSec, a.rate())
		row.WithConnsPerSec = append(row.WithConnsPerSec, b.rate())
		baseCPU = append(baseCPU, a.cpu.Seconds()/a.Seconds)
		traffic = append(traffic, b.cpu.Seconds()/b.Seconds)
		flowdCPU = append(flowdCPU, run.cpu.Seconds()/b.Seconds)
		bpfCPU = append(bpfCPU, run.bpf.cpu)
		bpfNs = append(bpfNs, run.bpf.nsPerRun)
		tA := 1e6 * a.cpu.Seconds() / float64(a.Conns)
		fB := 1e6 * run.cpu.Seconds() / float64(b.Conns)
		bB := 1e6 * run.bpf.cpu * b.Seconds / float64(b.Conns)
		trafficUs, flowdUs, bpfUs = append(trafficUs, tA), append(flowdUs, fB), append(bpfUs, bB)
		accounted = append(accounted, tA/(tA+fB+bB))
		ends := 2 * b.Conns
		recsPerConn = append(recsPerConn, float64(run.out.lines)/float64(max(b.Conns, 1)))
		bytesPerConn = append(bytesPerConn, float64(run.out.bytes)/float64(max(b.Conns, 1)))
		recsPerSec = append(recsPerSec, float64(run.out.lines)/b.Seconds)
		for ev, n := range run.out.events {
			events[ev] += n
			eventBytes[ev] += run.out.eventBytes[ev]
		}
		conns += b.Conns
		row.Drops += run.drops
		row.Missing += max(0, ends-run.out.events["close"])
		s.logf("  pair %d/%d: A %.0f conn/s, B %.0f conn/s (%.3f; accounted %.3f); %.1f records, %.0f bytes per connection; µs per connection: traffic %.1f, flowd %.1f, BPF %.1f; drops %d, close records missing %d",
			i+1, o.pairs, a.rate(), b.rate(), b.rate()/a.rate(), accounted[i], recsPerConn[i], bytesPerConn[i], tA, fB, bB,
			run.drops, max(0, ends-run.out.events["close"]))
	}
	ratios := Ratios(row.BaseConnsPerSec, row.WithConnsPerSec)
	row.Ratio = Summarize(ratios)
	if row.Ratio.N > 0 {
		row.RatioCILo, row.RatioCIHi, row.RatioCICov = MedianCI(Sorted(ratios), ciConfidence)
	}
	row.RecordsPerConn, row.BytesPerConn, row.RecordsPerSec = Summarize(recsPerConn), Summarize(bytesPerConn), Summarize(recsPerSec)
	row.BaseTrafficCPU, row.TrafficCPU = Summarize(baseCPU), Summarize(traffic)
	row.FlowdCPU, row.BPFCPU, row.BPFNsRun = Summarize(flowdCPU), Summarize(bpfCPU), Summarize(bpfNs)
	row.TrafficUsPerConn, row.FlowdUsPerConn, row.BPFUsPerConn = Summarize(trafficUs), Summarize(flowdUs), Summarize(bpfUs)
	row.Accounted = Summarize(accounted)
	if conns > 0 {
		row.EventsPerConn, row.BytesPerLine = map[string]float64{}, map[string]float64{}
		for ev, n := range events {
			row.EventsPerConn[ev] = float64(n) / float64(conns)
			row.BytesPerLine[ev] = float64(eventBytes[ev]) / float64(n)
		}
	}
	return row
}

// churnResult is what one run of the helper reports, and the monitored
// cgroup's CPU time meanwhile.
type churnResult struct {
	Conns   int     `json:"conns"`   // connections made and closed
	Errors  int     `json:"errors"`  // connections that failed
	Seconds float64 `json:"seconds"` // from the first connect to the last close
	cpu     time.Duration
}

func (r churnResult) rate() float64 { return float64(r.Conns) / r.Seconds }

// churnRun runs the helper once in the monitored cgroup, in a network
// namespace of its own.
func (s *suite) churnRun(ctx context.Context) (churnResult, error) {
	var res churnResult
	self, err := os.Executable()
	if err != nil {
		return res, fmt.Errorf("finding this program: %w", err)
	}
	o := s.opts.churn
	cmd := exec.CommandContext(ctx, self, churnHelperArg,
		"-clients", fmt.Sprint(o.clients), "-size", fmt.Sprint(o.size), "-time", o.secs.String())
	cmd.Stderr = s.log
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: s.mon.fd, Cloneflags: syscall.CLONE_NEWNET}
	cpu0, err := s.mon.cpu()
	if err != nil {
		return res, err
	}
	out, err := cmd.Output()
	if err != nil {
		return res, fmt.Errorf("churn helper: %w", err)
	}
	cpu1, err := s.mon.cpu()
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("churn helper's result %q: %w", out, err)
	}
	if res.Conns == 0 || res.Seconds <= 0 {
		return res, fmt.Errorf("churn helper made no connections (%d failed)", res.Errors)
	}
	res.cpu = cpu1 - cpu0
	return res, nil
}

// churnFlowd is what one B run measured about flowd.
type churnFlowd struct {
	cpu   time.Duration
	bpf   bpfCost
	drops uint64
	out   outputStats
}

// churnWithFlowd runs the helper once with flowd (cfg) running, with BPF
// statistics on, and reads what flowd wrote.
func (s *suite) churnWithFlowd(ctx context.Context, cfg flowdConfig) (churnResult, churnFlowd, error) {
	var run churnFlowd
	d, err := startDaemon(s.flowd, s.tmp, cfg, s.mon, s.own, -1)
	if err != nil {
		return churnResult{}, run, err
	}
	defer d.kill()
	defer os.Remove(d.Output)
	progs, err := flowdPrograms(s.mon)
	if err != nil {
		return churnResult{}, run, err
	}
	defer progs.Close()
	stats, err := enableBPFStats()
	if err != nil {
		return churnResult{}, run, err
	}
	defer stats.Close()
	before, err := progs.stats()
	if err != nil {
		return churnResult{}, run, err
	}
	cpu0, err := d.CPU()
	if err != nil {
		return churnResult{}, run, err
	}
	if stall := s.opts.churn.stall; stall > 0 {
		timer := time.AfterFunc(s.opts.churn.secs/3, func() {
			if d.cmd.Process.Signal(syscall.SIGSTOP) == nil {
				time.Sleep(stall)
				_ = d.cmd.Process.Signal(syscall.SIGCONT)
			}
		})
		defer timer.Stop()
	}
	res, err := s.churnRun(ctx)
	if err != nil {
		return res, run, err
	}
	cpu1, err := d.CPU()
	if err != nil {
		return res, run, err
	}
	after, err := progs.stats()
	if err != nil {
		return res, run, err
	}
	run.cpu = cpu1 - cpu0
	run.bpf = cost(before, after, time.Duration(res.Seconds*float64(time.Second)))
	if err := d.stop(); err != nil {
		return res, run, err
	}
	run.drops = d.Drops()
	run.out, err = readOutputStats(d.Output)
	return res, run, err
}

// outputStats counts the lines of a flowd output and their bytes, by event.
type outputStats struct {
	lines, bytes int
	events       map[string]int
	eventBytes   map[string]int
}

func readOutputStats(path string) (outputStats, error) {
	st := outputStats{events: map[string]int{}, eventBytes: map[string]int{}}
	f, err := os.Open(path)
	if err != nil {
		return st, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	marker := []byte(`"event":"`)
	for sc.Scan() {
		line := sc.Bytes()
		st.lines++
		st.bytes += len(line) + 1
		ev := "?"
		if i := bytes.Index(line, marker); i >= 0 {
			rest := line[i+len(marker):]
			if j := bytes.IndexByte(rest, '"'); j >= 0 {
				ev = string(rest[:j])
			}
		}
		st.events[ev]++
		st.eventBytes[ev] += len(line) + 1
	}
	return st, sc.Err()
}

// runChurnHelper is the helper process: it makes connections to a listener
// of its own for the given time, from concurrent clients, and prints a
// churnResult as JSON. It expects a network namespace of its own, whose
// loopback it brings up.
func runChurnHelper(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(churnHelperArg, flag.ContinueOnError)
	fs.SetOutput(stderr)
	clients := fs.Int("clients", 32, "concurrent clients")
	size := fs.Int("size", 4096, "bytes each way per connection")
	d := fs.Duration("time", 3*time.Second, "how long to make connections")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	res, err := func() (churnResult, error) {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			return churnResult{}, fmt.Errorf("bringing lo up: %w", err)
		}
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
			lim.Cur = lim.Max
			_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		}
		return churnLoad(*clients, *size, *d)
	}()
	if err != nil {
		fmt.Fprintf(stderr, "bench %s: %v\n", churnHelperArg, err)
		return 1
	}
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		return 1
	}
	return 0
}

// churnLoad makes connections for d: each client connects, sends size
// bytes, reads size bytes back and the server's close, and closes; the
// server reads the request, answers and closes first, as an HTTP/1.0
// server does, so that the TIME_WAIT sockets are the server's and the
// clients' ports are free again at once.
func churnLoad(clients, size int, d time.Duration) (churnResult, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return churnResult{}, err
	}
	var served sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			served.Add(1)
			go func() {
				defer served.Done()
				defer c.Close()
				buf := make([]byte, size)
				if _, err := io.ReadFull(c, buf); err == nil {
					_, _ = c.Write(buf)
				}
			}()
		}
	}()
	var (
		conns, failed atomic.Int64
		wg            sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	addr := ln.Addr().String()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			for time.Now().Before(deadline) {
				if exchange(addr, buf) != nil {
					failed.Add(1)
					continue
				}
				conns.Add(1)
			}
		}()
	}
	wg.Wait()
	end := time.Now()
	ln.Close()
	served.Wait()
	return churnResult{Conns: int(conns.Load()), Errors: int(failed.Load()), Seconds: end.Sub(start).Seconds()}, nil
}

// exchange makes one connection of churnLoad.
func exchange(addr string, buf []byte) error {
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(buf); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	// The server's FIN.
	if n, err := c.Read(buf[:1]); n != 0 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("no end of stream after the answer: %d bytes, %v", n, err)
	}
	return nil
}

// churnTargets is section 6's line of the targets table.
func churnTargets(res *Results) [][]string {
	r := res.Churn
	if r == nil {
		return nil
	}
	return [][]string{{"6", "short connections/s with flowd / without, no drops",
		fmt.Sprintf("measured %s, accounted %s; %d drops, %d close records missing", fmtFloat(r.Ratio.Median, r.Ratio.N, "%.3f"), fmtFloat(r.Accounted.Median, r.Accounted.N, "%.3f"), r.Drops, r.Missing),
		fmt.Sprintf("≥ %.2f, none dropped", r.Target), churnVerdict(r)}}
}

// churnVerdict judges section 6 as section 1 judges its rows: it passes
// when the measured and the accounted ratios reach the target and nothing
// was lost; it fails when something was lost, the accounted ratio is below
// the target or the measured one significantly below it; otherwise the
// target is not shown met.
func churnVerdict(r *ChurnRow) string {
	switch {
	case r.Ratio.N == 0:
		return "—"
	case r.Drops > 0 || r.Missing > 0 || r.RatioCIHi < r.Target || (r.Accounted.N > 0 && r.Accounted.Median < r.Target):
		return passCell(ptr(false))
	case r.Ratio.Median < r.Target:
		return "**not shown**"
	}
	return passCell(ptr(true))
}

func churnSection(res *Results) *section {
	r := res.Churn
	if r == nil {
		return nil
	}
	s := &section{
		title: "6. Short connections",
		method: fmt.Sprintf("A helper process in the monitored cgroup, in a network namespace of its own, makes loopback connections "+
			"from %d concurrent clients for %g s, %d bytes each way (the server answers and closes first); "+
			"runs without flowd (A) and with flowd at its defaults (B) alternate, AB then BA. "+
			"Per connection means both of its ends. *U* is the monitored cgroup's CPU-s/s, *f* flowd's, *b* its programs'; "+
			"*accounted* is the ratio the CPU µs per connection imply for a CPU-bound churn ([method](%s#short-connections)).",
			r.Clients, r.Seconds, r.Size, methodDoc),
		command: r.Command,
	}
	ci := "—"
	if r.Ratio.N > 0 {
		ci = fmt.Sprintf("%.3f–%.3f (%.0f%%)", r.RatioCILo, r.RatioCIHi, 100*r.RatioCICov)
	}
	name := r.Name
	if r.Err != "" {
		name += " (error: " + escape(r.Err) + ")"
	}
	s.tables = append(s.tables, table{
		header: []string{"row", "flowd keys", "conn/s without (A)", "conn/s with (B)", "B/A: median (min–max)",
			fmt.Sprintf("%.0f%% CI of the median", 100*ciConfidence), "accounted", "target", "result", "records per connection",
			"bytes per connection", "records/s", "µs per connection: traffic, flowd, BPF", "U without / with", "f: flowd CPU-s/s",
			"b: BPF CPU-s/s, ns/run", "drops", "close records missing"},
		rows: [][]string{{name, code(r.Config), fmtSummary(Summarize(r.BaseConnsPerSec), "%.0f"), fmtSummary(Summarize(r.WithConnsPerSec), "%.0f"),
			fmtSummary(r.Ratio, "%.3f"), ci, fmtSummary(r.Accounted, "%.3f"), fmt.Sprintf("≥ %.2f, none dropped", r.Target), churnVerdict(r),
			fmtSummary(r.RecordsPerConn, "%.2f"), fmtSummary(r.BytesPerConn, "%.0f"), fmtSummary(r.RecordsPerSec, "%.0f"),
			fmt.Sprintf("%s, %s, %s", fmtFloat(r.TrafficUsPerConn.Median, r.TrafficUsPerConn.N, "%.1f"),
				fmtFloat(r.FlowdUsPerConn.Median, r.FlowdUsPerConn.N, "%.1f"), fmtFloat(r.BPFUsPerConn.Median, r.BPFUsPerConn.N, "%.1f")),
			fmt.Sprintf("%s / %s", fmtFloat(r.BaseTrafficCPU.Median, r.BaseTrafficCPU.N, "%.2f"), fmtFloat(r.TrafficCPU.Median, r.TrafficCPU.N, "%.2f")),
			fmtSummary(r.FlowdCPU, "%.3f"),
			fmt.Sprintf("%s, %s", fmtFloat(r.BPFCPU.Median, r.BPFCPU.N, "%.3f"), fmtFloat(r.BPFNsRun.Median, r.BPFNsRun.N, "%.0f")),
			fmt.Sprint(r.Drops), fmt.Sprint(r.Missing)}},
	})
	if r.StallMs > 0 {
		s.notes = append(s.notes, fmt.Sprintf("flowd was stopped for %.0f ms in each B run (`-churn-stall`).", r.StallMs))
	}
	if len(r.EventsPerConn) > 0 {
		t := table{caption: "Lines per connection, by event:", header: []string{"event", "lines per connection", "bytes per line"}}
		for _, ev := range []string{"open", "sample", "state", "close"} {
			if n, ok := r.EventsPerConn[ev]; ok {
				t.rows = append(t.rows, []string{ev, fmt.Sprintf("%.2f", n), fmt.Sprintf("%.0f", r.BytesPerLine[ev])})
			}
		}
		s.tables = append(s.tables, t)
	}
	return s
}
