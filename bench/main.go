// Command bench is flowd's benchmark suite (make bench). It runs the real
// daemon on this host and measures, side by side in one run:
//
//  1. what flowd costs the traffic it watches (iperf3 over loopback with
//     and without flowd, alternating);
//  2. the per-record user-space cost (the Go benchmarks of backends/ebpf);
//  3. how flowd's cost grows with unrelated sockets on the host;
//  4. its memory with many tracked flows;
//  5. how soon a close record reaches the output;
//  6. what short connections cost: a loopback churn with and without
//     flowd.
//
// It needs root (BPF, cgroups), iperf3 and ss. Every cgroup it makes lives
// under the cgroup2 mount and is removed afterwards.
//
//	sudo go run ./bench                           # everything; tables on stdout
//	sudo go run ./bench -md BENCHMARKS.md -json bench/results.json
//	sudo go run ./bench -run 'overhead/ebpf-poll-0s$'   # one row
//	sudo go run ./bench -quick                    # a smoke run, tiny counts
//	go run ./bench -render bench/results.json -md BENCHMARKS.md   # re-render only
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == helperArg {
		os.Exit(runHelper(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == churnHelperArg {
		os.Exit(runChurnHelper(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options are the suite's flags.
type options struct {
	quick      bool
	run        *regexp.Regexp
	md         string
	jsonPath   string
	repo       string
	goCmd      string
	benchtime  string
	benchCount int
	flowdBin   string
	render     string

	pairs           int           // section 1: A/B pairs per configuration with a target
	pairsUntargeted int           // section 1: A/B pairs per configuration without one
	iperfSecs       int           // section 1: seconds per iperf3 run
	cpu             int           // section 1: pin iperf3 and flowd to this CPU; -1 = no pinning
	windows         int           // section 3: netlink CPU windows per N
	scalePairs      int           // section 3: ebpf window pairs (without, with N) per N
	window          time.Duration // section 3: length of one window
	settle          time.Duration // time given to a fresh daemon and its flows
	idle            time.Duration // section 1: how long the idle daemon is measured
	scaleNs         []int         // section 3: idle connections
	dumpReps        int           // section 3: timed netlink polls and ss runs
	memFlows        int           // section 4: tracked flows
	conns           int           // section 5: short connections
	latSpread       time.Duration // section 5: over how long they are made
	churn           churnOptions  // section 6
}

func parseOptions(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	var runExpr, scale string
	fs.BoolVar(&o.quick, "quick", false, "smoke run with tiny counts (< 30 s); its figures mean nothing")
	fs.StringVar(&runExpr, "run", "", "only the rows whose name (section/row, e.g. overhead/ebpf-poll-0s, scale/N=1000, memory/ebpf, latency/close, churn/ebpf, gobench) matches this regexp")
	fs.StringVar(&o.md, "md", "", "write the report to this file (default: standard output)")
	fs.StringVar(&o.jsonPath, "json", "", "write the raw numbers to this file")
	fs.StringVar(&o.repo, "repo", ".", "flowd's repository (flowd is built from it)")
	fs.StringVar(&o.goCmd, "go", "go", "the go command")
	fs.StringVar(&o.render, "render", "", "measure nothing: render the report from this results file (a -json output)")
	fs.StringVar(&o.flowdBin, "flowd", "", "run this flowd binary instead of building one from -repo (to compare a change)")
	fs.StringVar(&o.benchtime, "benchtime", "3s", "-benchtime for section 2's go test (the pipeline needs seconds to be sustained)")
	fs.IntVar(&o.benchCount, "bench-count", 3, "-count for section 2's go test: runs of each benchmark, judged by their median (and the pipeline's rates by most runs)")
	fs.IntVar(&o.pairs, "pairs", 10, "section 1: A/B pairs per configuration that has a target")
	fs.IntVar(&o.pairsUntargeted, "pairs-untargeted", 6, "section 1: A/B pairs per configuration without a target (netlink)")
	fs.IntVar(&o.iperfSecs, "iperf-time", 2, "section 1: seconds per iperf3 run")
	fs.IntVar(&o.cpu, "cpu", -1, "section 1: pin iperf3 (client and server) and flowd to this CPU (the single-core worst case); -1 = no pinning")
	fs.IntVar(&o.windows, "windows", 5, "section 3: netlink CPU windows per N")
	fs.IntVar(&o.scalePairs, "scale-pairs", 5, "section 3: ebpf window pairs (without, with the N idle connections) per N")
	fs.DurationVar(&o.window, "window", 2*time.Second, "section 3: length of one CPU window")
	fs.DurationVar(&o.settle, "settle", time.Second, "time given to a fresh daemon and its flows before measuring")
	fs.DurationVar(&o.idle, "idle", 2*time.Second, "section 1: how long the daemon's idle CPU is measured per configuration")
	fs.StringVar(&scale, "scale", "0,1000,10000,30000", "section 3: numbers of idle connections")
	fs.IntVar(&o.dumpReps, "dumps", 5, "section 3: timed netlink polls and ss -tin runs per N")
	fs.IntVar(&o.memFlows, "mem-flows", 10000, "section 4: tracked flows")
	fs.IntVar(&o.conns, "conns", 1000, "section 5: short connections")
	fs.DurationVar(&o.latSpread, "spread", 5*time.Second, "section 5: time over which the connections are made")
	o.churn.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		// Defaults for a smoke run; flags given explicitly still win.
		quick := map[string]func(){
			"pairs":            func() { o.pairs = 1 },
			"pairs-untargeted": func() { o.pairsUntargeted = 1 },
			"iperf-time":       func() { o.iperfSecs = 1 },
			"windows":          func() { o.windows = 2 },
			"window":           func() { o.window = 250 * time.Millisecond },
			"settle":           func() { o.settle = 200 * time.Millisecond },
			"scale":            func() { scale = "0,200" },
			"dumps":            func() { o.dumpReps = 2 },
			"mem-flows":        func() { o.memFlows = 200 },
			"conns":            func() { o.conns = 50 },
			"spread":           func() { o.latSpread = 250 * time.Millisecond },
			"benchtime":        func() { o.benchtime = "100x" },
			"churn-pairs":      func() { o.churn.pairs = 1 },
			"churn-time":       func() { o.churn.secs = 500 * time.Millisecond },
			"bench-count":      func() { o.benchCount = 1 },
		}
		for name, apply := range quick {
			if !set[name] {
				apply()
			}
		}
	}
	var err error
	if o.scaleNs, err = parseInts(scale); err != nil {
		return nil, fmt.Errorf("-scale: %w", err)
	}
	if runExpr != "" {
		if o.run, err = regexp.Compile(runExpr); err != nil {
			return nil, fmt.Errorf("-run: %w", err)
		}
	}
	switch {
	case o.pairs < 1 || o.pairsUntargeted < 1:
		return nil, errors.New("-pairs and -pairs-untargeted must be positive")
	case o.cpu >= runtime.NumCPU():
		return nil, fmt.Errorf("-cpu: %d is not a CPU of this machine (0..%d)", o.cpu, runtime.NumCPU()-1)
	case o.iperfSecs < 1:
		return nil, fmt.Errorf("-iperf-time: %d is not positive", o.iperfSecs)
	case o.windows < 1 || o.scalePairs < 1 || o.window <= 0:
		return nil, errors.New("-windows, -scale-pairs and -window must be positive")
	case o.dumpReps < 1 || o.memFlows < 1 || o.conns < 1:
		return nil, errors.New("-dumps, -mem-flows and -conns must be positive")
	}
	if err := o.churn.check(); err != nil {
		return nil, err
	}
	return o, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%q is not a list of non-negative integers", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// suite is one run of the benchmarks.
type suite struct {
	opts  *options
	log   io.Writer
	tmp   string
	flowd string      // the daemon binary
	mon   *tempCgroup // the monitored cgroup
	own   *tempCgroup // flowd's own cgroup (for its CPU time)
	mover *mover
	res   Results
	otel  *collector // started by the first row that exports over OTLP
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 2
	}
	var res *Results
	if o.render != "" {
		res, err = loadResults(o.render)
	} else {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		res, err = runSuite(ctx, o, stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	if err := writeOutputs(o, res, stdout); err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	return 0
}

// wanted reports whether a row runs (-run).
func (o *options) wanted(name string) bool { return o.run == nil || o.run.MatchString(name) }

// runSuite runs the selected sections and returns what they measured.
func runSuite(ctx context.Context, o *options, log io.Writer) (*Results, error) {
	s := &suite{opts: o, log: log}
	s.res.Machine = machine(o)
	s.res.Settings = Settings{
		Quick: o.quick, SettleSec: o.settle.Seconds(),
		Pairs: o.pairs, PairsU: o.pairsUntargeted, CPU: o.cpu, IperfSecs: o.iperfSecs, IdleSec: o.idle.Seconds(),
		ScaleNs: o.scaleNs, Active: activeFlows, Windows: o.windows, WindowSec: o.window.Seconds(),
		ScalePairs: o.scalePairs, DumpReps: o.dumpReps,
		MemFlows: o.memFlows, Conns: o.conns, SpreadSec: o.latSpread.Seconds(),
	}
	if o.run != nil {
		s.res.Settings.Run = o.run.String()
	}
	start := time.Now()
	needRoot := false
	for _, c := range overheadCases() {
		needRoot = needRoot || o.wanted("overhead/"+c.name)
	}
	for _, n := range o.scaleNs {
		needRoot = needRoot || o.wanted(fmt.Sprintf("scale/N=%d", n))
	}
	needRoot = needRoot || o.wanted("memory/ebpf") || o.wanted("memory/netlink") || o.wanted("latency/close") || o.wanted(churnRowName)
	if needRoot && os.Geteuid() != 0 {
		return nil, errors.New("sections 1 and 3 to 6 need root (BPF, cgroups): run 'sudo make bench', or -run gobench")
	}

	if o.wanted("gobench") {
		s.section("2. user-space cost per record (go test -bench)", func() { s.res.GoBench = s.goBench(ctx) })
	}
	if needRoot {
		if err := s.setup(ctx); err != nil {
			s.cleanup()
			return nil, err
		}
		defer s.cleanup()
		s.runSections(ctx)
	}
	s.logf("total: %s", time.Since(start).Round(time.Second))
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &s.res, nil
}

func (s *suite) runSections(ctx context.Context) {
	var cases []overheadCase
	for _, c := range overheadCases() {
		if s.opts.wanted("overhead/" + c.name) {
			cases = append(cases, c)
		}
	}
	if len(cases) > 0 {
		s.section("1. cost to the monitored traffic (iperf3)", func() {
			for _, c := range cases {
				if ctx.Err() != nil {
					return
				}
				s.res.Overhead = append(s.res.Overhead, s.overhead(ctx, c))
			}
		})
	}
	var ns []int
	for _, n := range s.opts.scaleNs {
		if s.opts.wanted(fmt.Sprintf("scale/N=%d", n)) {
			ns = append(ns, n)
		}
	}
	if len(ns) > 0 && ctx.Err() == nil {
		s.section("3. scale with unrelated sockets", func() {
			s.res.Scale = s.scale(ctx, ns)
		})
	}
	var backends []string
	for _, b := range []string{"ebpf", "netlink"} {
		if s.opts.wanted("memory/" + b) {
			backends = append(backends, b)
		}
	}
	if len(backends) > 0 && ctx.Err() == nil {
		s.section("4. memory", func() {
			for _, b := range backends {
				if ctx.Err() != nil {
					return
				}
				s.res.Memory = append(s.res.Memory, s.memory(ctx, b))
			}
		})
	}
	if s.opts.wanted("latency/close") && ctx.Err() == nil {
		s.section("5. delivery latency", func() {
			r := s.latency(ctx)
			s.res.Latency = &r
		})
	}
	if s.opts.wanted(churnRowName) && ctx.Err() == nil {
		s.section("6. short connections", func() {
			r := s.churn(ctx)
			s.res.Churn = &r
		})
	}
}

// section runs fn and notes how long it took.
func (s *suite) section(name string, fn func()) {
	s.logf("== %s", name)
	start := time.Now()
	fn()
	d := time.Since(start)
	s.res.Sections = append(s.res.Sections, Section{Name: name, Seconds: d.Seconds()})
	s.logf("== %s: %s", name, d.Round(100*time.Millisecond))
}

func (s *suite) logf(format string, args ...any) {
	fmt.Fprintf(s.log, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// command is the command that reproduces one row.
func (s *suite) command(name string) string {
	return fmt.Sprintf("sudo go run ./bench -run '^%s$'", regexp.QuoteMeta(name))
}

// setup checks the host, builds flowd and makes the cgroups.
func (s *suite) setup(ctx context.Context) error {
	for _, tool := range []string{"iperf3", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is missing (make test-deps installs it)", tool)
		}
	}
	var err error
	if s.tmp, err = os.MkdirTemp("", "flowd-bench-"); err != nil {
		return err
	}
	if s.opts.flowdBin != "" {
		if s.flowd, err = filepath.Abs(s.opts.flowdBin); err != nil {
			return err
		}
	} else {
		s.flowd = filepath.Join(s.tmp, "flowd")
		build := exec.CommandContext(ctx, s.opts.goCmd, "build", "-trimpath", "-o", s.flowd, "./cmd/flowd")
		build.Dir = s.opts.repo
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("building flowd: %w: %s", err, out)
		}
	}
	if s.mover, err = newMover(); err != nil {
		return err
	}
	if s.mon, err = newTempCgroup("flowd-bench-"); err != nil {
		return err
	}
	if s.own, err = newTempCgroup("flowd-bench-daemon-"); err != nil {
		return err
	}
	s.logf("flowd: %s; monitored cgroup %s, flowd's own %s", s.flowd, s.mon.path, s.own.path)
	return nil
}

func (s *suite) cleanup() {
	if s.otel != nil {
		s.otel.stop()
	}
	for _, cg := range []*tempCgroup{s.mon, s.own} {
		if cg != nil {
			if err := cg.remove(); err != nil {
				s.logf("cleanup: %v", err)
			}
		}
	}
	if s.tmp != "" {
		_ = os.RemoveAll(s.tmp)
	}
}

// machine describes this host.
func machine(o *options) Machine {
	m := Machine{Nproc: runtime.NumCPU(), GoVersion: runtime.Version(), Date: time.Now().UTC().Truncate(time.Second)}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		m.MemoryGiB = float64(si.Totalram) * float64(si.Unit) / (1 << 30)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.Loadavg = strings.Join(f[:3], " ")
		}
	}
	git := exec.Command("git", "describe", "--always", "--dirty")
	git.Dir = o.repo
	if out, err := git.Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	return m
}

func loadResults(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return &res, nil
}

func writeOutputs(o *options, res *Results, stdout io.Writer) error {
	md := Render(res)
	if o.md == "" {
		if _, err := io.WriteString(stdout, md); err != nil {
			return err
		}
	} else if err := os.WriteFile(o.md, []byte(md), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", o.md, err)
	}
	if o.jsonPath != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.jsonPath, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", o.jsonPath, err)
		}
	}
	return nil
}
